//! Property tests: PROXY headers round-trip through doorman's writer and
//! reader for any addresses and ports, and the engine's replies are always
//! well-formed SMTP replies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use doorman::proxy::{self, write, Header, Parsed};
use doorman::smtp::engine::{Engine, RcptPolicy};
use doorman::smtp::line::Line;
use proptest::prelude::*;

fn address() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

proptest! {
    #[test]
    fn v1_and_v2_round_trip(source in address(), destination in address(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        for mut bytes in [
            write::encode_v1(source, destination),
            write::encode_v2(source, destination).unwrap(),
        ] {
            let length = bytes.len();
            bytes.extend_from_slice(&tail);
            match proxy::parse(&bytes) {
                Ok(Parsed::Complete { header: Header::Proxied { source: s, destination: d, .. }, length: l }) => {
                    prop_assert_eq!(l, length);
                    prop_assert_eq!(s, canonical(source));
                    prop_assert_eq!(d, canonical(destination));
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }

    #[test]
    fn engine_replies_are_well_formed(lines in proptest::collection::vec("[ -~]{0,80}", 1..30)) {
        let mut engine = Engine::new("mx.prop.test", RcptPolicy::Refuse("550 5.7.1 no\r\n".into()), 100, None);
        for text in lines {
            let step = engine.command(&Line { text: text.into_bytes(), bare_newline: false });
            let reply = step.reply;
            prop_assert!(reply.ends_with("\r\n"));
            let lines: Vec<&str> = reply.split_terminator("\r\n").collect();
            let code = &lines[0][..3];
            for (index, line) in lines.iter().enumerate() {
                prop_assert!(line.len() >= 3 && line[..3].bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(&line[..3], code);
                let last = index + 1 == lines.len();
                let separator = line.as_bytes().get(3).copied();
                let continued = separator == Some(b'-');
                prop_assert_eq!(continued, !last, "line {} of {:?}", index, reply);
            }
            if step.close {
                break;
            }
        }
    }
}
