//! Selective greylisting over real sockets, with Debian's rbldnsd scoring
//! the clients: a doubtful client is greylisted, retries too early, passes
//! after the delay and is replayed so the backend gets its message; a clean
//! client never meets the engine; two instances on one redis-server share
//! the records; a network is allowlisted after its successful retries; and
//! an IPv6 client retries from another address of its /64; and a client
//! that pipelines thousands of recipients leaves at most the capped number
//! of records for its network in Redis.

mod with_other_tests;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use crate::support::*;

const BANNER: &str = "220 mx.doorman.test ESMTP\r\n";
const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

/// doorman scoring with rbldnsd (bl.test 127.0.0.2 and bl2.test weigh 1,
/// v6.test 1; 5 refuses), greylisting from 1 with a 2 s delay.
fn start(backend: &FakeBackend, dns: SocketAddr, cache: &str) -> Doorman {
    start_with(backend, dns, cache, "")
}

/// As [`start`], with more `[greylist]` lines.
fn start_with(backend: &FakeBackend, dns: SocketAddr, cache: &str, greylist: &str) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"2s\"\n[cache]\n{cache}\n\
[dnsbl]\nsites = [\"bl.test=127.0.0.2\", \"bl2.test\", \"v6.test\"]\nthreshold = 5\naction = \"enforce\"\ntimeout = \"2s\"\nnameservers = [\"{dns}\"]\n\
[greylist]\nthreshold = 1\ndelay = \"2s\"\nretry_window = \"1h\"\nauto_allowlist = 2\n{greylist}"
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"deep\", \"greylist\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    Doorman::start(&config, "127.0.0.1\n")
}

fn say(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).unwrap();
}

/// A doubtful client's dialogue up to the reply to its RCPT.
fn attempt(doorman: &Doorman, client: &str, sender: &str, recipient: &str) -> (TcpStream, String) {
    let mut stream = connect_as(doorman, client);
    assert_eq!(read_line(&mut stream), BANNER, "{client} meets the engine");
    helo_and_mail(&mut stream, sender);
    say(&mut stream, &format!("RCPT TO:<{recipient}>\r\n"));
    let reply = read_line(&mut stream);
    (stream, reply)
}

fn greylisted(recipient: &str) -> String {
    let domain = recipient.split('@').nth(1).unwrap_or_default();
    format!(
        "450 4.2.0 <{recipient}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/{domain}.html\r\n"
    )
}

#[test]
fn a_doubtful_client_is_greylisted_then_replayed_and_a_clean_one_goes_straight_through() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, dns.address, "store = \"memory\"");

    let (_first, reply) = attempt(
        &doorman,
        "203.0.113.22",
        "alice@sender.test",
        "bob@doorman.test",
    );
    assert_eq!(reply, greylisted("bob@doorman.test"));
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from unknown[203.0.113.22]: 450 4.2.0 <bob@doorman.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/doorman.test.html; from=<alice@sender.test> to=<bob@doorman.test> proto=SMTP helo=<client.test>",
        Duration::from_secs(5),
    );
    let (_early, reply) = attempt(
        &doorman,
        "203.0.113.22",
        "alice@sender.test",
        "bob@doorman.test",
    );
    assert_eq!(reply, greylisted("bob@doorman.test"), "too early");

    thread::sleep(Duration::from_millis(2100));
    let (mut retry, reply) = attempt(
        &doorman,
        "203.0.113.22",
        "alice@sender.test",
        "bob@doorman.test",
    );
    assert_eq!(
        reply, "250 2.0.0 ok\r\n",
        "the backend's own answer, replayed"
    );
    // Later recipients still meet the gates before the backend.
    say(&mut retry, "RCPT TO:<carol@doorman.test>\r\n");
    assert_eq!(read_line(&mut retry), greylisted("carol@doorman.test"));
    say(&mut retry, "DATA\r\n");
    assert_eq!(read_line(&mut retry), "354 go ahead\r\n");
    say(&mut retry, "Subject: hi\r\n\r\nhello\r\n.\r\n");
    assert_eq!(read_line(&mut retry).get(..3), Some("250"));
    let received = String::from_utf8_lossy(&backend.wait_bytes(0, 1)).into_owned();
    // The wait is counted in whole seconds: 2 or 3 here.
    let pass = doorman.log.wait_for(
        "greylist: pass for [203.0.113.22]:40000 after ",
        Duration::from_secs(5),
    );
    assert!(
        pass.ends_with("s: from=<alice@sender.test> to=<bob@doorman.test>"),
        "{pass}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut received = received;
    while !received.contains("hello") {
        assert!(std::time::Instant::now() < deadline, "{received}");
        thread::sleep(Duration::from_millis(50));
        received = String::from_utf8_lossy(&backend.wait_bytes(0, 1)).into_owned();
    }
    assert!(
        received.contains("RCPT TO:<bob@doorman.test>"),
        "{received}"
    );
    assert!(
        !received.contains("carol@"),
        "a greylisted recipient never reaches the backend"
    );

    // A clean client never meets the engine.
    let mut clean = connect_as(&doorman, "203.0.113.200");
    assert_eq!(read_line(&mut clean), BACKEND);

    // `doorman explain` says who would be greylisted, and why.
    let explain = |ip: &str| explain(&doorman, ip);
    let doubtful = explain("203.0.113.22");
    assert!(
        doubtful.contains("greylist: doubtful (score 1 >= 1): greylisted at RCPT"),
        "{doubtful}"
    );
    assert!(
        doubtful.contains("; meets the built-in engine (its own 220; at its RCPTs: greylist) up to its first RCPT, then is replayed into a backend\n"),
        "the verdict says what the runtime does: {doubtful}"
    );
    let clean = explain("203.0.113.200");
    assert!(
        clean.contains("greylist: not doubtful (score 0 < 1): never greylisted"),
        "{clean}"
    );
    assert!(
        clean.contains("verdict: passes the score, unless it pregreets; handed off at once (the backend's own greeting)\n"),
        "{clean}"
    );
}

/// `doorman explain` writes a report and nothing else: no log lines on
/// stderr, no DNSBL talk without a DNSBL, and the engine when deep tests
/// are on.
#[test]
fn explain_says_what_the_runtime_does_and_logs_nothing() {
    let backend = FakeBackend::start(true);
    let sections = "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[deep_tests]\npipelining = { enable = true }\n";
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"deep\"]\n{}",
        config_with(backend.address, "v2", "", "5s", sections)
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let out = std::process::Command::new(doorman_bin())
        .args(["explain", "--config"])
        .arg(doorman.config_path())
        .arg("192.0.2.9")
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.ends_with("verdict: no gate scores it, unless it pregreets; meets the built-in engine (its own 220; deep tests pipelining) up to its first RCPT, then is replayed into a backend\n"),
        "{report}"
    );
    assert!(!report.contains("DNSBL"), "{report}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no log lines");
}

#[test]
fn a_network_is_allowlisted_after_its_successful_retries_and_ipv6_keys_by_64() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, dns.address, "store = \"memory\"");
    // Two triplets from two addresses of 203.0.113.0/24 pass after the
    // delay: the network is allowlisted, and a third address's first
    // attempt goes through at once.
    for (client, sender) in [("203.0.113.7", "a@one.test"), ("203.0.113.9", "b@two.test")] {
        let (_s, reply) = attempt(&doorman, client, sender, "rcpt@doorman.test");
        assert_eq!(reply, greylisted("rcpt@doorman.test"));
    }
    thread::sleep(Duration::from_millis(2100));
    for (client, sender) in [("203.0.113.7", "a@one.test"), ("203.0.113.9", "b@two.test")] {
        let (_s, reply) = attempt(&doorman, client, sender, "rcpt@doorman.test");
        assert_eq!(reply, "250 2.0.0 ok\r\n", "{client}");
    }
    doorman.log.wait_for(
        "greylist: network 203.0.113.0/24 allowlisted after 2 successful retries",
        Duration::from_secs(5),
    );
    let (_s, reply) = attempt(
        &doorman,
        "203.0.113.22",
        "new@three.test",
        "rcpt@doorman.test",
    );
    assert_eq!(reply, "250 2.0.0 ok\r\n");

    // IPv6: the retry comes from another address of the same /64.
    let (_s, reply) = attempt(
        &doorman,
        "2001:db8:bad::1",
        "v6@sender.test",
        "rcpt@doorman.test",
    );
    assert_eq!(reply, greylisted("rcpt@doorman.test"));
    thread::sleep(Duration::from_millis(2100));
    let (_s, reply) = attempt(
        &doorman,
        "2001:db8:bad::2",
        "v6@sender.test",
        "rcpt@doorman.test",
    );
    assert_eq!(reply, "250 2.0.0 ok\r\n");
}

#[test]
fn two_instances_on_one_redis_share_the_records() {
    let Some(dns) = Rbldnsd::start() else { return };
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let backend = FakeBackend::start(true);
    let cache = format!(
        "store = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"g:\"",
        redis.url()
    );
    let a = start(&backend, dns.address, &cache);
    let b = start(&backend, dns.address, &cache);
    let (_s, reply) = attempt(&a, "203.0.113.22", "fleet@sender.test", "rcpt@doorman.test");
    assert_eq!(reply, greylisted("rcpt@doorman.test"));
    thread::sleep(Duration::from_millis(2100));
    let (_s, reply) = attempt(&b, "203.0.113.22", "fleet@sender.test", "rcpt@doorman.test");
    assert_eq!(
        reply, "250 2.0.0 ok\r\n",
        "the retry on the other instance passes"
    );

    // Redis down: the gate lets doubtful clients through and says so once.
    redis.stop();
    let (_s, reply) = attempt(&a, "203.0.113.9", "down@sender.test", "rcpt@doorman.test");
    assert_eq!(reply, "250 2.0.0 ok\r\n");
    a.log.wait_for(
        "warning: greylist: the record store does not answer; not greylisting until it does",
        Duration::from_secs(5),
    );
}

/// Pipelines 2,000 new recipients and reads the replies: `greylisted` of
/// them are greylisted, then `end` ends the session.
fn pipeline_recipients(stream: &mut TcpStream, round: usize, greylisted_: usize, end: &str) {
    let recipients: String = (0..2000)
        .map(|n| format!("RCPT TO:<r{round}x{n}@doorman.test>\r\n"))
        .collect();
    say(stream, &recipients);
    for n in 0..greylisted_ {
        let reply = read_line(stream);
        assert_eq!(reply, greylisted(&format!("r{round}x{n}@doorman.test")));
    }
    assert_eq!(read_line(stream), end);
    // Closed: with the unread recipients still in doorman's socket, the
    // close may come as a reset.
    let mut byte = [0u8; 1];
    assert!(matches!(stream.read(&mut byte), Ok(0) | Err(_)), "closed");
}

#[test]
fn pipelined_recipients_leave_at_most_the_capped_records_in_redis() {
    let Some(dns) = Rbldnsd::start() else { return };
    let Some(redis) = Redis::start() else { return };
    let backend = FakeBackend::start(true);
    // A slow Redis reply on a loaded machine must not open the gate.
    let cache = format!(
        "store = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"g:\"\nredis_timeout = \"2s\"",
        redis.url()
    );
    let doorman = start_with(
        &backend,
        dns.address,
        &cache,
        "max_records_per_network = 10\n[admin]\naddress = \"127.0.0.1:0\"\n",
    );
    let (_s, reply) = attempt(&doorman, "203.0.113.22", "a@sender.test", "ok@doorman.test");
    assert_eq!(reply, greylisted("ok@doorman.test"));
    thread::sleep(Duration::from_millis(2100));
    let (mut replayed, reply) =
        attempt(&doorman, "203.0.113.22", "a@sender.test", "ok@doorman.test");
    assert_eq!(reply, "250 2.0.0 ok\r\n", "passed once, replayed");
    // After the replay, the hard error limit (20) ends the session.
    let too_many = "421 4.7.0 mx.doorman.test Error: too many errors\r\n";
    pipeline_recipients(&mut replayed, 0, 20, too_many);
    // The replayed client is cached now; two other doubtful addresses of
    // its /24 come with more recipients.
    for (round, client) in [(1, "203.0.113.7"), (2, "203.0.113.9")] {
        let mut again = connect_as(&doorman, client);
        assert_eq!(read_line(&mut again), BANNER);
        helo_and_mail(&mut again, "a@sender.test");
        // In the engine, postscreen's command count limit (20) ends it.
        let unavailable = "421 mx.doorman.test Service unavailable - try again later\r\n";
        pipeline_recipients(&mut again, round, 18, unavailable);
    }
    let keys = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            "g:gate:greylist:*|*",
        ])
        .output()
        .expect("redis-cli runs");
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let records = keys
        .lines()
        .filter(|key| key.contains("203.0.113.0/24"))
        .count();
    assert!(records <= 10, "{records} records: {keys}");
    assert_eq!(
        records, 10,
        "the cap is reached, not skipped (59 without it): {keys}"
    );
    doorman.log.wait_for(
        "warning: greylist: network 203.0.113.0/24 has 10 records; greylisting its new triplets without a record",
        Duration::from_secs(5),
    );
    assert_eq!(
        doorman.log.matching("has 10 records").len(),
        1,
        "logged once"
    );
    // Each refusal at the cap is counted: 11 in the first session (after
    // the tenth record), 18 in each of the others.
    let admin = parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(5)),
    );
    let (_, metrics) = crate::operations::get(admin, "/metrics");
    assert_eq!(
        crate::operations::sample(
            &metrics,
            "doorman_gate_events_total{gate=\"greylist\",event=\"network_full\"}"
        ),
        Some(47.0),
        "{metrics}"
    );
}

#[test]
fn with_the_embedded_store_records_survive_a_restart() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        "store = \"embedded\"\npath = \"cache.redb\"",
    );
    let (_s, reply) = attempt(
        &doorman,
        "203.0.113.22",
        "kept@sender.test",
        "rcpt@doorman.test",
    );
    assert_eq!(reply, greylisted("rcpt@doorman.test"));
    let dir = doorman.stop();
    thread::sleep(Duration::from_millis(2100));
    let again = Doorman::start_in(dir);
    let (_s, reply) = attempt(
        &again,
        "203.0.113.22",
        "kept@sender.test",
        "rcpt@doorman.test",
    );
    assert_eq!(
        reply, "250 2.0.0 ok\r\n",
        "the first attempt was remembered on disk"
    );
}
