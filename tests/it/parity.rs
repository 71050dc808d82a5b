//! Behaviours pinned to postscreen's, byte for byte and moment for moment,
//! where doorman once differed (postscreen_early.c, postscreen_smtpd.c):
//! the greet wait that ends only when its verdict cannot change, an
//! allowlist judged on the full score, the greeting after an ignored
//! pregreet, the RCPT reply of the latest failure, an ignored deep-test
//! failure remembered for the shortest TTL, and the log lines. DNS answers
//! come from Debian's rbldnsd, one zone of it held back by a forwarder.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const TEASER: &str = "220-mx.doorman.test ESMTP\r\n";
const BANNER: &str = "220 mx.doorman.test ESMTP\r\n";
const BACKEND: &str = "220 backend.test ESMTP fake\r\n";
const POSTSCREEN_EHLO: &str = "250-mx.doorman.test\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";

fn say(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).unwrap();
}

/// doorman in front of `backend`, with the given TOML sections, where
/// `DNS` stands for the DNS server's address.
fn doorman(backend: &FakeBackend, dns: Option<SocketAddr>, sections: &str) -> Doorman {
    let dns = dns.map(|dns| dns.to_string()).unwrap_or_default();
    let sections = format!(
        "[cache]\nstore = \"memory\"\n{sections}\n",
        sections = sections.replace("DNS", &dns)
    );
    Doorman::start(
        &config_with(backend.address, "v2", "", "5s", &sections),
        "127.0.0.1\n",
    )
}

/// Reads `n` lines.
fn lines(stream: &mut TcpStream, n: usize) -> String {
    (0..n).map(|_| read_line(stream)).collect()
}

/// 203.0.113.22 is listed in bl.test (+3) and in wl.test (-2). bl.test
/// answers a second late, wl.test at once.
const SLOW_BLOCK_FAST_ALLOW: &str = "[greet]\nbanner = \"mx.doorman.test ESMTP\"\nwait = \"2s\"\n\
[dnsbl]\nsites = [\"bl.test*3\", \"wl.test=127.0.[0..255].[2..3]*-2\"]\nthreshold = 1\nallowlist_threshold = -1\n\
action = \"enforce\"\ntimeout = \"5s\"\nnameservers = [\"DNS\"]\n";

#[test]
fn a_fast_allowlist_does_not_let_a_slow_blocklist_listing_through() {
    let Some(rbldnsd) = Rbldnsd::start() else {
        return;
    };
    let dns = DelayingDns::start(rbldnsd.address, "bl.test", Duration::from_secs(1));
    let backend = FakeBackend::start(true);
    let doorman = doorman(&backend, Some(dns.address), SLOW_BLOCK_FAST_ALLOW);
    for visit in 0..2 {
        let mut client = connect_as(&doorman, "203.0.113.22");
        assert_eq!(read_line(&mut client), TEASER);
        // The full score is 3 - 2 = 1: listed. The engine greets, then
        // refuses the RCPT; nothing is remembered.
        assert_eq!(read_line(&mut client), BANNER, "visit {visit}");
        say(&mut client, "EHLO client.test\r\n");
        assert_eq!(lines(&mut client, 9), POSTSCREEN_EHLO);
        say(&mut client, "MAIL FROM:<a@client.test>\r\n");
        assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
        say(&mut client, "RCPT TO:<b@doorman.test>\r\n");
        assert_eq!(
            read_line(&mut client),
            "550 5.7.1 Service unavailable; client [203.0.113.22] blocked using bl.test\r\n"
        );
        say(&mut client, "QUIT\r\n");
        assert_eq!(read_to_close(&mut client), "221 2.0.0 Bye\r\n");
    }
    doorman.log.wait_for_count(
        "DNSBL rank 1 for [203.0.113.22]:40000",
        2,
        Duration::from_secs(5),
    );
    assert_eq!(
        doorman
            .log
            .matching("DNSBL rank 1 for [203.0.113.22]:40000")
            .len(),
        2
    );
    assert!(doorman.log.matching("PASS").is_empty());
    assert_eq!(backend.count(), 0);
}

#[test]
fn a_partial_allowlisting_score_neither_ends_the_wait_nor_is_remembered() {
    let Some(rbldnsd) = Rbldnsd::start() else {
        return;
    };
    let backend = FakeBackend::start(true);

    // bl.test answers within the wait: the full score is 2 - 2 = 0, so the
    // client waits out the pregreet test like any other and passes.
    let within = DelayingDns::start(rbldnsd.address, "bl.test", Duration::from_millis(500));
    let sites = SLOW_BLOCK_FAST_ALLOW.replace("bl.test*3", "bl.test*2");
    let doorman_a = doorman(&backend, Some(within.address), &sites);
    let started = Instant::now();
    let mut client = connect_as(&doorman_a, "203.0.113.22");
    assert_eq!(read_line(&mut client), TEASER);
    assert_eq!(read_line(&mut client), BACKEND);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "the whole greet wait: {:?}",
        started.elapsed()
    );
    doorman_a
        .log
        .wait_for("PASS NEW [203.0.113.22]:40000", Duration::from_secs(5));
    drop(client);

    // bl.test answers only after the wait: the partial score -2 would
    // allowlist, but it is no verdict. The client goes on (a slow list
    // fails open), and is tested again next time.
    // (It answers after both visits' waits, within the query timeout.)
    let late = DelayingDns::start(rbldnsd.address, "bl.test", Duration::from_secs(8));
    let sites = sites.replace("timeout = \"5s\"", "timeout = \"10s\"");
    let doorman_b = doorman(&backend, Some(late.address), &sites);
    for _ in 0..2 {
        let started = Instant::now();
        let mut client = connect_as(&doorman_b, "203.0.113.22");
        assert_eq!(read_line(&mut client), TEASER, "tested again");
        assert_eq!(read_line(&mut client), BACKEND);
        assert!(started.elapsed() >= Duration::from_millis(1900));
    }
    assert!(
        doorman_b.log.matching("PASS").is_empty(),
        "{:?}",
        doorman_b.log.lines()
    );
}

#[test]
fn an_ignored_pregreet_still_gets_the_engines_220_at_once() {
    let Some(rbldnsd) = Rbldnsd::start() else {
        return;
    };
    let backend = FakeBackend::start(true);
    let sections = "[greet]\nbanner = \"mx.doorman.test ESMTP\"\nwait = \"3s\"\naction = \"ignore\"\n\
[dnsbl]\nsites = [\"bl.test*2\"]\nthreshold = 2\naction = \"enforce\"\ntimeout = \"2s\"\nnameservers = [\"DNS\"]\n";
    let doorman = doorman(&backend, Some(rbldnsd.address), sections);
    // A listed client talks first: the pregreet is ignored, the listing
    // enforced, and the engine completes the greeting before it answers,
    // as soon as the DNS answer is in.
    let started = Instant::now();
    let mut client = connect_as(&doorman, "203.0.113.7");
    say(&mut client, "EHLO bot.test\r\n");
    assert_eq!(read_line(&mut client), TEASER);
    assert_eq!(read_line(&mut client), BANNER);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(lines(&mut client, 9), POSTSCREEN_EHLO);
    say(
        &mut client,
        "MAIL FROM:<a@bot.test>\r\nRCPT TO:<b@doorman.test>\r\n",
    );
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    assert_eq!(
        read_line(&mut client),
        "550 5.5.1 Protocol error\r\n",
        "the latest failure's reply: the pipelining test, opportunistically on"
    );
    doorman
        .log
        .wait_for("PREGREET 15 after 0", Duration::from_secs(5));
    doorman.log.wait_for(
        "DNSBL rank 2 for [203.0.113.7]:40000",
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        "COMMAND PIPELINING from [203.0.113.7]:40000 after MAIL: RCPT TO:<b@doorman.test>\\r\\n",
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from [203.0.113.7]:40000: 550 5.5.1 Protocol error; from=<a@bot.test>, to=<b@doorman.test>, proto=ESMTP, helo=<bot.test>",
        Duration::from_secs(5),
    );

    // A clean client that talks first goes to the backend as soon as the
    // DNS answer is in; its early bytes travel on.
    let started = Instant::now();
    let mut clean = connect_as(&doorman, "203.0.113.50");
    say(&mut clean, "EHLO early.test\r\n");
    assert_eq!(read_line(&mut clean), TEASER);
    assert_eq!(read_line(&mut clean), BACKEND);
    assert_eq!(read_line(&mut clean), "250-backend.test\r\n");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(doorman.log.matching("PASS NEW [203.0.113.50]").is_empty());
}

#[test]
fn an_enforced_pregreet_meets_a_dropping_dnsbl_at_once() {
    let Some(rbldnsd) = Rbldnsd::start() else {
        return;
    };
    let backend = FakeBackend::start(true);
    let sections = "[greet]\nbanner = \"mx.doorman.test ESMTP\"\nwait = \"3s\"\naction = \"enforce\"\n\
[dnsbl]\nsites = [\"bl.test*2\"]\nthreshold = 2\naction = \"drop\"\ntimeout = \"2s\"\nnameservers = [\"DNS\"]\n";
    let doorman = doorman(&backend, Some(rbldnsd.address), sections);
    let mut client = connect_as(&doorman, "203.0.113.7");
    assert_eq!(read_line(&mut client), TEASER);
    // Let the DNS answer arrive, then talk out of turn.
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    say(&mut client, "HELO bot.test\r\n");
    assert_eq!(
        read_to_close(&mut client),
        "521 5.7.1 Service unavailable; client [203.0.113.7] blocked using bl.test\r\n"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "at the pregreet, not at the end of the wait: {:?}",
        started.elapsed()
    );
    doorman
        .log
        .wait_for("DISCONNECT [203.0.113.7]:40000", Duration::from_secs(5));
}

#[test]
fn a_hangup_in_the_greet_wait_is_followed_by_disconnect() {
    let backend = FakeBackend::start(true);
    let doorman = doorman(
        &backend,
        None,
        "[greet]\nbanner = \"mx.doorman.test ESMTP\"\nwait = \"3s\"\n",
    );
    let mut client = connect_as(&doorman, "203.0.113.60");
    assert_eq!(read_line(&mut client), TEASER);
    drop(client);
    doorman
        .log
        .wait_for("DISCONNECT [203.0.113.60]:40000", Duration::from_secs(5));
    let lines = doorman.log.lines();
    let hangup = lines
        .iter()
        .position(|line| {
            line.contains("HANGUP after ")
                && line.ends_with("from [203.0.113.60]:40000 in tests before SMTP handshake")
        })
        .expect("HANGUP line");
    assert!(
        lines[hangup + 1..]
            .iter()
            .any(|line| line.ends_with("DISCONNECT [203.0.113.60]:40000")),
        "DISCONNECT after HANGUP: {lines:?}"
    );
}

fn deep_sections(deep: &str) -> String {
    format!("[greet]\nbanner = \"\"\n[dnsbl]\nmin_ttl = \"2s\"\n[deep_tests]\n{deep}\n")
}

#[test]
fn an_ignored_deep_test_failure_passes_for_the_shortest_ttl() {
    let backend = FakeBackend::start(true);
    // The shortest TTL of any test is [dnsbl] min_ttl, 2 s here.
    let doorman = doorman(
        &backend,
        None,
        &deep_sections("after_pass = \"reconnect\"\nbare_newline = { enable = true }"),
    );
    let mut client = connect_as(&doorman, "203.0.113.70");
    assert_eq!(read_line(&mut client), BANNER);
    say(&mut client, "HELO client.test\n");
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    say(&mut client, "MAIL FROM:<a@client.test>\r\n");
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<b@doorman.test>\r\n");
    assert_eq!(
        read_line(&mut client),
        "450 4.3.2 Service currently unavailable\r\n"
    );
    say(&mut client, "QUIT\r\n");
    assert_eq!(read_to_close(&mut client), "221 2.0.0 Bye\r\n");
    doorman.log.wait_for(
        "BARE NEWLINE from [203.0.113.70]:40000 after HELO client.test",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.70]:40000", Duration::from_secs(5));

    // Within the TTL it goes straight to the backend ...
    let mut again = connect_as(&doorman, "203.0.113.70");
    assert_eq!(read_line(&mut again), BACKEND);
    doorman
        .log
        .wait_for("PASS OLD [203.0.113.70]:40000", Duration::from_secs(5));
    drop(again);
    // ... and once it lapsed, it is tested again.
    thread::sleep(Duration::from_millis(2200));
    let mut later = connect_as(&doorman, "203.0.113.70");
    assert_eq!(read_line(&mut later), BANNER);
}

#[test]
fn bdat_data_is_not_a_pipelined_command() {
    let backend = FakeBackend::start(true);
    let doorman = doorman(
        &backend,
        None,
        &deep_sections("pipelining = { enable = true }"),
    );
    let mut client = connect_as(&doorman, "203.0.113.80");
    assert_eq!(read_line(&mut client), BANNER);
    helo_and_mail(&mut client, "a@client.test");
    say(&mut client, "BDAT 5 LAST\r\nhello");
    assert_eq!(
        read_to_close(&mut client),
        "554 5.5.1 Error: no valid recipients\r\n"
    );
    doorman.log.wait_for(
        "BDAT without valid RCPT from [203.0.113.80]:40000",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("DISCONNECT [203.0.113.80]:40000", Duration::from_secs(5));
    assert!(doorman.log.matching("COMMAND PIPELINING").is_empty());
}
