//! The reverse-DNS gate against Debian's dnsmasq serving PTR, A and AAAA
//! records on loopback: forward-confirmed, no PTR, a forward mismatch and
//! a generic name, over IPv4 and IPv6, each with its weight in the score,
//! its log line, its reply and its cached pass; and `doorman explain`.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

const BANNER: &str = "220 mx.doorman.test ESMTP\r\n";
const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

const RECORDS: &str = "host-record=mail.good.test,203.0.113.30\n\
ptr-record=32.113.0.203.in-addr.arpa,forged.test\n\
host-record=forged.test,203.0.113.99\n\
host-record=dsl-203-0-113-33.pool.isp.test,203.0.113.33\n\
host-record=mail6.good.test,2001:db8::30\n";

/// doorman with the rdns gate: no_ptr weighs 3 (refused at threshold 3),
/// the others 1 and 2 (let through).
fn start(backend: &FakeBackend, dns: &Dnsmasq) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"3s\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nthreshold = 3\naction = \"enforce\"\ntimeout = \"2s\"\nnameservers = [\"{}\"]\n\
[rdns]\nno_ptr = 3\nnot_confirmed = 1\ngeneric = 2\n",
        dns.address
    );
    // `gates` is a top-level key, so it goes before the first table.
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"rdns\", \"deep\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    Doorman::start(&config, "127.0.0.1\n")
}

fn say(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).unwrap();
}

/// The RCPT reply the engine gives a client the score refused.
fn refused_rcpt(client: &mut TcpStream) -> String {
    assert_eq!(read_line(client), BANNER);
    helo_and_mail(client, "a@client.test");
    say(client, "RCPT TO:<b@doorman.test>\r\n");
    read_line(client)
}

#[test]
fn reverse_dns_findings_weigh_in_the_score_over_ipv4_and_ipv6() {
    let Some(dns) = Dnsmasq::start(RECORDS) else {
        return;
    };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, &dns);

    // No PTR name: weight 3 reaches the threshold; the reply names it.
    for client in ["203.0.113.31", "2001:db8::31"] {
        let mut stream = connect_as(&doorman, client);
        assert_eq!(
            refused_rcpt(&mut stream),
            format!(
                "550 5.7.1 Service unavailable; client [{client}] blocked using rdns:no_ptr\r\n"
            )
        );
        doorman.log.wait_for(
            &format!("RDNS no PTR name from [{client}]:40000 (weight 3)"),
            Duration::from_secs(5),
        );
        doorman.log.wait_for(
            &format!("DNSBL rank 3 for [{client}]:40000"),
            Duration::from_secs(5),
        );
    }

    // Confirmed, not confirmed, generic: below the threshold, handed off
    // once every answer is in (no teaser: it does not wait the full 3 s),
    // and remembered.
    for (client, line) in [
        ("203.0.113.30", None),
        ("2001:db8::30", None),
        (
            "203.0.113.32",
            Some("RDNS not confirmed: forged.test from [203.0.113.32]:40000 (weight 1)"),
        ),
        (
            "203.0.113.33",
            Some("RDNS generic name: dsl-203-0-113-33.pool.isp.test from [203.0.113.33]:40000 (weight 2)"),
        ),
    ] {
        let started = std::time::Instant::now();
        let mut stream = connect_as(&doorman, client);
        assert_eq!(read_line(&mut stream), BACKEND, "{client}");
        assert!(started.elapsed() < Duration::from_secs(2), "{client}");
        if let Some(line) = line {
            doorman.log.wait_for(line, Duration::from_secs(5));
        }
        doorman
            .log
            .wait_for(&format!("PASS NEW [{client}]:40000"), Duration::from_secs(5));
        drop(stream);
        let mut again = connect_as(&doorman, client);
        assert_eq!(read_line(&mut again), BACKEND);
        doorman
            .log
            .wait_for(&format!("PASS OLD [{client}]:40000"), Duration::from_secs(5));
    }
    assert!(doorman
        .log
        .matching("RDNS no PTR name from [203.0.113.30]")
        .is_empty());
}

#[test]
fn explain_shows_ptr_names_forward_result_and_weights() {
    let Some(dns) = Dnsmasq::start(RECORDS) else {
        return;
    };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, &dns);
    let explain = |ip: &str| explain(&doorman, ip);
    let generic = explain("203.0.113.33");
    assert!(
        generic.contains("rdns PTR names: dsl-203-0-113-33.pool.isp.test"),
        "{generic}"
    );
    assert!(
        generic
            .contains("rdns forward: dsl-203-0-113-33.pool.isp.test resolves back to 203.0.113.33"),
        "{generic}"
    );
    assert!(
        generic.contains("rdns check rdns:generic: fires, +2"),
        "{generic}"
    );
    assert!(generic.contains("score: 2 (threshold 3"), "{generic}");
    let missing = explain("203.0.113.31");
    assert!(missing.contains("rdns PTR names: none"), "{missing}");
    assert!(
        missing.contains("verdict: DNSBL rank 3: 5.7.1 Service unavailable; client [203.0.113.31] blocked using rdns:no_ptr, action enforce"),
        "{missing}"
    );
    let good = explain("2001:db8::30");
    assert!(good.contains("rdns checks: none fires"), "{good}");
}

#[test]
fn hundreds_of_ptr_names_and_a_silent_server_are_bounded() {
    let many: String = (0..300)
        .map(|i| format!("ptr-record=34.113.0.203.in-addr.arpa,n{i}.many.test\n"))
        .collect();
    let Some(dns) = Dnsmasq::start(&format!("{RECORDS}{many}")) else {
        return;
    };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, &dns);
    // 300 names, none resolving back: not confirmed (weight 1), judged
    // after at most a few forward lookups, well within the wait.
    let started = std::time::Instant::now();
    let mut stream = connect_as(&doorman, "203.0.113.34");
    assert_eq!(read_line(&mut stream), BACKEND);
    assert!(started.elapsed() < Duration::from_secs(2));
    doorman.log.wait_for(
        "RDNS not confirmed: n299.many.test from [203.0.113.34]:40000 (weight 1)",
        Duration::from_secs(5),
    );

    // A server that never answers delays nobody past the wait; the client
    // goes on undecided, and nothing is remembered.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"1s\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nthreshold = 3\ntimeout = \"5s\"\nnameservers = [\"{}\"]\n",
        silent.local_addr().unwrap()
    );
    let config = format!(
        "gates = [\"rdns\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    let stalled = Doorman::start(&config, "127.0.0.1\n");
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let mut stream = connect_as(&stalled, "203.0.113.31");
        assert_eq!(read_line(&mut stream), BACKEND);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
            "{waited:?}"
        );
    }
    assert!(stalled.log.matching("PASS").is_empty());
}
