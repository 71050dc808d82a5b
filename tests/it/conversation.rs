//! The conversation after the handoff is doorman's to its end, tried as an
//! attacker would, on plain text and inside TLS: a doubtful client past
//! greylisting once meets the gates in every later transaction (bare
//! addresses, RSET, after DATA and BDAT LAST, pipelined); the end of DATA is
//! `<CR><LF>.<CR><LF>` and nothing else, against a real Postfix; a client's
//! own XCLIENT and XFORWARD never reach a backend; a dripped command is cut
//! at `command_time`; AUTH passes the gates only when the backend accepts
//! it; and hostile lines get clean replies.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::tls::{certificate, start_tls, tls_section, Key};
use crate::support::*;

/// A client's connection, plain or TLS.
trait Wire: Read + Write {}
impl<T: Read + Write> Wire for T {}

/// Reads one whole reply, every line up to the one with a space after the
/// code ("" when the connection closed first).
fn reply(stream: &mut dyn Wire) -> String {
    let mut text = String::new();
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            match stream.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => return text,
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let last = line.as_bytes().get(3) != Some(&b'-');
        text.push_str(&line);
        if last {
            return text;
        }
    }
}

/// Sends `text` and returns the reply to it.
fn ask(stream: &mut dyn Wire, text: &str) -> String {
    stream.write_all(text.as_bytes()).unwrap();
    stream.flush().unwrap();
    reply(stream)
}

fn greylisted(recipient: &str) -> String {
    let domain = recipient.split('@').nth(1).unwrap_or_default();
    format!(
        "450 4.2.0 <{recipient}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/{domain}.html\r\n"
    )
}

/// The `[tls]` section with a throwaway certificate made in `dir`.
fn tls_config(dir: &Path) -> String {
    let pair = certificate(dir, "mx", "mx.doorman.test", Key::Rsa, 2);
    tls_section(&[pair], "")
}

/// A Postfix that takes PROXY v2 and queues (into discard) for
/// doorman.test.
fn postfix() -> Option<Postfix> {
    Postfix::start_delivering(
        "smtpd_upstream_proxy_protocol = haproxy\nrelay_domains = doorman.test\n",
    )
}

/// doorman greylisting clients rbldnsd lists at weight 1 (a 1 s delay), in
/// front of `backend`, with `[tls]` when `tls` names a section.
fn greylisting(backend: SocketAddr, dns: SocketAddr, tls: &str) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"2s\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nsites = [\"bl.test=127.0.0.2\", \"bl2.test\"]\nthreshold = 5\naction = \"enforce\"\ntimeout = \"2s\"\nnameservers = [\"{dns}\"]\n\
[greylist]\nthreshold = 1\ndelay = \"1s\"\nretry_window = \"1h\"\n{tls}"
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"deep\", \"greylist\"]\n{}",
        config_with(backend, "v2", "", "5s", &sections)
    );
    Doorman::start(&config, "127.0.0.1\n")
}

/// Connects as `client` and greets: EHLO, and with `tls` STARTTLS and EHLO
/// again inside it. Returns the stream.
fn greet(doorman: &Doorman, client: &str, tls: bool) -> Box<dyn Wire> {
    let mut plain = connect_as(doorman, client);
    assert_eq!(reply(&mut plain), "220 mx.doorman.test ESMTP\r\n");
    let ehlo = ask(&mut plain, "EHLO client.test\r\n");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    assert!(
        !ehlo.contains("XCLIENT") && !ehlo.contains("XFORWARD"),
        "{ehlo}"
    );
    if !tls {
        return Box::new(plain);
    }
    assert_eq!(
        ask(&mut plain, "STARTTLS\r\n"),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    let mut secure: Box<dyn Wire> = Box::new(start_tls(plain, None));
    assert!(ask(&mut *secure, "EHLO client.test\r\n").starts_with("250"));
    secure
}

/// A doubtful client greylisted once for (alice, bob), then replayed: its
/// session after the replay.
fn past_greylisting(doorman: &Doorman, client: &str, tls: bool) -> Box<dyn Wire> {
    for attempt in 0..2 {
        let mut stream = greet(doorman, client, tls);
        assert_eq!(
            ask(&mut *stream, "MAIL FROM:<alice@sender.test>\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        let answer = ask(&mut *stream, "RCPT TO:<bob@doorman.test>\r\n");
        if attempt == 1 {
            assert_eq!(answer, "250 2.1.5 Ok\r\n", "Postfix's own reply, replayed");
            return stream;
        }
        assert_eq!(answer, greylisted("bob@doorman.test"));
        thread::sleep(Duration::from_millis(1100));
    }
    unreachable!()
}

/// Every way a client past greylisting once tried to reach new recipients
/// ungated, against a real Postfix: each new recipient is greylisted, and
/// none reaches Postfix.
fn every_transaction_is_gated(tls: bool) {
    let Some(dns) = Rbldnsd::start() else { return };
    let Some(postfix) = postfix() else { return };
    let certs = tempfile::tempdir().unwrap();
    let section = if tls {
        tls_config(certs.path())
    } else {
        String::new()
    };
    let doorman = greylisting(postfix.address(), dns.address, &section);
    let mut s = past_greylisting(&doorman, "203.0.113.22", tls);
    let s = &mut *s;

    // A bare recipient in the same transaction.
    assert_eq!(
        ask(s, "RCPT TO:erin@doorman.test\r\n"),
        greylisted("erin@doorman.test")
    );
    // RSET and a sender without angle brackets, in any letter case.
    assert_eq!(ask(s, "RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        ask(s, "mail from:mallory@evil.test\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        ask(s, "rcpt to:<dave@doorman.test>\r\n"),
        greylisted("dave@doorman.test")
    );
    // The gates see a bare sender as the one they passed.
    assert_eq!(ask(s, "RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        ask(s, "MAIL FROM:alice@sender.test\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(ask(s, "RCPT TO:<bob@doorman.test>\r\n"), "250 2.1.5 Ok\r\n");
    // A whole message, then a second transaction.
    assert!(ask(s, "DATA\r\n").starts_with("354 "));
    assert!(ask(s, "Subject: one\r\n\r\nhello\r\n.\r\n").starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(
        ask(s, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        ask(s, "RCPT TO:<carol@doorman.test>\r\n"),
        greylisted("carol@doorman.test")
    );
    assert_eq!(ask(s, "RSET\r\n"), "250 2.0.0 Ok\r\n");
    // BDAT LAST ends a transaction too.
    assert_eq!(
        ask(s, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(ask(s, "RCPT TO:<bob@doorman.test>\r\n"), "250 2.1.5 Ok\r\n");
    let chunk = "Subject: three\r\n\r\nchunked\r\n";
    let answer = ask(s, &format!("BDAT {} LAST\r\n{chunk}", chunk.len()));
    assert!(
        answer.starts_with("250 2.0.0 Ok: 27 bytes queued as"),
        "{answer}"
    );
    assert_eq!(
        ask(s, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        ask(s, "RCPT TO:<hal@doorman.test>\r\n"),
        greylisted("hal@doorman.test")
    );
    // What cannot be parsed never reaches Postfix.
    assert_eq!(
        ask(s, "RCPT TO:<broken@doorman.test\r\n"),
        "501 5.1.3 Bad recipient address syntax\r\n"
    );
    assert_eq!(
        ask(s, "RCPT TO:<>\r\n"),
        "501 5.1.3 Bad recipient address syntax\r\n"
    );
    assert_eq!(ask(s, "RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(
        ask(s, "MAIL FROM:<a@b\r\n"),
        "501 5.1.7 Bad sender address syntax\r\n"
    );
    // The client never speaks for doorman.
    assert_eq!(
        ask(s, "XCLIENT ADDR=10.9.9.9\r\n"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    assert_eq!(
        ask(s, "XFORWARD ADDR=10.9.9.9\r\n"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    let again = if tls {
        "554 5.5.1 Error: TLS already active\r\n"
    } else {
        "502 5.5.1 Error: command not implemented\r\n"
    };
    assert_eq!(ask(s, "STARTTLS\r\n"), again);
    // Pipelined in one write, though PIPELINING was never announced.
    s.write_all(
        b"MAIL FROM:<alice@sender.test> SIZE=100\r\nRCPT TO:<gina@doorman.test>\r\nDATA\r\nSubject: two\r\n\r\nsmuggled\r\n.\r\n",
    )
    .unwrap();
    assert_eq!(reply(s), "250 2.1.0 Ok\r\n");
    assert_eq!(reply(s), greylisted("gina@doorman.test"));
    assert_eq!(reply(s), "554 5.5.1 Error: no valid recipients\r\n");
    // The body the client pipelined is commands now: doorman answers each
    // line it would not pass on, and none reaches Postfix.
    for answer in [
        "502 5.5.2 Error: command not recognized\r\n",
        "500 5.5.2 Error: bad syntax\r\n",
        "502 5.5.2 Error: command not recognized\r\n",
        "502 5.5.2 Error: command not recognized\r\n",
    ] {
        assert_eq!(reply(s), answer);
    }
    assert_eq!(ask(s, "QUIT\r\n"), "221 2.0.0 Bye\r\n");

    postfix.wait_for_log("to=<bob@doorman.test>", Duration::from_secs(10));
    thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(postfix.dir.path().join("maillog")).unwrap();
    for never in [
        "erin@", "dave@", "carol@", "gina@", "hal@", "10.9.9.9", "XCLIENT", "XFORWARD",
    ] {
        assert!(!log.contains(never), "{never} reached Postfix:\n{log}");
    }
    doorman.log.wait_for(
        "warning: XCLIENT from [203.0.113.22]:40000: insufficient authorization",
        Duration::from_secs(5),
    );
}

#[test]
fn every_transaction_after_a_replay_meets_the_gates() {
    every_transaction_is_gated(false);
}

#[test]
fn every_transaction_after_a_replay_meets_the_gates_inside_tls() {
    every_transaction_is_gated(true);
}

/// The smtpsmug tool's end-of-DATA variants (CVE-2023-51764).
const SMUGGLING: [&str; 6] = [
    "\n.\n",
    "\n.\r\n",
    "\r\n.\r",
    "\r.\r\n",
    "\r.\r",
    "\r\n\0.\r\n",
];

/// doorman with every deep test on (so each client meets the engine and
/// its conversation is read), in front of `backend`.
fn engine_first(backend: SocketAddr, extra: &str) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[deep_tests]\n\
pipelining = {{ enable = true }}\nnon_smtp_command = {{ enable = true }}\nbare_newline = {{ enable = true }}\n{extra}"
    );
    Doorman::start(
        &config_with(backend, "v2", "", "5s", &sections),
        "127.0.0.1\n",
    )
}

/// Each smuggling variant, then a second transaction inside the body:
/// Postfix queues one message per session and never sees the smuggled
/// recipient.
fn no_smuggling(tls: bool) {
    let Some(postfix) = postfix() else { return };
    let certs = tempfile::tempdir().unwrap();
    let section = if tls {
        tls_config(certs.path())
    } else {
        String::new()
    };
    let doorman = engine_first(postfix.address(), &section);
    for (n, ending) in SMUGGLING.iter().enumerate() {
        let mut s = greet(&doorman, &format!("203.0.113.{}", 30 + n), tls);
        let s = &mut *s;
        assert_eq!(
            ask(s, "MAIL FROM:<alice@sender.test>\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(ask(s, "RCPT TO:<bob@doorman.test>\r\n"), "250 2.1.5 Ok\r\n");
        assert!(ask(s, "DATA\r\n").starts_with("354 "));
        let body = format!(
            "Subject: smuggling {n}\r\n\r\nfirst{ending}MAIL FROM:<eve@sender.test>\r\nRCPT TO:<smuggled@doorman.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n"
        );
        let answer = ask(s, &body);
        assert!(
            answer.starts_with("250 2.0.0 Ok: queued as"),
            "{n}: {answer}"
        );
        assert_eq!(
            ask(s, "QUIT\r\n"),
            "221 2.0.0 Bye\r\n",
            "{n}: one message, one reply"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(postfix.dir.path().join("maillog")).unwrap_or_default();
        assert!(!log.contains("smuggled@"), "{log}");
        if log.matches("to=<bob@doorman.test>").count() >= SMUGGLING.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn no_end_of_data_but_crlf_dot_crlf_reaches_postfix() {
    no_smuggling(false);
}

#[test]
fn no_end_of_data_but_crlf_dot_crlf_reaches_postfix_inside_tls() {
    no_smuggling(true);
}

#[test]
fn bare_newline_reject_refuses_the_message_with_postfixs_reply() {
    let backend = FakeBackend::start(true);
    let doorman = engine_first(backend.address, "[engine]\nbare_newline = \"reject\"\n");
    let mut s = greet(&doorman, "203.0.113.40", false);
    let s = &mut *s;
    assert_eq!(
        ask(s, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(ask(s, "RCPT TO:<bob@doorman.test>\r\n"), "250 2.0.0 ok\r\n");
    assert_eq!(ask(s, "DATA\r\n"), "354 go ahead\r\n");
    let answer = ask(
        s,
        "Subject: x\r\n\r\nfirst\n.\r\nRCPT TO:<smuggled@doorman.test>\r\n.\r\n",
    );
    assert_eq!(
        answer,
        "550 5.5.2 mx.doorman.test Error: bare <LF> received\r\n"
    );
    let got = String::from_utf8_lossy(&backend.wait_closed(0)).into_owned();
    assert!(got.contains("first"), "{got}");
    assert!(
        !got.contains("smuggled") && !got.contains("\r\n.\r\n"),
        "{got}"
    );
    doorman.log.wait_for(
        "reject: bare <LF> received after END-OF-MESSAGE from [203.0.113.40]:40000",
        Duration::from_secs(5),
    );
}

#[test]
fn a_dripped_command_is_cut_at_the_command_time_in_the_engine_and_after_the_replay() {
    let backend = FakeBackend::start(true);
    let doorman = engine_first(backend.address, "[engine]\ncommand_time = \"2s\"\n");
    let drip = |s: &mut dyn Wire| {
        let started = Instant::now();
        let mut answer = String::new();
        for byte in b"NOOP and some more words to drip\r\n" {
            if s.write_all(&[*byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(400));
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        answer.push_str(&reply(s));
        (answer, started.elapsed())
    };
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
    let mut s = greet(&doorman, "203.0.113.42", false);
    assert_eq!(
        ask(&mut *s, "MAIL FROM:<a@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        ask(&mut *s, "RCPT TO:<b@doorman.test>\r\n"),
        "250 2.0.0 ok\r\n"
    );
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
    assert_eq!(
        ask(&mut s, "XFORWARD ADDR=10.9.9.9\r\n"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    assert_eq!(ask(&mut s, "MAIL FROM:<>\r\n"), "250 2.1.0 Ok\r\n");
    assert_eq!(
        ask(&mut s, "RCPT TO:<b@doorman.test>\r\n"),
        "250 2.0.0 ok\r\n"
    );
    // After the replay: a NUL or a bare CR in a command.
    assert_eq!(
        ask(&mut s, "NOOP \0x\r\n"),
        "500 5.5.2 Error: bad syntax\r\n"
    );
    assert_eq!(
        ask(&mut s, "NOOP a\rRCPT TO:<x@y>\r\n"),
        "500 5.5.2 Error: bad syntax\r\n"
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
        "XCLIENT", "XFORWARD", "XSHADOW", "\0x", "\x0bADDR", "\x0cTO", "<\u{FFFD}@", "over@", "BDAT",
        "xxxxxxxx",
    ] {
        assert!(!got.contains(never), "{never:?} reached the backend");
    }

    // A body that never ends, then silence: cut at the command time.
    let mut s = greet(&doorman, "203.0.113.44", false);
    assert_eq!(
        ask(&mut *s, "MAIL FROM:<a@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        ask(&mut *s, "RCPT TO:<b@doorman.test>\r\n"),
        "250 2.0.0 ok\r\n"
    );
    assert_eq!(ask(&mut *s, "DATA\r\n"), "354 go ahead\r\n");
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
    assert_eq!(
        ask(&mut s, "XCLIENT ADDR=127.0.0.9\r\n"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    assert_eq!(
        ask(&mut s, "XFORWARD ADDR=127.0.0.9\r\n"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    assert_eq!(
        ask(&mut s, "MAIL FROM:<a@client.test>\r\n"),
        "250 2.1.0 Ok\r\n"
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

/// A backend that announces AUTH, accepts `AUTH PLAIN good` and the LOGIN
/// exchange, and refuses anything else.
fn auth_backend() -> SocketAddr {
    scripted_backend(
        |_| Some(b"220 backend.test ESMTP\r\n"),
        |line| match line.trim_end() {
            l if l.starts_with("EHLO") => {
                b"250-backend.test\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n"
            }
            "AUTH PLAIN good" => b"235 2.7.0 Authentication successful\r\n",
            "AUTH LOGIN" => b"334 VXNlcm5hbWU6\r\n",
            "dXNlcg==" => b"334 UGFzc3dvcmQ6\r\n",
            "cGFzcw==" => b"235 2.7.0 Authentication successful\r\n",
            l if l.starts_with("AUTH") => b"535 5.7.8 Error: authentication failed\r\n",
            l if l.starts_with("QUIT") => b"221 2.0.0 Bye\r\n",
            _ => b"250 2.0.0 Ok\r\n",
        },
    )
}

#[test]
fn auth_passes_the_gates_only_when_the_backend_accepts_it() {
    let Some(dns) = Rbldnsd::start() else { return };
    let doorman = greylisting(auth_backend(), dns.address, "");
    // Wrong credentials: the gates still judge, and nothing is remembered.
    let mut s = greet(&doorman, "203.0.113.22", false);
    assert_eq!(
        ask(&mut *s, "AUTH PLAIN bad\r\n"),
        "535 5.7.8 Error: authentication failed\r\n"
    );
    assert_eq!(
        ask(&mut *s, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.0.0 Ok\r\n"
    );
    assert_eq!(
        ask(&mut *s, "RCPT TO:<bob@doorman.test>\r\n"),
        greylisted("bob@doorman.test")
    );
    assert_eq!(ask(&mut *s, "QUIT\r\n"), "221 2.0.0 Bye\r\n");
    // The next visit meets the engine again: no pass was stored.
    let mut s = greet(&doorman, "203.0.113.22", false);
    // The LOGIN exchange, line by line; 235 lets the RCPTs pass.
    assert_eq!(ask(&mut *s, "AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(ask(&mut *s, "dXNlcg==\r\n"), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        ask(&mut *s, "cGFzcw==\r\n"),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(
        ask(&mut *s, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.0.0 Ok\r\n"
    );
    assert_eq!(
        ask(&mut *s, "RCPT TO:<carol@doorman.test>\r\n"),
        "250 2.0.0 Ok\r\n"
    );
    assert_eq!(
        ask(&mut *s, "XCLIENT ADDR=10.9.9.9\r\n"),
        "550 5.7.0 Error: insufficient authorization\r\n"
    );
    doorman.log.wait_for(
        "AUTH from [203.0.113.22]:40000: accepted by backend",
        Duration::from_secs(5),
    );
    assert!(doorman.log.matching("PASS NEW [203.0.113.22]").is_empty());
}

#[test]
fn a_late_proxy_header_after_the_replay_ends_the_session() {
    let backend = FakeBackend::start(true);
    let doorman = engine_first(backend.address, "");
    let mut s = greet(&doorman, "203.0.113.46", false);
    assert_eq!(
        ask(&mut *s, "MAIL FROM:<a@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        ask(&mut *s, "RCPT TO:<b@doorman.test>\r\n"),
        "250 2.0.0 ok\r\n"
    );
    assert_eq!(ask(&mut *s, "NOOP\r\n"), "250 2.0.0 ok\r\n");
    // Alone in its own write, after the buffer was empty.
    assert_eq!(
        ask(&mut *s, "PROXY TCP4 6.6.6.6 127.0.0.1 1 25\r\n"),
        "421 4.7.0 PROXY not allowed from 203.0.113.46\r\n"
    );
    let got = String::from_utf8_lossy(&backend.wait_closed(0)).into_owned();
    assert!(!got.contains("6.6.6.6"), "{got}");
}
