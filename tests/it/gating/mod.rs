//! Postscreen-style gating over real sockets, with Debian's rbldnsd serving
//! the zones in `fixtures/dnsbl/`: the access list, the teaser and pregreet
//! test, weighted DNSBL/DNSWL scores, the three actions, the built-in
//! engine's dialogue byte for byte, its limits, and the pass cache.

mod engine_and_limits;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;

const PROXY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const TEASER: &str = "220-mx.doorman.test ESMTP\r\n";
const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

/// Knobs of one gating setup.
struct Setup<'a> {
    greet_action: &'a str,
    dnsbl_action: &'a str,
    access_action: &'a str,
    banner: &'a str,
    extra: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            greet_action: "ignore",
            dnsbl_action: "ignore",
            access_action: "ignore",
            banner: "mx.doorman.test ESMTP",
            extra: "",
        }
    }
}

const ACCESS: &str =
    "# test access list\n198.51.100.1 permit\n198.51.100.2 reject\n198.51.100.0/24 dunno\n";

fn start(backend: &FakeBackend, dns: SocketAddr, setup: Setup) -> Doorman {
    let sections = format!(
        "[access]\nfile = \"access\"\naction = \"{access}\"\n\
[greet]\nbanner = \"{banner}\"\nwait = \"1s\"\naction = \"{greet}\"\n\
[dnsbl]\nsites = [\"bl.test=127.0.0.[2..11]*2\", \"bl2.test*1\", \"wl.test=127.0.[0..255].[2..3]*-3\", \"wl.test=127.0.[0..255].1*-1\", \"v6.test*2\"]\n\
threshold = 2\nallowlist_threshold = -2\naction = \"{dnsbl}\"\ntimeout = \"2s\"\nnameservers = [\"{dns}\"]\n{extra}",
        access = setup.access_action,
        banner = setup.banner,
        greet = setup.greet_action,
        dnsbl = setup.dnsbl_action,
        extra = setup.extra,
    );
    let config = config_with(backend.address, "v2", "", "5s", &sections);
    Doorman::start_with_files(
        &config,
        &[("haproxy_hosts", "127.0.0.1\n"), ("access", ACCESS)],
    )
}

fn say(stream: &mut TcpStream, line: &str) {
    stream.write_all(line.as_bytes()).unwrap();
}

#[test]
fn clean_client_passes_new_then_old_without_teaser() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, dns.address, Setup::default());
    let started = Instant::now();
    let mut first = connect_as(&doorman, "203.0.113.200");
    assert_eq!(read_line(&mut first), TEASER);
    assert_eq!(read_line(&mut first), BACKEND);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "the whole greet wait"
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.200]:40000", Duration::from_secs(5));

    let started = Instant::now();
    let mut second = connect_as(&doorman, "203.0.113.200");
    assert_eq!(
        read_line(&mut second),
        BACKEND,
        "no teaser for a cached client"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    doorman
        .log
        .wait_for("PASS OLD [203.0.113.200]:40000", Duration::from_secs(5));
}

#[test]
fn pregreet_ignore_logs_hands_off_and_is_never_cached() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, dns.address, Setup::default());
    for _ in 0..2 {
        let mut client = connect_from(PROXY, doorman.address);
        say(
            &mut client,
            "PROXY TCP4 203.0.113.201 198.51.100.25 40001 25\r\nEHLO ylmf-pc\r\n",
        );
        assert_eq!(read_line(&mut client), TEASER);
        assert_eq!(read_line(&mut client), BACKEND);
        // The early EHLO travels on to the backend, which answers it.
        assert_eq!(read_line(&mut client), "250-backend.test\r\n");
    }
    let line = doorman
        .log
        .wait_for("PREGREET 14 after 0", Duration::from_secs(5));
    assert!(
        line.ends_with("from [203.0.113.201]:40001: EHLO ylmf-pc\\r\\n"),
        "{line}"
    );
    assert_eq!(doorman.log.matching("PREGREET").len(), 2, "tested again");
    assert!(doorman.log.matching("PASS").is_empty());
}

#[test]
fn pregreet_drop() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            greet_action: "drop",
            ..Setup::default()
        },
    );
    let mut client = connect_as(&doorman, "203.0.113.202");
    assert_eq!(read_line(&mut client), TEASER);
    say(&mut client, "HELO zombie\r\n");
    assert_eq!(read_to_close(&mut client), "521 5.5.1 Protocol error\r\n");
    doorman
        .log
        .wait_for("PREGREET 13 after", Duration::from_secs(5));
    doorman
        .log
        .wait_for("DISCONNECT [203.0.113.202]:40000", Duration::from_secs(5));
    assert_eq!(backend.count(), 0);
}

#[test]
fn pregreet_enforce_engine_without_220() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            greet_action: "enforce",
            ..Setup::default()
        },
    );
    let mut client = connect_from(PROXY, doorman.address);
    say(
        &mut client,
        "PROXY TCP4 203.0.113.203 198.51.100.25 40003 25\r\nHELO zombie\r\n",
    );
    assert_eq!(read_line(&mut client), TEASER);
    // No 220 for a pregreeter: the engine answers the early HELO.
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    say(&mut client, "MAIL FROM:<spam@zombie.test>\r\n");
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<victim@doorman.test>\r\n");
    assert_eq!(read_line(&mut client), "550 5.5.1 Protocol error\r\n");
    say(&mut client, "QUIT\r\n");
    assert_eq!(read_to_close(&mut client), "221 2.0.0 Bye\r\n");
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from [203.0.113.203]:40003: 550 5.5.1 Protocol error; from=<spam@zombie.test>, to=<victim@doorman.test>, proto=SMTP, helo=<zombie>",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("DISCONNECT [203.0.113.203]:40003", Duration::from_secs(5));
    assert_eq!(backend.count(), 0);
}

const LISTED_REPLY: &str = "5.7.1 Service unavailable; client [203.0.113.7] blocked using bl.test";

#[test]
fn dnsbl_enforce_dialogue_byte_for_byte() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            dnsbl_action: "enforce",
            ..Setup::default()
        },
    );
    let mut client = connect_as(&doorman, "203.0.113.7");
    assert_eq!(read_line(&mut client), TEASER);
    assert_eq!(read_line(&mut client), "220 mx.doorman.test ESMTP\r\n");
    say(&mut client, "EHLO badguy.example.com\r\n");
    let mut ehlo = String::new();
    for _ in 0..9 {
        ehlo.push_str(&read_line(&mut client));
    }
    assert_eq!(
        ehlo,
        "250-mx.doorman.test\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
    );
    say(
        &mut client,
        "MAIL FROM:<spammer@example.com> BODY=8BITMIME\r\n",
    );
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<goodguy@example.com>\r\n");
    assert_eq!(read_line(&mut client), format!("550 {LISTED_REPLY}\r\n"));
    say(&mut client, "DATA\r\n");
    assert_eq!(
        read_to_close(&mut client),
        "554 5.5.1 Error: no valid recipients\r\n"
    );
    doorman.log.wait_for(
        "DNSBL rank 3 for [203.0.113.7]:40000",
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        &format!("NOQUEUE: reject: RCPT from [203.0.113.7]:40000: 550 {LISTED_REPLY}; from=<spammer@example.com>, to=<goodguy@example.com>, proto=ESMTP, helo=<badguy.example.com>"),
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        "DATA without valid RCPT from [203.0.113.7]:40000",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("DISCONNECT [203.0.113.7]:40000", Duration::from_secs(5));
    doorman.log.wait_for(
        "addr 203.0.113.7 listed by domain bl.test as 127.0.0.2",
        Duration::from_secs(5),
    );
    assert_eq!(backend.count(), 0);
}

#[test]
fn dnsbl_drop_and_ignore() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let dropper = start(
        &backend,
        dns.address,
        Setup {
            dnsbl_action: "drop",
            ..Setup::default()
        },
    );
    let mut client = connect_as(&dropper, "203.0.113.7");
    assert_eq!(
        read_to_close(&mut client),
        format!("{TEASER}521 {LISTED_REPLY}\r\n")
    );
    assert_eq!(backend.count(), 0);

    let ignorer = start(&backend, dns.address, Setup::default());
    for _ in 0..2 {
        let mut client = connect_as(&ignorer, "203.0.113.7");
        assert_eq!(read_line(&mut client), TEASER);
        assert_eq!(read_line(&mut client), BACKEND);
    }
    assert_eq!(
        ignorer.log.matching("DNSBL rank 3 for [203.0.113.7]").len(),
        2
    );
    assert!(
        ignorer.log.matching("PASS").is_empty(),
        "a failure is not cached"
    );
}

#[test]
fn weights_filters_error_codes_and_ipv6() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            dnsbl_action: "drop",
            banner: "",
            ..Setup::default()
        },
    );
    // 203.0.113.8: bl.test 127.0.0.4 (inside [2..11]) = 2 >= threshold.
    // 203.0.113.9: bl.test 127.0.0.10 (2) + bl2.test (1) = 3.
    // 203.0.113.66: bl.test answers 127.255.255.254, an error code: 0.
    // 203.0.113.21: wl.test 127.0.10.1 = -1, above the allowlist threshold.
    // 2001:db8::7: v6.test = 2.
    for (client, expected) in [
        ("203.0.113.8", Some(2)),
        ("203.0.113.9", Some(3)),
        ("203.0.113.66", None),
        ("203.0.113.21", None),
        ("2001:db8::7", Some(2)),
        ("2001:db8::8", None),
    ] {
        let mut stream = connect_as(&doorman, client);
        let first = read_line(&mut stream);
        match expected {
            Some(rank) => {
                assert!(
                    first.starts_with("521 5.7.1 Service unavailable; client ["),
                    "{client}: {first}"
                );
                doorman.log.wait_for(
                    &format!("DNSBL rank {rank} for [{client}]:40000"),
                    Duration::from_secs(5),
                );
            }
            None => assert_eq!(first, BACKEND, "{client}"),
        }
    }
    let v6 = doorman
        .log
        .wait_for("DNSBL rank 2 for [2001:db8::7]", Duration::from_secs(5));
    assert!(v6.contains("[2001:db8::7]:40000"));
}

#[test]
fn dnswl_allowlist_skips_the_rest_of_the_wait() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, dns.address, Setup::default());
    let started = Instant::now();
    let mut client = connect_as(&doorman, "203.0.113.20");
    assert_eq!(read_line(&mut client), TEASER);
    assert_eq!(read_line(&mut client), BACKEND);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "allowlisted before the 1s wait ended: {:?}",
        started.elapsed()
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.20]:40000", Duration::from_secs(5));
    let mut again = connect_as(&doorman, "203.0.113.20");
    assert_eq!(read_line(&mut again), BACKEND);
}

#[test]
fn without_teaser_the_wait_ends_when_dns_answers() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            banner: "",
            ..Setup::default()
        },
    );
    let started = Instant::now();
    let mut client = connect_as(&doorman, "203.0.113.210");
    assert_eq!(read_line(&mut client), BACKEND);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.210]:40000", Duration::from_secs(5));
}

#[test]
fn dead_dns_server_fails_open_after_the_wait() {
    let backend = FakeBackend::start(true);
    // Nothing listens on this UDP port.
    let dead: SocketAddr = format!(
        "127.0.0.1:{}",
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    )
    .parse()
    .unwrap();
    let doorman = start(
        &backend,
        dead,
        Setup {
            dnsbl_action: "drop",
            ..Setup::default()
        },
    );
    let started = Instant::now();
    let mut client = connect_as(&doorman, "203.0.113.7");
    assert_eq!(read_line(&mut client), TEASER);
    assert_eq!(read_line(&mut client), BACKEND);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    doorman.log.wait_for(
        "warning: dnsblog_query: lookup error for DNS query 7.113.0.203.",
        Duration::from_secs(5),
    );
    // No list had answered when the wait ended: the client went on, but a
    // pass judged on a partial score is not remembered.
    assert!(doorman.log.matching("PASS").is_empty());
}
