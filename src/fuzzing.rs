//! Entry points for the fuzz targets in `fuzz/` and for the tests that
//! replay their corpora and regression inputs (`tests/fuzz_inputs.rs`).
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
use crate::proxy::{self, Header, Parsed, V1_MAX_LEN, V2_MAX_LEN};
use crate::smtp::deep::{DeepTest, DeepTests};
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
        vec![
            DeepTest::Pipelining,
            DeepTest::NonSmtpCommand,
            DeepTest::BareNewline,
        ],
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
