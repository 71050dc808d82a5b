//! Entry points for the fuzz targets in `fuzz/` and for the tests that
//! replay their corpora and regression inputs (`tests/it/fuzz_inputs.rs`).
//! Built only with the `fuzzing` feature, which the fuzz crate and the
//! integration tests turn on: it is not part of the production library.
//!
//! Each takes arbitrary bytes, drives one parser the way doorman does, and
//! checks the invariants the rest of doorman relies on. None may panic,
//! loop forever or allocate without bound.
//!
//! It calls the sans-IO parsers only; no socket, runtime or file.

use std::path::Path;

use bytes::BytesMut;
use doorman_access::AccessList;
use doorman_dnsbl::Site;
use doorman_gate_api::Action;

use crate::config::{Config, ProxyHosts};
use crate::deep::{DeepTest, DeepTests};
use crate::proxy::{self, Header, Parsed, V1_MAX_LEN, V2_MAX_LEN};
use crate::smtp::address::parse_path;
use crate::smtp::body::{BareNewline, DataFramer, Framed};
use crate::smtp::engine::{Engine, RcptPolicy};
use crate::smtp::line::next_line;

/// The PROXY reader: a complete header never claims more bytes than it was
/// given, nor more than the caps; feeding the same bytes one more byte at a
/// time gives the same answer (what a header split over segments needs).
pub fn proxy_header(data: &[u8]) {
    let whole = proxy::parse(data);
    if let Ok(Parsed::Complete { length, header }) = &whole {
        assert!(*length <= data.len());
        assert!(*length <= V1_MAX_LEN.max(V2_MAX_LEN));
        if let Header::Proxied {
            source,
            destination,
            ..
        } = header
        {
            assert_eq!(source.ip(), source.ip().to_canonical());
            assert_eq!(destination.ip(), destination.ip().to_canonical());
        }
        // The header alone parses to the same thing.
        assert_eq!(proxy::parse(&data[..*length]), whole);
    }
    if let Ok(Parsed::Incomplete) = &whole {
        assert!(data.len() < V2_MAX_LEN);
    }
}

/// The command reader, the deep tests and the built-in engine, line by
/// line, with a small line limit: every reply ends in CRLF, and a closing
/// step ends the dialogue.
pub fn smtp_engine(data: &[u8]) {
    let mut buffer = BytesMut::from(data);
    let mut engine = Engine::new("mx.fuzz.test", RcptPolicy::Pass, 20, None);
    let mut deep = DeepTests::new(
        DeepTest::ALL.to_vec(),
        &["CONNECT".to_string(), "GET".to_string()],
    );
    loop {
        let step = match next_line(&mut buffer, 512) {
            Ok(Some(line)) => {
                let _ = deep.inspect(&line, &buffer, engine.after());
                engine.command(&line)
            }
            Ok(None) => return,
            Err(_) => engine.line_too_long(),
        };
        assert!(step.reply.is_empty() || step.reply.ends_with("\r\n"));
        if step.close {
            return;
        }
    }
}

/// The DATA body framer, under `Normalize` and under `Reject`, with the
/// whole input as the body. It is fed in pieces of 0 to 15 bytes, the sizes
/// taken in turn from the low four bits of the input's first eight bytes (a
/// 0 is an empty read), and then all at once:
///
/// - a call before the end consumes every byte it is given; a call that
///   reaches the end consumes up to it, and every call after it consumes
///   and outputs nothing and says the same;
/// - both ways give the same output, outcome and bytes consumed;
/// - in `\r\n` (the DATA line's) followed by the output, `\r\n.\r\n`
///   stands only at the very end, and only after [`Framed::End`]: the
///   backend sees no other end of DATA (SMTP smuggling);
/// - under `Normalize` the output has no bare CR or LF; under `Reject` it is
///   the input as sent, cut short;
/// - the output is at most twice the input, plus 8 bytes.
pub fn smtp_body(data: &[u8]) {
    let sizes: Vec<usize> = data.iter().take(8).map(|b| usize::from(b & 0x0f)).collect();
    for policy in [BareNewline::Normalize, BareNewline::Reject] {
        let whole = frame_body(policy, data, &[]);
        let (out, framed, consumed) = frame_body(policy, data, &sizes);
        assert_eq!((&out, framed, consumed), (&whole.0, whole.1, whole.2));
        assert!(consumed <= data.len());
        assert!(out.len() <= 2 * data.len() + 8, "{policy:?}: {out:?}");
        let text = [&b"\r\n"[..], &out].concat();
        let ends: Vec<usize> = (5..=text.len())
            .filter(|&end| &text[end - 5..end] == b"\r\n.\r\n")
            .collect();
        let want = match framed {
            Framed::End => vec![text.len()],
            Framed::More | Framed::Rejected => Vec::new(),
        };
        assert_eq!(ends, want, "{policy:?}: {out:?}");
        match policy {
            BareNewline::Normalize => {
                let bare = out.iter().enumerate().position(|(i, &b)| match b {
                    b'\r' => out.get(i + 1) != Some(&b'\n'),
                    b'\n' => i == 0 || out[i - 1] != b'\r',
                    _ => false,
                });
                assert_eq!(bare, None, "{out:?}");
            }
            BareNewline::Reject => assert!(data.starts_with(&out), "{out:?}"),
        }
    }
}

/// Feeds `data` to a framer in pieces of `sizes` bytes in turn (all at once
/// if `sizes` is empty or all 0), checking each call: output, outcome,
/// bytes consumed.
fn frame_body(policy: BareNewline, data: &[u8], sizes: &[usize]) -> (Vec<u8>, Framed, usize) {
    let sizes = if sizes.iter().all(|&size| size == 0) {
        &[data.len()][..]
    } else {
        sizes
    };
    let (mut framer, mut out) = (DataFramer::new(policy), BytesMut::new());
    let mut start = 0;
    for &size in sizes.iter().cycle() {
        let end = data.len().min(start + size);
        let mut input = BytesMut::from(&data[start..end]);
        let framed = framer.feed(&mut input, &mut out);
        let taken = end - start - input.len();
        assert!(taken > 0 || start == end, "no progress");
        assert_eq!(framer.consumed(), (start + taken) as u64);
        if framed != Framed::More {
            let (left, written) = (input.len(), out.len());
            assert_eq!(
                framer.feed(&mut input, &mut out),
                framed,
                "same after the end"
            );
            assert_eq!((input.len(), out.len()), (left, written));
            return (out.to_vec(), framed, start + taken);
        }
        assert!(input.is_empty(), "More must consume all");
        start = end;
        if start == data.len() {
            break;
        }
    }
    (out.to_vec(), Framed::More, start)
}

/// MAIL and RCPT paths: the input, as lossy UTF-8, after `FROM:` and after
/// `TO:`. An address parsed has no ASCII control character (CR and LF
/// included) and no `<` or `>` outside a quoted string; one without `>`
/// parses back to the same path from `FROM:<address> parameters`.
pub fn smtp_address(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for keyword in ["FROM:", "TO:"] {
        let Ok(path) = parse_path(&text, keyword) else {
            continue;
        };
        let (mut quoted, mut escaped) = (false, false);
        for c in path.address.chars() {
            assert!(!c.is_ascii_control(), "{path:?}");
            if escaped {
                escaped = false;
            } else if quoted {
                (escaped, quoted) = (c == '\\', c != '"');
            } else {
                assert!(c != '<' && c != '>', "{path:?}");
                quoted = c == '"';
            }
        }
        if !path.address.contains('>') {
            let again = format!("FROM:<{}> {}", path.address, path.parameters);
            assert_eq!(parse_path(&again, "FROM:"), Ok(path.clone()), "{again:?}");
        }
    }
}

/// `postscreen_dnsbl_sites` entries.
pub fn dnsbl_sites(data: &[u8]) {
    if let Ok(sites) = Site::parse_list(&String::from_utf8_lossy(data)) {
        for site in sites {
            // What was accepted prints back to something that parses again.
            assert!(Site::parse(&site.to_string()).is_ok(), "{site}");
        }
    }
}

/// Postfix cidr tables.
pub fn access_table(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(list) = AccessList::parse(&text, Path::new("access"), Action::Ignore) {
        let _ = list.lookup(
            "192.0.2.1"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        );
    }
}

/// `haproxy_hosts` lists.
pub fn haproxy_hosts(data: &[u8]) {
    let _ = ProxyHosts::parse(&String::from_utf8_lossy(data), Path::new("haproxy_hosts"));
}

/// The config loader (files it names are looked up relative to a folder
/// that does not exist, so nothing is read).
pub fn config(data: &[u8]) {
    let _ = Config::parse(
        &String::from_utf8_lossy(data),
        Path::new("/nonexistent/doorman/doorman.toml"),
    );
}
