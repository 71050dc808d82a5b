//! Dripped commands, hostile lines, a client's own XCLIENT against an
//! XCLIENT backend, a late PROXY header.

use std::io::Write;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

#[test]
fn a_dripped_command_is_cut_at_the_command_time_in_the_engine_and_after_the_replay() {
    let backend = FakeBackend::start(true);
    let doorman = engine_first(backend.address, "[engine]\ncommand_time = \"2s\"\n");
    let drip = |s: &mut dyn Wire| drip(s, Duration::from_secs(3));
    // In the engine.
    let mut s = greet(&doorman, "203.0.113.41", false);
    let (answer, took) = drip(&mut *s);
    assert_eq!(
        answer,
        "421 4.4.2 mx.doorman.test Error: timeout exceeded\r\n"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    doorman.log.wait_for(
        "COMMAND TIME LIMIT from [203.0.113.41]:40000 after EHLO",
        Duration::from_secs(5),
    );
    // After the replay.
    let mut s = replayed(&doorman, "203.0.113.42", false);
    let (answer, took) = drip(&mut *s);
    assert_eq!(
        answer,
        "421 4.4.2 mx.doorman.test Error: timeout exceeded\r\n"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    doorman.log.wait_for(
        "COMMAND TIME LIMIT from [203.0.113.42]:40000 after RCPT",
        Duration::from_secs(5),
    );
}

/// A client of a doorman with a fake backend (see [`engine_first`]), past
/// its MAIL and its replayed RCPT (inside TLS with `tls`).
pub(super) fn replayed(doorman: &Doorman, client: &str, tls: bool) -> Box<dyn Wire> {
    let mut s = greet(doorman, client, tls);
    steps(
        &mut *s,
        &[
            (
                "MAIL FROM:<a@sender.test>\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<b@doorman.test>\r\n",
                "250 2.0.0 ok\r\n".to_string(),
            ),
        ],
    );
    s
}

/// Drips a command a byte every 400 ms, for at most `cap`; the reply it got
/// and how long that took.
pub(super) fn drip(s: &mut dyn Wire, cap: Duration) -> (String, Duration) {
    let started = Instant::now();
    for byte in b"NOOP and some more words to drip, and more, and more\r\n"
        .iter()
        .cycle()
    {
        if s.write_all(&[*byte]).is_err() || started.elapsed() > cap {
            break;
        }
        thread::sleep(Duration::from_millis(400));
    }
    (reply(s), started.elapsed())
}

#[test]
fn under_stress_a_command_gets_ten_seconds() {
    // Two screening places: two clients in the engine put doorman under
    // stress (90% of them), and a command then gets 10 s, not 60.
    let backend = FakeBackend::start(true);
    let doorman = engine_first(
        backend.address,
        "[engine]\ncommand_time = \"60s\"\n[limits]\nscreening = 2\n",
    );
    let _other = greet(&doorman, "203.0.113.47", false);
    let mut s = greet(&doorman, "203.0.113.48", false);
    doorman
        .log
        .wait_for("entering STRESS mode", Duration::from_secs(5));
    let (answer, took) = drip(&mut *s, Duration::from_secs(20));
    assert_eq!(
        answer,
        "421 4.4.2 mx.doorman.test Error: timeout exceeded\r\n"
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "{took:?}"
    );
}

/// BDAT chunks longer than a command line, and one beyond the backend's
/// SIZE, against a real Postfix: the first is queued, the second refused
/// by Postfix, and doorman ends the session there.
#[test]
fn bdat_chunks_beyond_the_line_and_the_size_limit() {
    let Some(postfix) = Postfix::start_delivering(
        "smtpd_upstream_proxy_protocol = haproxy\nrelay_domains = doorman.test\nmessage_size_limit = 100000\n",
    ) else {
        return;
    };
    let doorman = engine_first(postfix.address(), "");
    let mut s = greet(&doorman, "203.0.113.49", false);
    let s = &mut *s;
    steps(
        s,
        &[
            (
                "MAIL FROM:<a@sender.test>\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<b@doorman.test>\r\n",
                "250 2.1.5 Ok\r\n".to_string(),
            ),
        ],
    );
    // A chunk longer than a command line, then BDAT 0 LAST.
    let chunk = format!("Subject: long\r\n\r\n{}\r\n", "x".repeat(5000));
    assert_eq!(
        ask(s, &format!("BDAT {}\r\n{chunk}", chunk.len())),
        format!("250 2.0.0 Ok: {} bytes\r\n", chunk.len())
    );
    let answer = ask(s, "BDAT 0 LAST\r\n");
    assert!(
        answer.starts_with("250 2.0.0 Ok: ") && answer.contains(" bytes queued as "),
        "{answer}"
    );
    steps(
        s,
        &[
            (
                "MAIL FROM:<a@sender.test>\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<b@doorman.test>\r\n",
                "250 2.1.5 Ok\r\n".to_string(),
            ),
        ],
    );
    let big = "y".repeat(200_000);
    let answer = ask(s, &format!("BDAT {} LAST\r\n{big}", big.len()));
    assert!(answer.starts_with("552 5.3.4"), "{answer}");
    assert_eq!(reply(s), "", "the session ends after a refused chunk");
}

#[test]
fn hostile_lines_after_the_replay_get_clean_replies() {
    let backend = FakeBackend::start(true);
    let doorman = engine_first(backend.address, "[engine]\ncommand_time = \"3s\"\n");
    let mut s = connect_as(&doorman, "203.0.113.43");
    assert_eq!(reply(&mut s), "220 mx.doorman.test ESMTP\r\n");
    // XCLIENT before and after EHLO, in the engine.
    assert_eq!(
        ask(&mut s, "XCLIENT ADDR=10.9.9.9\r\n"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    assert!(ask(&mut s, "EHLO client.test\r\n").starts_with("250"));
    steps(
        &mut s,
        &[
            (
                "XFORWARD ADDR=10.9.9.9\r\n",
                "550 5.7.0 Error: insufficient authorization\r\n".to_string(),
            ),
            // In the engine too, a line no backend may see is refused, never
            // stored for the replay.
            (
                "MAIL FROM:<a@b> X=\x0b\r\n",
                "500 5.5.2 Error: bad syntax\r\n".to_string(),
            ),
            ("MAIL FROM:<>\r\n", "250 2.1.0 Ok\r\n".to_string()),
            (
                "RCPT TO:<b@doorman.test>\r\n",
                "250 2.0.0 ok\r\n".to_string(),
            ),
        ],
    );
    // After the replay: a NUL or a bare CR in a command.
    steps(
        &mut s,
        &[
            (
                "NOOP \0x\r\n",
                "500 5.5.2 Error: bad syntax\r\n".to_string(),
            ),
            (
                "NOOP a\rRCPT TO:<x@y>\r\n",
                "500 5.5.2 Error: bad syntax\r\n".to_string(),
            ),
        ],
    );
    // 1,000 recipients (the replayed one, then 999 in one write): the
    // 1,001st is refused by doorman.
    let mut many = String::new();
    for n in 1..1000 {
        many.push_str(&format!("RCPT TO:<r{n}@doorman.test>\r\n"));
    }
    s.write_all(many.as_bytes()).unwrap();
    for _ in 1..1000 {
        assert_eq!(reply(&mut s), "250 2.0.0 ok\r\n");
    }
    assert_eq!(
        ask(&mut s, "RCPT TO:<over@doorman.test>\r\n"),
        "452 4.5.3 Error: too many recipients\r\n"
    );
    // This backend never announced CHUNKING: no BDAT reaches it.
    assert_eq!(
        ask(&mut s, "BDAT 5 LAST\r\n"),
        "502 5.5.1 Error: command not implemented\r\n"
    );
    // Lines that another smtpd would split otherwise than doorman: a
    // vertical tab (C's isspace), other control bytes, bad UTF-8, an
    // empty line, a verb doorman does not know.
    for (line, answer) in [
        (
            "XCLIENT\x0bADDR=10.9.9.9\r\n",
            "500 5.5.2 Error: bad syntax\r\n",
        ),
        ("MAIL\x0bFROM:<x@y>\r\n", "500 5.5.2 Error: bad syntax\r\n"),
        ("RCPT\x0cTO:<x@y>\r\n", "500 5.5.2 Error: bad syntax\r\n"),
        ("\r\n", "500 5.5.2 Error: bad syntax\r\n"),
        (
            "XSHADOW ADDR=10.9.9.9\r\n",
            "502 5.5.2 Error: command not recognized\r\n",
        ),
    ] {
        assert_eq!(ask(&mut s, line), answer, "{line:?}");
    }
    s.write_all(b"RCPT TO:<\xff@doorman.test>\r\n").unwrap();
    assert_eq!(reply(&mut s), "500 5.5.2 Error: bad UTF-8 syntax\r\n");
    // A line one byte over the limit (2,048 with its CRLF).
    let long = format!("RCPT TO:<{}@doorman.test>\r\n", "x".repeat(2049 - 25));
    assert_eq!(long.len(), 2049);
    assert_eq!(
        ask(&mut s, &long),
        "421 mx.doorman.test Service unavailable - try again later\r\n"
    );
    let got = String::from_utf8_lossy(&backend.wait_closed(0)).into_owned();
    for never in [
        "XCLIENT",
        "XFORWARD",
        "XSHADOW",
        "\0x",
        "\x0bADDR",
        "\x0cTO",
        "<\u{FFFD}@",
        "over@",
        "BDAT",
        "xxxxxxxx",
    ] {
        assert!(!got.contains(never), "{never:?} reached the backend");
    }

    // A body that never ends, then silence: cut at the command time.
    let mut s = replayed(&doorman, "203.0.113.44", false);
    steps(&mut *s, &[("DATA\r\n", "354 go ahead\r\n".to_string())]);
    let started = Instant::now();
    assert_eq!(
        ask(&mut *s, "Subject: unfinished\r\n\r\nno end"),
        "421 4.4.2 mx.doorman.test Error: timeout exceeded\r\n"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // AUTH with a 10,000-byte initial response.
    let mut s = greet(&doorman, "203.0.113.45", false);
    let auth = format!("AUTH PLAIN {}\r\n", "A".repeat(10_000));
    let answer = ask(&mut *s, &auth);
    assert_eq!(
        answer,
        "421 mx.doorman.test Service unavailable - try again later\r\n"
    );
}

/// A client's own XCLIENT, against a Postfix that authorises more than
/// doorman for XCLIENT (the set-up in which it let a client relay): refused
/// by doorman, and the relay stays closed.
#[test]
fn a_clients_xclient_never_reaches_an_xclient_backend() {
    let Some(postfix) = Postfix::start(
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8\nmynetworks = 127.0.0.9/32\n\
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n",
        "",
    ) else {
        return;
    };
    let config = config(postfix.address(), "xclient", "", "5s");
    let doorman = Doorman::start(&config, "127.0.0.200\n");
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 5), doorman.address);
    assert_eq!(reply(&mut s), "220 backend.postfix.test ESMTP Postfix\r\n");
    let ehlo = ask(&mut s, "EHLO client.test\r\n");
    assert!(ehlo.starts_with("250-backend.postfix.test\r\n"), "{ehlo}");
    assert!(
        !ehlo.contains("XCLIENT") && !ehlo.contains("XFORWARD"),
        "{ehlo}"
    );
    steps(
        &mut s,
        &[
            (
                "XCLIENT ADDR=127.0.0.9\r\n",
                "550 5.7.0 Error: insufficient authorization\r\n".to_string(),
            ),
            (
                "XFORWARD ADDR=127.0.0.9\r\n",
                "550 5.7.0 Error: insufficient authorization\r\n".to_string(),
            ),
            (
                "MAIL FROM:<a@client.test>\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
        ],
    );
    let answer = ask(&mut s, "RCPT TO:<b@elsewhere.test>\r\n");
    assert!(
        answer.starts_with("554 5.7.1 <b@elsewhere.test>: Relay access denied"),
        "{answer}"
    );
    assert_eq!(ask(&mut s, "QUIT\r\n"), "221 2.0.0 Bye\r\n");
    postfix.wait_for_log(
        "[127.0.0.5]: 554 5.7.1 <b@elsewhere.test>",
        Duration::from_secs(10),
    );
    let log = std::fs::read_to_string(postfix.dir.path().join("maillog")).unwrap();
    assert!(!log.contains("127.0.0.9"), "{log}");
}

#[test]
fn a_late_proxy_header_after_the_replay_ends_the_session() {
    let backend = FakeBackend::start(true);
    let doorman = engine_first(backend.address, "");
    let mut s = replayed(&doorman, "203.0.113.46", false);
    steps(&mut *s, &[("NOOP\r\n", "250 2.0.0 ok\r\n".to_string())]);
    // Alone in its own write, after the buffer was empty.
    assert_eq!(
        ask(&mut *s, "PROXY TCP4 6.6.6.6 127.0.0.1 1 25\r\n"),
        "421 4.7.0 PROXY not allowed from 203.0.113.46\r\n"
    );
    let got = String::from_utf8_lossy(&backend.wait_closed(0)).into_owned();
    assert!(!got.contains("6.6.6.6"), "{got}");
}

#[test]
fn twenty_errors_end_the_session_as_smtpd_ends_it() {
    let backend = FakeBackend::start(true);
    let doorman = engine_first(backend.address, "");
    let mut s = replayed(&doorman, "203.0.113.50", false);
    let s = &mut *s;
    s.write_all("RCPT TO:<>\r\n".repeat(25).as_bytes()).unwrap();
    for _ in 0..20 {
        assert_eq!(reply(s), "501 5.1.3 Bad recipient address syntax\r\n");
    }
    assert_eq!(
        reply(s),
        "421 4.7.0 mx.doorman.test Error: too many errors\r\n"
    );
    assert_eq!(reply(s), "", "closed");
    doorman.log.wait_for(
        "too many errors after RCPT from [203.0.113.50]:40000",
        Duration::from_secs(5),
    );
}

/// A backend that greets and answers every line, but hangs up without a
/// word at the end of a message.
pub(super) fn dies_at_end_of_message() -> SocketAddr {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                if read_v2_header(&mut reader).is_none() {
                    return;
                }
                let _ = writer.write_all(b"220 backend.test ESMTP\r\n");
                let mut in_data = false;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = match () {
                        _ if in_data && line == ".\r\n" => return,
                        _ if in_data => b"",
                        _ if upper.starts_with("DATA") => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        _ if upper.starts_with("QUIT") => return,
                        _ => b"250 2.0.0 ok\r\n",
                    };
                    let _ = writer.write_all(reply);
                    line.clear();
                }
            });
        }
    });
    address
}

#[test]
fn a_backend_lost_at_the_end_of_a_message_gets_postfixs_451() {
    let doorman = engine_first(
        dies_at_end_of_message(),
        "[admin]\naddress = \"127.0.0.1:0\"\n",
    );
    let admin = parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(5)),
    );
    let mut s = replayed(&doorman, "203.0.113.51", false);
    steps(
        &mut *s,
        &[
            ("DATA\r\n", "354 go ahead\r\n".to_string()),
            (
                "Subject: x\r\n\r\nhello\r\n.\r\n",
                "451 4.3.0 Error: queue file write error\r\n".to_string(),
            ),
        ],
    );
    assert_eq!(reply(&mut *s), "", "closed after the 451");
    doorman.log.wait_for(
        "after END-OF-MESSAGE for [203.0.113.51]:40000",
        Duration::from_secs(5),
    );
    let text = crate::support::metrics(admin);
    assert!(
        text.contains("doorman_backend_lost_total{stage=\"END-OF-MESSAGE\"} 1"),
        "{text}"
    );
}
