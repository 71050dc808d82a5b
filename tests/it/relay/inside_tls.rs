//! Relay mode's bad input inside doorman's TLS, as in plain text: loops
//! and oversized header blocks refused before the backend sees them, bare
//! newlines normalised, SMTPUTF8 and TLS named in the trace, no STARTTLS
//! offered again, and a body that stops cut at `command_time`.

use super::*;
use crate::conversation::{greet, tls_config, Wire};

/// MAIL (with `parameters`) and RCPT for bob, DATA, and `message`; the
/// reply to its end.
fn send(stream: &mut dyn Wire, parameters: &str, message: &str) -> String {
    let mail = format!("MAIL FROM:<alice@sender.test>{parameters}\r\n");
    assert_eq!(ask(stream, &mail), "250 2.1.0 Ok\r\n");
    assert_eq!(ask(stream, "RCPT TO:<bob@doorman.test>\r\n"), OK);
    assert_eq!(
        ask(stream, "DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    stream.write_all(message.as_bytes()).unwrap();
    stream.flush().unwrap();
    whole_reply(stream)
}

#[test]
fn hostile_messages_inside_tls_meet_the_same_rules() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[engine]\ncommand_time = \"3s\"\n{}",
        tls_config(dir.path(), true)
    );
    let doorman = relaying(backend.address, &extra);
    let mut stream = greet(&doorman, "192.0.2.30", true);
    let hops: String = (0..51)
        .map(|n| format!("Received: from h{n} ([192.0.2.{n}])\r\n\tby r{n}.test; Mon, 7 Dec 2026 02:20:00 +0000\r\n"))
        .collect();
    assert_eq!(
        send(
            &mut *stream,
            "",
            &format!("{hops}Subject: loop\r\n\r\nbody\r\n.\r\n")
        ),
        "554 5.4.0 Error: too many hops\r\n"
    );
    let filler =
        "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    assert_eq!(
        send(
            &mut *stream,
            "",
            &format!("{}\r\nbody\r\n.\r\n", filler.repeat(2900))
        ),
        "552 5.3.4 Error: message header size exceeds limit\r\n"
    );
    let message = "Subject: caf\u{e9}\r\n\r\nbare\nline\r\n.\r\n";
    assert_eq!(send(&mut *stream, " SMTPUTF8", message), QUEUED);
    let session = backend.wait_for(0, b"\r\n.\r\n");
    assert_eq!(
        find(&session, b"Subject: loop"),
        None,
        "the loop never reached it"
    );
    assert_eq!(
        find(&session, b"X-Filler"),
        None,
        "nor the oversized header"
    );
    let relayed = String::from_utf8_lossy(&message_of(&session)).into_owned();
    assert!(
        relayed.starts_with(
            "Received: from client.test (unknown [192.0.2.30])\r\n\t(using TLSv1.3 with cipher "
        ),
        "{relayed}"
    );
    assert!(relayed.contains(" with UTF8SMTPS id "), "{relayed}");
    assert!(
        relayed.ends_with("Subject: caf\u{e9}\r\n\r\nbare\r\nline\r\n.\r\n"),
        "{relayed}"
    );
    // A new EHLO inside TLS: no STARTTLS offered again.
    let ehlo = ask(&mut *stream, "EHLO again.test\r\n");
    assert!(
        ehlo.starts_with("250-mx.doorman.test\r\n") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    // A body that stops is cut at command_time.
    assert_eq!(
        ask(&mut *stream, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(ask(&mut *stream, "RCPT TO:<bob@doorman.test>\r\n"), OK);
    assert_eq!(
        ask(&mut *stream, "DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    stream
        .write_all(b"Subject: stops\r\n\r\nfirst\r\n")
        .unwrap();
    stream.flush().unwrap();
    assert_eq!(
        whole_reply(&mut *stream),
        "421 4.4.2 mx.doorman.test Error: timeout exceeded\r\n"
    );
}
