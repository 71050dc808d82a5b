//! The core front door over real sockets: PROXY v1/v2 from listed hosts,
//! refusals, health checks, handoff and relay, shutdown.

mod deferred;
mod health_and_backends;

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use doorman::proxy::{self, write, Header, Parsed};

const LISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const UNLISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn start(backend: &FakeBackend, send_proxy: &str) -> Doorman {
    Doorman::start(
        &config(backend.address, send_proxy, "", "30s"),
        "127.0.0.1\n::1\n",
    )
}

/// Parses the v2 header a backend received; returns it and the bytes after.
fn header_at_backend(bytes: &[u8]) -> (Header, Vec<u8>) {
    match proxy::parse(bytes) {
        Ok(Parsed::Complete { header, length }) => {
            assert_eq!(bytes[12], 0x21, "doorman sends a v2 PROXY command");
            (header, bytes[length..].to_vec())
        }
        other => panic!("backend got no header: {other:?} in {bytes:?}"),
    }
}

/// The header of the usual test client, 203.0.113.7.
const CLIENT_HEADER: &[u8] = b"PROXY TCP4 203.0.113.7 198.51.100.2 40982 25\r\n";
/// The fake backend's greeting.
const BACKEND_BANNER: &str = "220 backend.test ESMTP fake\r\n";

/// A client behind the listed proxy that got the backend's greeting.
fn greeted_client(doorman: &Doorman) -> std::net::TcpStream {
    let mut client = connect_from(LISTED, doorman.address);
    client.write_all(CLIENT_HEADER).unwrap();
    assert_eq!(read_line(&mut client), BACKEND_BANNER);
    client
}

fn proxied(source: &str, destination: &str) -> Header {
    Header::Proxied {
        source: addr(source),
        destination: addr(destination),
        tlvs: vec![],
    }
}

#[test]
fn v1_tcp4_client_reaches_backend_with_its_address() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let mut client = greeted_client(&doorman);
    client.write_all(b"EHLO client.test\r\n").unwrap();
    assert_eq!(read_line(&mut client), "250-backend.test\r\n");
    assert_eq!(read_line(&mut client), "250 PIPELINING\r\n");
    client.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_line(&mut client), "221 2.0.0 bye\r\n");
    let got = backend.wait_closed(0);
    let (header, rest) = header_at_backend(&got);
    assert_eq!(header, proxied("203.0.113.7:40982", "198.51.100.2:25"));
    assert_eq!(rest, b"EHLO client.test\r\nQUIT\r\n");
    let line = doorman.log.wait_for("CONNECT from", Duration::from_secs(5));
    assert!(
        line.ends_with("CONNECT from [203.0.113.7]:40982 to [198.51.100.2]:25"),
        "{line}"
    );
}

#[test]
fn v1_tcp6_and_mapped_addresses() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let mut client = connect_from(LISTED, doorman.address);
    client
        .write_all(b"PROXY TCP6 2001:db8::7 2001:db8::25 5000 25\r\n")
        .unwrap();
    assert_eq!(read_line(&mut client), BACKEND_BANNER);
    let (header, _) = header_at_backend(&backend.wait_bytes(0, 52));
    assert_eq!(header, proxied("[2001:db8::7]:5000", "[2001:db8::25]:25"));

    let mut mapped = connect_from(LISTED, doorman.address);
    mapped
        .write_all(b"PROXY TCP6 ::ffff:203.0.113.9 ::ffff:198.51.100.2 6000 25\r\n")
        .unwrap();
    assert_eq!(read_line(&mut mapped), BACKEND_BANNER);
    let (header, _) = header_at_backend(&backend.wait_bytes(1, 28));
    assert_eq!(header, proxied("203.0.113.9:6000", "198.51.100.2:25"));
    doorman.log.wait_for(
        "CONNECT from [203.0.113.9]:6000 to [198.51.100.2]:25",
        Duration::from_secs(5),
    );
}

#[test]
fn v2_ipv4_and_ipv6_with_tlvs_and_pipelined_ehlo() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let cases = [
        ("203.0.113.7:1234", "198.51.100.2:25"),
        ("[2001:db8::7]:1234", "[2001:db8::25]:25"),
    ];
    for (n, (source, destination)) in cases.iter().enumerate() {
        let header = write::encode_v2_with_tlvs(
            addr(source),
            addr(destination),
            &[(0x02, b"mx.example.test"), (0x05, b"unique-id-1")],
            true,
        )
        .unwrap();
        let mut client = connect_from(LISTED, doorman.address);
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"EHLO pipelined.test\r\n");
        client.write_all(&bytes).unwrap();
        assert_eq!(read_line(&mut client), BACKEND_BANNER);
        assert_eq!(read_line(&mut client), "250-backend.test\r\n");
        let got = backend.wait_bytes(n, 10);
        let (received, rest) = header_at_backend(&got);
        assert_eq!(received, proxied(source, destination));
        let got = backend.wait_bytes(n, got.len() - rest.len() + 21);
        assert!(got.ends_with(b"EHLO pipelined.test\r\n"), "{got:?}");
    }
}

#[test]
fn v1_to_backend_and_none() {
    for (mode, expected_prefix) in [
        (
            "v1",
            &b"PROXY TCP4 203.0.113.7 198.51.100.2 40982 25\r\nNOOP\r\nQUIT\r\n"[..],
        ),
        ("none", &b"NOOP\r\nQUIT\r\n"[..]),
    ] {
        let backend = FakeBackend::start(mode == "v1");
        let doorman = start(&backend, mode);
        let mut client = connect_from(LISTED, doorman.address);
        client
            .write_all(b"PROXY TCP4 203.0.113.7 198.51.100.2 40982 25\r\n")
            .unwrap();
        assert_eq!(read_line(&mut client), BACKEND_BANNER);
        client.write_all(b"NOOP\r\nQUIT\r\n").unwrap();
        assert_eq!(read_line(&mut client), "250 2.0.0 ok\r\n");
        assert_eq!(read_line(&mut client), "221 2.0.0 bye\r\n");
        assert_eq!(backend.wait_closed(0), expected_prefix, "{mode}");
    }
}

#[test]
fn header_one_byte_at_a_time() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    for (n, header) in [
        b"PROXY TCP4 203.0.113.7 198.51.100.2 40982 25\r\n".to_vec(),
        write::encode_v2(addr("203.0.113.8:1"), addr("198.51.100.2:25")).unwrap(),
    ]
    .iter()
    .enumerate()
    {
        let mut client = connect_from(LISTED, doorman.address);
        client.set_nodelay(true).unwrap();
        for byte in header {
            client.write_all(&[*byte]).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(read_line(&mut client), BACKEND_BANNER);
        let (received, _) = header_at_backend(&backend.wait_bytes(n, 28));
        match received {
            Header::Proxied { source, .. } => assert_eq!(source.port(), [40982, 1][n]),
            other => panic!("{other:?}"),
        }
    }
}

/// Sends `bytes` from a listed host and returns everything doorman said
/// before it closed.
fn refused(doorman: &Doorman, bytes: &[u8]) -> String {
    let mut client = connect_from(LISTED, doorman.address);
    client.write_all(bytes).unwrap();
    read_to_close(&mut client)
}

#[test]
fn malformed_headers_get_421_and_close() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let good = write::encode_v2(addr("203.0.113.7:1"), addr("198.51.100.2:25")).unwrap();
    let mut udp = good.clone();
    udp[13] = 0x12;
    let mut lying_long = good.clone();
    lying_long[14..16].copy_from_slice(&60000u16.to_be_bytes());
    let mut lying_short = good.clone();
    lying_short[14..16].copy_from_slice(&4u16.to_be_bytes());
    let mut unix = good.clone();
    unix[13] = 0x31;
    // Transport nibbles other than UNSPEC, STREAM and DGRAM, which `ppp`
    // accepts: on a PROXY header and on a LOCAL one.
    let mut transport = good.clone();
    transport[13] = 0x17;
    let local_transport = b"\r\n\r\n\0\r\nQUIT\n\x20\x27\x00\x00".to_vec();
    let long_v1 = format!("PROXY TCP4 {}\r\n", "1".repeat(150));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"HELLO THERE\r\n".to_vec(),
            "bad or missing protocol header",
        ),
        (
            "binary garbage",
            vec![0xff, 0x00, 0x13, 0x37],
            "bad or missing protocol header",
        ),
        ("long v1", long_v1.into_bytes(), "longer than 107"),
        ("unknown", b"PROXY UNKNOWN\r\n".to_vec(), "UNKNOWN"),
        (
            "unknown with addresses",
            b"PROXY UNKNOWN ::1 ::1 1 2\r\n".to_vec(),
            "UNKNOWN",
        ),
        (
            "bare LF",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
            "terminator",
        ),
        (
            "mixed families",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n".to_vec(),
            "malformed v1",
        ),
        (
            "v1 port with a sign",
            b"PROXY TCP4 192.0.2.7 198.51.100.2 +25 25\r\n".to_vec(),
            "port is not decimal digits",
        ),
        (
            "v2 transport 7",
            transport,
            "unsupported network protocol 0x17",
        ),
        (
            "v2 LOCAL transport 7",
            local_transport,
            "unsupported network protocol 0x27",
        ),
        ("v2 udp", udp, "unsupported network protocol 0x12"),
        ("v2 unix", unix, "unsupported network protocol 0x31"),
        ("v2 length too long", lying_long, "longer than"),
        ("v2 length too short", lying_short, "malformed v2"),
        // ppp's error text for this one holds a real CR and LF.
        (
            "v1 trailing garbage",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 extra\r\n".to_vec(),
            "must end in '\\r\\n'",
        ),
    ];
    for (name, bytes, log_needle) in cases {
        let said = refused(&doorman, &bytes);
        assert_eq!(said, "421 4.7.0 Invalid PROXY header\r\n", "{name}");
        let line = doorman.log.wait_for(log_needle, Duration::from_secs(5));
        assert!(line.contains("warning: haproxy read:"), "{name}: {line}");
    }
    assert_eq!(backend.count(), 0, "no refused header reaches a backend");
    assert!(doorman.log.matching("CONNECT from").is_empty());
    // Every line is whole: none was split by a library's error text.
    for line in doorman.log.lines() {
        assert!(
            line.split(": ")
                .next()
                .is_some_and(|head| head.contains(" postfix/postscreen[")),
            "a line without its syslog head: {line:?}"
        );
    }
}

#[test]
fn silent_proxy_times_out_with_421() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(&config(backend.address, "v2", "", "1s"), "127.0.0.1\n");
    let started = Instant::now();
    let mut client = connect_from(LISTED, doorman.address);
    client.write_all(b"PROXY TCP4 1.2.3").unwrap();
    assert_eq!(read_to_close(&mut client), "421 4.4.2 PROXY timed out\r\n");
    assert!(started.elapsed() >= Duration::from_millis(900));
    doorman.log.wait_for(
        "warning: haproxy read: time limit exceeded from [127.0.0.1]:",
        Duration::from_secs(5),
    );
    assert_eq!(backend.count(), 0);
}

#[test]
fn header_then_immediate_close_and_silent_close() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let mut client = connect_from(LISTED, doorman.address);
    client.write_all(CLIENT_HEADER).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut client), BACKEND_BANNER);
    let (header, rest) = header_at_backend(&backend.wait_closed(0));
    assert_eq!(header, proxied("203.0.113.7:40982", "198.51.100.2:25"));
    assert!(rest.is_empty());

    // A check that connects and hangs up without a byte is not a warning.
    let silent = connect_from(LISTED, doorman.address);
    drop(silent);
    let partial = {
        let mut c = connect_from(LISTED, doorman.address);
        c.write_all(b"PROXY TCP4").unwrap();
        c
    };
    drop(partial);
    doorman.log.wait_for(
        "warning: haproxy read: EOF from [127.0.0.1]:",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("haproxy read: EOF before any byte", Duration::from_secs(5));
    assert!(doorman
        .log
        .matching("EOF before any byte")
        .iter()
        .all(|l| l.contains("]: debug: haproxy read: EOF before any byte")));
}

#[test]
fn unlisted_peer_sending_proxy_is_refused_and_header_never_forwarded() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    for (n, header) in [
        b"PROXY TCP4 6.6.6.6 198.51.100.2 1 25\r\nMAIL FROM:<x>\r\n".to_vec(),
        write::encode_v2(addr("6.6.6.6:1"), addr("198.51.100.2:25")).unwrap(),
    ]
    .iter()
    .enumerate()
    {
        let mut client = connect_from(UNLISTED, doorman.address);
        client.write_all(header).unwrap();
        let said = read_to_close(&mut client);
        assert!(
            said.ends_with("421 4.7.0 PROXY not allowed from 127.0.0.9\r\n"),
            "{said:?}"
        );
        let got = backend.wait_closed(n);
        let (seen, rest) = header_at_backend(&got);
        match seen {
            Header::Proxied { source, .. } => assert_eq!(source.ip(), UNLISTED),
            other => panic!("{other:?}"),
        }
        assert!(rest.is_empty(), "forwarded {rest:?}");
    }
    doorman.log.wait_for(
        "warning: PROXY not allowed from [127.0.0.9]:",
        Duration::from_secs(5),
    );
}

#[test]
fn listed_client_cannot_send_a_second_header() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let mut client = connect_from(LISTED, doorman.address);
    client
        .write_all(b"PROXY TCP4 203.0.113.7 198.51.100.2 40982 25\r\nPROXY TCP4 10.0.0.1 198.51.100.2 1 25\r\n")
        .unwrap();
    let said = read_to_close(&mut client);
    assert!(
        said.ends_with("421 4.7.0 PROXY not allowed from 203.0.113.7\r\n"),
        "{said:?}"
    );
    let (header, rest) = header_at_backend(&backend.wait_closed(0));
    assert_eq!(header, proxied("203.0.113.7:40982", "198.51.100.2:25"));
    assert!(rest.is_empty());
}

#[test]
fn unlisted_peer_speaks_smtp_directly() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let mut client = connect_from(UNLISTED, doorman.address);
    assert_eq!(read_line(&mut client), BACKEND_BANNER);
    client.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_line(&mut client), "221 2.0.0 bye\r\n");
    let (header, rest) = header_at_backend(&backend.wait_closed(0));
    match header {
        Header::Proxied {
            source,
            destination,
            ..
        } => {
            assert_eq!(source.ip(), UNLISTED);
            assert_eq!(destination, doorman.address);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rest, b"QUIT\r\n");
}

#[test]
fn required_mode_closes_unlisted_peers_without_a_byte() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(
        &config(backend.address, "v2", "proxy = \"required\"", "30s"),
        "127.0.0.1\n",
    );
    let mut client = connect_from(UNLISTED, doorman.address);
    assert_eq!(read_to_close(&mut client), "");
    doorman.log.wait_for(
        "warning: connection from [127.0.0.9]:",
        Duration::from_secs(5),
    );
    // A listed proxy still works.
    let mut proxied_client = connect_from(LISTED, doorman.address);
    proxied_client.write_all(CLIENT_HEADER).unwrap();
    assert_eq!(read_line(&mut proxied_client), BACKEND_BANNER);
    assert_eq!(backend.count(), 1);
}

fn health_dialogue(doorman: &Doorman, header: &[u8]) {
    let mut check = connect_from(LISTED, doorman.address);
    check.write_all(header).unwrap();
    assert_eq!(read_line(&mut check), "220 mx.doorman.test ESMTP\r\n");
    check.write_all(b"HELO localhost\r\n").unwrap();
    assert_eq!(read_line(&mut check), "250 mx.doorman.test\r\n");
    check
        .write_all(b"EHLO localhost\r\nNOOP\r\nRSET\r\n")
        .unwrap();
    assert_eq!(read_line(&mut check), "250 mx.doorman.test\r\n");
    assert_eq!(read_line(&mut check), "250 2.0.0 Ok\r\n");
    assert_eq!(read_line(&mut check), "250 2.0.0 Ok\r\n");
    check.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_to_close(&mut check), "221 2.0.0 Bye\r\n");
}
