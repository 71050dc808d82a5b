//! Relay mode (`send_proxy = "received"`): backends that can be told
//! nothing learn the client from doorman's `Received:` header. The
//! message reaches them byte for byte under that header; loops and
//! oversized headers never reach them; the client's end of DATA gets the
//! backend's own reply, and a backend lost or too slow gets it `451 4.3.0`,
//! never a 250 and never a bare close.

mod backend;
mod faults;
mod inside_tls;
mod postfix;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use backend::*;

use crate::conversation::ask;
use crate::operations::{get, sample};
use crate::support::*;

/// What the test backend announces: doorman passes on what relay mode
/// can keep, and never AUTH, CHUNKING or PIPELINING.
const KEYWORDS: &[&str] = &[
    "PIPELINING",
    "SIZE 100000",
    "AUTH PLAIN LOGIN",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "SMTPUTF8",
    "CHUNKING",
];

/// doorman in relay mode in front of `backend`, no greet wait, with an
/// admin listener and `extra` sections.
fn relaying(backend: SocketAddr, extra: &str) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[admin]\naddress = \"127.0.0.1:0\"\n{extra}"
    );
    Doorman::start(
        &config_with(backend, "received", "", "5s", &sections),
        "127.0.0.1\n",
    )
}

/// A client at `address` that has greeted doorman's engine with EHLO;
/// returns it and the EHLO reply.
fn greeted(doorman: &Doorman, address: &str) -> (TcpStream, String) {
    let mut stream = connect_as(doorman, address);
    assert_eq!(whole_reply(&mut stream), "220 mx.doorman.test ESMTP\r\n");
    let ehlo = ask(&mut stream, "EHLO client.test\r\n");
    (stream, ehlo)
}

/// MAIL and RCPTs (each checked against `rcpt_replies`), DATA and
/// `message` (which ends with its `.` line); returns the reply to the end.
fn transaction(stream: &mut TcpStream, rcpts: &[(&str, &str)], message: &[u8]) -> String {
    assert_eq!(
        ask(stream, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    for (rcpt, expected) in rcpts {
        assert_eq!(ask(stream, &format!("RCPT TO:<{rcpt}>\r\n")), *expected);
    }
    assert_eq!(
        ask(stream, "DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    stream.write_all(message).unwrap();
    whole_reply(stream)
}

const OK: &str = "250 2.1.5 Ok\r\n";

/// The admin listener's address.
fn admin(doorman: &Doorman) -> SocketAddr {
    parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(5)),
    )
}

#[test]
fn a_message_reaches_the_backend_under_doormans_received_header() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let doorman = relaying(backend.address, "");
    let (mut stream, ehlo) = greeted(&doorman, "192.0.2.7");
    assert_eq!(
        ehlo,
        "250-mx.doorman.test\r\n250-SIZE 100000\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
        "what relay mode can keep of the backend's keywords"
    );
    let body = b"Subject: hello\r\nFrom: alice@sender.test\r\n\r\nline one\r\n..dotted\r\n.\r\n";
    assert_eq!(
        transaction(
            &mut stream,
            &[
                ("bob@doorman.test", OK),
                (
                    "unknown@doorman.test",
                    "550 5.1.1 <unknown@doorman.test>: Recipient address rejected: User unknown\r\n"
                )
            ],
            body
        ),
        QUEUED,
        "the backend's own reply, with its queue id"
    );
    let session = backend.wait_for(0, b"\r\n.\r\n");
    let text = String::from_utf8_lossy(&session);
    assert!(
        text.starts_with(
            "EHLO mx.doorman.test\r\nMAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@doorman.test>\r\n\
             RCPT TO:<unknown@doorman.test>\r\nDATA\r\n\
             Received: from client.test (unknown [192.0.2.7])\r\n\
             \tby mx.doorman.test (doorman) with ESMTP id "
        ),
        "{text}"
    );
    let message = message_of(&session);
    assert!(message.ends_with(body), "the body byte for byte:\n{text}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&message[..message.len() - 3])
        .expect("a message");
    let received = parsed.received().expect("doorman's Received header");
    assert_eq!(received.from_ip, Some([192, 0, 2, 7].into()));
    assert_eq!(
        received.from.as_ref().map(ToString::to_string).as_deref(),
        Some("client.test")
    );
    assert_eq!(
        received.by.as_ref().map(ToString::to_string).as_deref(),
        Some("mx.doorman.test")
    );
    assert_eq!(received.with, Some(mail_parser::Protocol::ESMTP));
    assert_eq!(received.for_.as_deref(), Some("bob@doorman.test"));
    assert_eq!(parsed.subject(), Some("hello"));
    doorman.log.wait_for(
        "proxy-accept: END-OF-MESSAGE: 250 2.0.0 Ok: queued as 4XQ7Z1; from=<alice@sender.test> to=<bob@doorman.test> proto=ESMTP helo=<client.test> client=[192.0.2.7]:40000",
        Duration::from_secs(5),
    );

    // A second transaction with two recipients: no `for` clause.
    let second = b"Subject: two\r\n\r\nagain\r\n.\r\n";
    assert_eq!(
        transaction(
            &mut stream,
            &[("carol@doorman.test", OK), ("dave@doorman.test", OK)],
            second
        ),
        QUEUED
    );
    let session = backend.wait_for(0, b"again\r\n.\r\n");
    let last = &session[find(&session, b"Subject: hello").unwrap()..];
    let second_message = message_of(&last[find(last, b"MAIL FROM").unwrap()..]);
    let text = String::from_utf8_lossy(&second_message);
    assert!(text.starts_with("Received: from client.test (unknown [192.0.2.7])\r\n\tby mx.doorman.test (doorman) with ESMTP id "), "{text}");
    assert!(!text.contains("for <"), "{text}");
    assert_eq!(ask(&mut stream, "QUIT\r\n"), "221 2.0.0 Bye\r\n");

    let (_, metrics) = get(admin(&doorman), "/metrics");
    assert_eq!(
        sample(
            &metrics,
            "doorman_relay_messages_total{result=\"accepted\"}"
        ),
        Some(2.0)
    );
    let bytes = sample(&metrics, "doorman_relay_bytes_total").unwrap_or_default();
    assert!(bytes >= (body.len() + second.len()) as f64, "{metrics}");
}

#[test]
fn loops_and_oversized_headers_never_reach_the_backend() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let doorman = relaying(backend.address, "[relay]\nmax_hops = 50\n");
    let (mut stream, _) = greeted(&doorman, "192.0.2.8");
    let hops = |count: usize| -> String {
        (0..count)
            .map(|n| format!("Received: from h{n} ([192.0.2.{}])\r\n\tby relay{n}.test; Mon, 7 Dec 2026 02:20:00 +0000\r\n", n % 200))
            .collect()
    };
    let looped = format!("{}Subject: loop\r\n\r\nbody\r\n.\r\n", hops(51));
    let bob = [("bob@doorman.test", OK)];
    assert_eq!(
        transaction(&mut stream, &bob, looped.as_bytes()),
        "554 5.4.0 Error: too many hops\r\n"
    );
    doorman.log.wait_for(
        "NOQUEUE: reject: END-OF-MESSAGE from [192.0.2.8]:40000: 554 5.4.0 Error: too many hops; from=<alice@sender.test> to=<bob@doorman.test> proto=ESMTP helo=<client.test>",
        Duration::from_secs(5),
    );
    // A header block of 200 KiB.
    let big = format!(
        "{}Subject: big\r\n\r\nbody\r\n.\r\n",
        "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
            .repeat(2900)
    );
    assert_eq!(
        transaction(&mut stream, &bob, big.as_bytes()),
        "552 5.3.4 Error: message header size exceeds limit\r\n"
    );
    // Neither reached the backend: it saw no DATA, and RSET after each.
    let session = backend.wait_for(
        0,
        b"RSET\r\nMAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@doorman.test>\r\nRSET\r\n",
    );
    assert_eq!(find(&session, b"DATA"), None);

    // 50 hops and a 10,000-byte header line without a fold pass, byte for
    // byte.
    let fine = format!(
        "{}X-Long: {}\r\nSubject: fine\r\n\r\nbody\r\n.\r\n",
        hops(50),
        "b".repeat(10_000)
    );
    assert_eq!(transaction(&mut stream, &bob, fine.as_bytes()), QUEUED);
    let session = backend.wait_for(0, b"Subject: fine\r\n\r\nbody\r\n.\r\n");
    let message = message_of(&session);
    assert!(message.ends_with(fine.as_bytes()));
    assert!(message.starts_with(b"Received: from client.test (unknown [192.0.2.8])\r\n"));
    let (_, metrics) = get(admin(&doorman), "/metrics");
    assert_eq!(
        sample(&metrics, "doorman_relay_messages_total{result=\"refused\"}"),
        Some(2.0)
    );
}

#[test]
fn a_hostile_helo_cannot_forge_the_trace_and_a_new_ehlo_resets_the_backend() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let doorman = relaying(backend.address, "");
    let mut stream = connect_as(&doorman, "192.0.2.15");
    assert_eq!(whole_reply(&mut stream), "220 mx.doorman.test ESMTP\r\n");
    let forged = "a.b (unknown [10.1.1.1])\tby mx.internal.test with ESMTP;";
    assert!(ask(&mut stream, &format!("EHLO {forged}\r\n")).starts_with("250-"));
    let message = b"Subject: forged\r\n\r\nbody\r\n.\r\n";
    assert_eq!(
        transaction(&mut stream, &[("bob@doorman.test", OK)], message),
        QUEUED
    );
    let session = backend.wait_for(0, b"\r\n.\r\n");
    let first = message_of(&session);
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.starts_with("Received: from a.b??unknown?[10.1.1.1]??by?mx.internal.test?with?ESMTP? (unknown [192.0.2.15])\r\n"),
        "{text}"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(&first[..first.len() - 3])
        .expect("a message");
    assert_eq!(
        parsed.received().and_then(|r| r.from_ip),
        Some([192, 0, 2, 15].into()),
        "{text}"
    );
    // A new EHLO mid-session: doorman answers it (without STARTTLS or
    // AUTH), the backend gets RSET, and the next trace names the new HELO.
    let ehlo = ask(&mut stream, "EHLO second.test\r\n");
    assert!(ehlo.starts_with("250-mx.doorman.test\r\n"), "{ehlo}");
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(
        ask(&mut stream, "AUTH PLAIN AGFAYg==\r\n"),
        "503 5.5.1 Error: authentication not enabled\r\n"
    );
    let again = b"Subject: again\r\n\r\nbody\r\n.\r\n";
    assert_eq!(
        transaction(&mut stream, &[("bob@doorman.test", OK)], again),
        QUEUED
    );
    let session = backend.wait_for(0, b"Subject: again");
    assert!(find(
        &session,
        b"\r\n.\r\nRSET\r\nMAIL FROM:<alice@sender.test>\r\n"
    )
    .is_some());
    let later = &session[find(&session, b"RSET\r\n").unwrap()..];
    let second =
        String::from_utf8_lossy(&later[find(later, b"DATA\r\n").unwrap() + 6..]).into_owned();
    assert!(
        second.starts_with("Received: from second.test (unknown [192.0.2.15])\r\n"),
        "{second}"
    );
}

#[test]
fn a_message_of_headers_only_and_a_backend_that_refuses_data() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let doorman = relaying(backend.address, "");
    let (mut stream, _) = greeted(&doorman, "192.0.2.16");
    let headers_only = b"Subject: only headers\r\n.\r\n";
    assert_eq!(
        transaction(&mut stream, &[("bob@doorman.test", OK)], headers_only),
        QUEUED
    );
    let session = backend.wait_for(0, b"\r\n.\r\n");
    assert!(message_of(&session).ends_with(b"\r\nSubject: only headers\r\n.\r\n"));
    // No valid recipient: doorman answers DATA itself, as smtpd does.
    assert_eq!(
        ask(&mut stream, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        ask(&mut stream, "RCPT TO:<unknown@doorman.test>\r\n"),
        "550 5.1.1 <unknown@doorman.test>: Recipient address rejected: User unknown\r\n"
    );
    assert_eq!(
        ask(&mut stream, "DATA\r\n"),
        "554 5.5.1 Error: no valid recipients\r\n"
    );
}
