//! The access list, the engine's limits, hang-ups and refusals around the teaser, `doorman explain` against the runtime, and the connection limits and stress mode.

use super::*;

#[test]
fn access_list_permit_reject_dunno() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            access_action: "drop",
            ..Setup::default()
        },
    );
    let started = Instant::now();
    let mut permitted = connect_as(&doorman, "198.51.100.1");
    assert_eq!(read_line(&mut permitted), BACKEND, "no teaser, no wait");
    assert!(started.elapsed() < Duration::from_millis(500));
    doorman
        .log
        .wait_for("ALLOWLISTED [198.51.100.1]:40000", Duration::from_secs(5));
    let mut rejected = connect_as(&doorman, "198.51.100.2");
    assert_eq!(
        read_to_close(&mut rejected),
        "521 5.3.2 Service currently unavailable\r\n"
    );
    doorman
        .log
        .wait_for("DENYLISTED [198.51.100.2]:40000", Duration::from_secs(5));
    let mut dunno = connect_as(&doorman, "198.51.100.3");
    assert_eq!(read_line(&mut dunno), TEASER);

    let enforcing = start(
        &backend,
        dns.address,
        Setup {
            access_action: "enforce",
            ..Setup::default()
        },
    );
    let mut client = connect_as(&enforcing, "198.51.100.2");
    assert_eq!(read_line(&mut client), TEASER);
    assert_eq!(read_line(&mut client), "220 mx.doorman.test ESMTP\r\n");
    // One command at a time: pipelined, they would fail the pipelining
    // test, and its reply would be the latest failure's.
    say(&mut client, "HELO x\r\n");
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    say(&mut client, "MAIL FROM:<a@b>\r\n");
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<c@d>\r\n");
    assert_eq!(
        read_line(&mut client),
        "550 5.3.2 Service currently unavailable\r\n"
    );

    // ignore: logged, handed off after the other tests, never cached.
    let ignoring = start(&backend, dns.address, Setup::default());
    for _ in 0..2 {
        let mut client = connect_as(&ignoring, "198.51.100.2");
        assert_eq!(read_line(&mut client), TEASER);
        assert_eq!(read_line(&mut client), BACKEND);
    }
    assert_eq!(
        ignoring
            .log
            .matching("DENYLISTED [198.51.100.2]:40000")
            .len(),
        2
    );
    assert!(ignoring.log.matching("PASS").is_empty());
}

/// A refused client's socket is read and written outside the reactor
/// until it has to wait: a header that comes a byte at a time puts it in
/// the reactor part way, and the refusal still comes whole, then the
/// close. (The header in one piece is `access_list_permit_reject_dunno`.)
#[test]
fn a_refusal_after_a_header_dripped_a_byte_at_a_time() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            access_action: "drop",
            ..Setup::default()
        },
    );
    let mut client = connect_from(PROXY, doorman.address);
    client.set_nodelay(true).unwrap();
    for byte in b"PROXY TCP4 198.51.100.2 198.51.100.25 40000 25\r\n" {
        client.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        read_to_close(&mut client),
        "521 5.3.2 Service currently unavailable\r\n"
    );
    doorman
        .log
        .wait_for("DENYLISTED [198.51.100.2]:40000", Duration::from_secs(5));
    doorman
        .log
        .wait_for("DISCONNECT [198.51.100.2]:40000", Duration::from_secs(5));
}

#[test]
fn engine_limits() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            dnsbl_action: "enforce",
            banner: "",
            extra: "[engine]\ncommand_limit = 3\nline_length = 64\ncommand_time = \"1s\"\n",
            ..Setup::default()
        },
    );
    let mut counted = connect_as(&doorman, "203.0.113.7");
    assert_eq!(read_line(&mut counted), "220 mx.doorman.test ESMTP\r\n");
    say(&mut counted, "NOOP\r\nNOOP\r\nRCPT TO:<x@y>\r\nNOOP\r\n");
    assert_eq!(read_line(&mut counted), "250 2.0.0 Ok\r\n");
    assert_eq!(read_line(&mut counted), "250 2.0.0 Ok\r\n");
    assert_eq!(
        read_line(&mut counted),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    assert_eq!(
        read_to_close(&mut counted),
        "421 mx.doorman.test Service unavailable - try again later\r\n"
    );
    doorman.log.wait_for(
        "COMMAND COUNT LIMIT from [203.0.113.7]:40000 after RCPT",
        Duration::from_secs(5),
    );

    let mut long = connect_as(&doorman, "203.0.113.9");
    assert_eq!(read_line(&mut long), "220 mx.doorman.test ESMTP\r\n");
    say(&mut long, &format!("HELO {}\r\n", "x".repeat(100)));
    assert_eq!(
        read_to_close(&mut long),
        "421 mx.doorman.test Service unavailable - try again later\r\n"
    );
    doorman.log.wait_for(
        "COMMAND LENGTH LIMIT from [203.0.113.9]:40000 after CONNECT",
        Duration::from_secs(5),
    );

    let mut slow = connect_as(&doorman, "203.0.113.8");
    assert_eq!(read_line(&mut slow), "220 mx.doorman.test ESMTP\r\n");
    say(&mut slow, "HEL");
    assert_eq!(
        read_to_close(&mut slow),
        "421 4.4.2 mx.doorman.test Error: timeout exceeded\r\n"
    );
    doorman.log.wait_for(
        "COMMAND TIME LIMIT from [203.0.113.8]:40000 after CONNECT",
        Duration::from_secs(5),
    );
}

#[test]
fn hangup_during_the_wait() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, dns.address, Setup::default());
    let mut client = connect_as(&doorman, "203.0.113.204");
    assert_eq!(read_line(&mut client), TEASER);
    drop(client);
    let line = doorman.log.wait_for("HANGUP after", Duration::from_secs(5));
    assert!(
        line.ends_with("from [203.0.113.204]:40000 in tests before SMTP handshake"),
        "{line}"
    );
    assert_eq!(backend.count(), 0);
}

#[test]
fn backend_refusing_after_the_teaser_gets_a_clean_ending() {
    let Some(dns) = Rbldnsd::start() else { return };
    // A backend that passes doorman's first health check, then greets
    // clients with 554 (an overloaded or misconfigured smtpd).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().flatten().enumerate() {
            let mut stream = stream;
            let greeting: &[u8] = if n == 0 {
                b"220 backend.test ESMTP\r\n"
            } else {
                b"554 5.3.2 backend says no\r\n"
            };
            let _ = stream.write_all(greeting);
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let backend = FakeBackend {
        address,
        connections: Default::default(),
        stopped: Default::default(),
        acceptor: Default::default(),
    };
    let doorman = start(&backend, dns.address, Setup::default());
    let mut client = connect_as(&doorman, "203.0.113.205");
    assert_eq!(read_line(&mut client), TEASER);
    assert_eq!(read_line(&mut client), "220 mx.doorman.test ESMTP\r\n");
    say(&mut client, "EHLO me\r\n");
    assert_eq!(
        read_to_close(&mut client),
        "421 4.3.2 All server ports are busy\r\n"
    );
    doorman.log.wait_for(
        "greeted [203.0.113.205]:40000 with: 554 5.3.2 backend says no",
        Duration::from_secs(5),
    );
}

#[test]
fn unlisted_client_sending_proxy_during_the_wait() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, dns.address, Setup::default());
    let mut client = connect_from(Ipv4Addr::new(127, 0, 0, 3), doorman.address);
    assert_eq!(read_line(&mut client), TEASER);
    say(&mut client, "PROXY TCP4 1.2.3.4 5.6.7.8 1 25\r\n");
    assert_eq!(
        read_to_close(&mut client),
        "421 4.7.0 PROXY not allowed from 127.0.0.3\r\n"
    );
    assert_eq!(backend.count(), 0);
}

#[test]
fn explain_shows_matches_score_and_verdict() {
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
    let explain = |ip: &str| {
        stdout_of(
            std::process::Command::new(doorman_bin())
                .args(["explain", "--config"])
                .arg(doorman.config_path())
                .arg(ip),
        )
    };
    let listed = explain("203.0.113.9");
    for line in [
        "client: 203.0.113.9\n",
        "access list: no match (dunno)\n",
        "dnsbl bl.test: listed as 127.0.0.10 (ttl 300s)\n",
        "dnsbl bl2.test: listed as 127.0.0.2 (ttl 86400s)\n",
        "site bl.test=127.0.0.[2..11]*2: matches, +2\n",
        "site bl2.test*1: matches, +1\n",
        "site wl.test=127.0.[0..255].[2..3]*-3: no match\n",
        "score: 3 (threshold 2, allowlist threshold -2); fails: nothing remembered\n",
        "verdict: DNSBL rank 3: 5.7.1 Service unavailable; client [203.0.113.9] blocked using bl.test, action enforce\n",
    ] {
        assert!(listed.contains(line), "missing {line:?} in:\n{listed}");
    }
    let allowed = explain("203.0.113.20");
    assert!(
        allowed.contains("verdict: allowlisted by DNSWL (rank -3)"),
        "{allowed}"
    );
    let permitted = explain("198.51.100.1");
    assert!(
        permitted.contains("access list: line 2: permit\nverdict: permit (ALLOWLISTED)"),
        "{permitted}"
    );
    let denied = explain("198.51.100.2");
    assert!(
        denied.contains("verdict: denylisted (DENYLISTED)"),
        "{denied}"
    );
    let error = explain("203.0.113.66");
    assert!(
        error.contains("dnsbl bl.test: lookup failed: error code 127.255.255.254"),
        "{error}"
    );
    assert!(
        error.contains("a list did not answer: nothing remembered, tested in full next time"),
        "{error}"
    );
    assert!(!error.contains("pass remembered"), "{error}");
    let clean = explain("203.0.113.200");
    assert!(clean.contains("; pass remembered for 60s\n"), "{clean}");
}

#[test]
fn explain_and_the_runtime_agree_when_no_list_answers() {
    // A name server that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = silent.local_addr().unwrap();
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns,
        Setup {
            extra: "min_ttl = \"60s\"\n",
            ..Setup::default()
        },
    );
    let report = explain(&doorman, "203.0.113.201");
    assert!(
        report.contains("a list did not answer: nothing remembered, tested in full next time"),
        "{report}"
    );
    assert!(!report.contains("pass remembered"), "{report}");
    // The runtime: handed off after the wait, nothing remembered, so the
    // next visit meets the teaser again.
    for _ in 0..2 {
        let mut client = connect_as(&doorman, "203.0.113.201");
        assert_eq!(read_line(&mut client), TEASER);
        assert_eq!(read_line(&mut client), "220 backend.test ESMTP fake\r\n");
        drop(client);
    }
    assert!(
        doorman.log.matching("PASS").is_empty(),
        "{:?}",
        doorman.log.matching("PASS")
    );
}

#[test]
fn connection_limits_and_stress_mode() {
    let (_backend, doorman) = behind_fake_backend(
        "[greet]\nwait = \"5s\"\n[limits]\nclient_connections = 2\nscreening = 10\ntotal = 12\n",
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect_as(&doorman, "203.0.113.30");
        assert_eq!(read_line(&mut c), TEASER);
        held.push(c);
    }
    let mut third = connect_as(&doorman, "203.0.113.30");
    assert_eq!(
        read_to_close(&mut third),
        "421 4.7.0 Error: too many connections\r\n"
    );
    doorman.log.wait_for(
        "NOQUEUE: reject: CONNECT from [203.0.113.30]:40000: too many connections",
        Duration::from_secs(5),
    );
    for n in 41..48 {
        let mut c = connect_as(&doorman, &format!("203.0.113.{n}"));
        assert_eq!(read_line(&mut c), TEASER);
        held.push(c);
    }
    // 9 of 10 screening places: stress mode, and the greet wait drops to 2s.
    doorman.log.wait_for(
        "entering STRESS mode with 9 connections",
        Duration::from_secs(5),
    );
    let started = Instant::now();
    let mut stressed = connect_as(&doorman, "203.0.113.48");
    assert_eq!(read_line(&mut stressed), TEASER);
    let mut busy = connect_as(&doorman, "203.0.113.49");
    assert_eq!(
        read_to_close(&mut busy),
        "421 4.3.2 All screening ports are busy\r\n"
    );
    doorman.log.wait_for(
        "reject: connect from [203.0.113.49]:40000: all screening ports busy",
        Duration::from_secs(5),
    );
    // Health checks are not counted.
    let mut check = connect_from(PROXY, doorman.address);
    check
        .write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00")
        .unwrap();
    assert_eq!(read_line(&mut check), "220 mx.doorman.test ESMTP\r\n");
    assert_eq!(read_line(&mut stressed), BACKEND);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(4000),
        "stress wait: {waited:?}"
    );
    drop(held);
    doorman.log.wait_for(
        "leaving STRESS mode with 7 connections",
        Duration::from_secs(8),
    );
}

#[test]
fn a_returning_client_is_tested_again_without_a_screening_place() {
    let (_backend, doorman) =
        behind_fake_backend("[greet]\nwait = \"2s\"\nttl = \"1s\"\n[limits]\nscreening = 1\n");
    let mut first = connect_as(&doorman, "203.0.113.60");
    assert_eq!(read_line(&mut first), TEASER);
    assert_eq!(read_line(&mut first), BACKEND);
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.60]", Duration::from_secs(5));
    drop(first);
    // Its pregreet pass lapses; its record stays (retention).
    std::thread::sleep(Duration::from_millis(1200));
    let mut waiting = connect_as(&doorman, "203.0.113.61");
    assert_eq!(read_line(&mut waiting), TEASER);
    let mut busy = connect_as(&doorman, "203.0.113.62");
    assert_eq!(
        read_to_close(&mut busy),
        "421 4.3.2 All screening ports are busy\r\n",
        "the one screening place is taken"
    );
    let mut again = connect_as(&doorman, "203.0.113.60");
    assert_eq!(read_line(&mut again), TEASER, "tested again, not refused");
    assert_eq!(read_line(&mut again), BACKEND);
    doorman
        .log
        .wait_for("PASS OLD [203.0.113.60]", Duration::from_secs(5));
}

#[test]
fn total_connection_cap() {
    let (_backend, doorman) = behind_fake_backend("[greet]\nwait = \"3s\"\n[limits]\ntotal = 1\n");
    let mut first = connect_as(&doorman, "203.0.113.35");
    assert_eq!(read_line(&mut first), TEASER);
    let mut second = connect_as(&doorman, "203.0.113.36");
    assert_eq!(
        read_to_close(&mut second),
        "421 4.3.2 All server ports are busy\r\n"
    );
    doorman.log.wait_for(
        "NOQUEUE: reject: CONNECT from [203.0.113.36]:40000: too many connections in total",
        Duration::from_secs(5),
    );
}

#[test]
fn a_pre_220_failure_switches_every_deep_test_on() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        Setup {
            dnsbl_action: "enforce",
            banner: "",
            ..Setup::default()
        },
    );
    let mut client = connect_as(&doorman, "203.0.113.7");
    assert_eq!(read_line(&mut client), "220 mx.doorman.test ESMTP\r\n");
    say(&mut client, "HELO sloppy.example\n");
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    doorman.log.wait_for(
        "BARE NEWLINE from [203.0.113.7]:40000 after HELO sloppy.example",
        Duration::from_secs(5),
    );
}
