//! Relay mode in front of a real Postfix that is told nothing (no PROXY,
//! no XCLIENT): the messages it queues carry doorman's `Received:` header
//! naming the real client, its HELO and its TLS, and their bodies arrive
//! byte for byte; its own size limit reaches the client as it words it.

use std::process::Command;

use super::*;
use crate::conversation::{greet, tls_config, Wire};
use crate::support::tls::postfix_with_tls_and;

/// main.cf lines: every message for doorman.test is held, so the test can
/// read it back with postcat.
const HOLDING: &str = "relay_domains = doorman.test\n\
smtpd_recipient_restrictions = check_recipient_access static:HOLD, permit_mynetworks, reject_unauth_destination\n\
message_size_limit = 60000\n";

/// The held message `queued` names (the reply to its end), as postcat
/// prints its header and body.
fn held_message(postfix: &Postfix, queued: &str) -> String {
    let id = queued
        .trim_end()
        .rsplit(' ')
        .next()
        .expect("a queue id")
        .to_string();
    stdout_of(
        Command::new("postcat")
            .arg("-c")
            .arg(postfix.dir.path().join("etc"))
            .args(["-h", "-b", "-q", &id]),
    )
}

/// `message` as Postfix stores it: LF line ends, dot-stuffing undone, the
/// end line gone.
fn as_stored(message: &str) -> String {
    message
        .trim_end_matches(".\r\n")
        .split("\r\n")
        .map(|line| line.strip_prefix('.').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends one message for bob; returns the reply to its end.
fn send(stream: &mut dyn Wire, message: &str) -> String {
    let mail = ask(stream, "MAIL FROM:<alice@sender.test>\r\n");
    assert_eq!(mail, "250 2.1.0 Ok\r\n");
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
fn a_postfix_told_nothing_queues_messages_that_name_the_client_its_helo_and_tls() {
    let Some(postfix) = Postfix::start_delivering(HOLDING) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let doorman = relaying(postfix.address(), &tls_config(dir.path(), true));
    let mut stream = greet(&doorman, "192.0.2.20", true);
    let message = "Subject: through doorman\r\nFrom: alice@sender.test\r\nDate: Mon, 7 Dec 2026 02:20:00 +0000\r\nMessage-ID: <t1@sender.test>\r\n\r\nfirst line\r\n..a dot line\r\n\tindented\r\n.\r\n";
    let queued = send(&mut *stream, message);
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
    doorman.log.wait_for(
        &format!("proxy-accept: END-OF-MESSAGE: {}; from=<alice@sender.test> to=<bob@doorman.test> proto=ESMTP helo=<client.test>", queued.trim_end()),
        Duration::from_secs(5),
    );
    let held = held_message(&postfix, &queued);
    let parsed = mail_parser::MessageParser::default()
        .parse(held.as_bytes())
        .expect("the held message");
    let trace: Vec<_> = parsed.received_all().collect();
    assert_eq!(trace.len(), 2, "{held}");
    // Postfix's own, on top: doorman is its client.
    assert_eq!(trace[0].from_ip, Some([127, 0, 0, 1].into()), "{held}");
    // doorman's: the real client, its HELO, its TLS.
    let ours = trace[1];
    assert_eq!(ours.from_ip, Some([192, 0, 2, 20].into()), "{held}");
    assert_eq!(
        ours.from.as_ref().map(ToString::to_string).as_deref(),
        Some("client.test")
    );
    assert_eq!(
        ours.by.as_ref().map(ToString::to_string).as_deref(),
        Some("mx.doorman.test")
    );
    assert_eq!(ours.with, Some(mail_parser::Protocol::ESMTPS), "{held}");
    assert_eq!(
        ours.tls_version,
        Some(mail_parser::TlsVersion::TLSv1_3),
        "{held}"
    );
    assert_eq!(ours.for_.as_deref(), Some("bob@doorman.test"));
    let body = &held[held
        .find("Subject: through doorman")
        .expect("the client's header")..];
    assert_eq!(body.trim_end(), as_stored(message).trim_end());

    // Postfix's own size limit, for a message that declared no size.
    let large = format!(
        "Subject: large\r\n\r\n{}.\r\n",
        "0123456789012345678901234567890123456789012345678901234567890123456789\r\n".repeat(1000)
    );
    assert_eq!(
        send(&mut *stream, &large),
        "552 5.3.4 Error: message file too big\r\n"
    );
    doorman.log.wait_for(
        "proxy-reject: END-OF-MESSAGE: 552 5.3.4 Error: message file too big; from=<alice@sender.test> to=<bob@doorman.test>",
        Duration::from_secs(5),
    );
}

#[test]
fn a_plain_client_reaches_a_starttls_backend_over_tls() {
    let Some((postfix, _certs)) = postfix_with_tls_and("may", HOLDING) else {
        return;
    };
    let sections = "tls = \"starttls\"\n[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n";
    let doorman = Doorman::start(
        &config_with(postfix.address(), "received", "", "5s", sections),
        "127.0.0.1\n",
    );
    let mut stream = greet(&doorman, "192.0.2.21", false);
    let message = "Subject: plain client\r\n\r\nbody\r\n.\r\n";
    let queued = send(&mut *stream, message);
    assert!(queued.starts_with("250 2.0.0 Ok: queued as "), "{queued}");
    let held = held_message(&postfix, &queued);
    let parsed = mail_parser::MessageParser::default()
        .parse(held.as_bytes())
        .expect("the held message");
    let trace: Vec<_> = parsed.received_all().collect();
    assert_eq!(trace.len(), 2, "{held}");
    assert_eq!(
        trace[0].with,
        Some(mail_parser::Protocol::ESMTPS),
        "doorman to Postfix in TLS: {held}"
    );
    assert_eq!(
        trace[1].with,
        Some(mail_parser::Protocol::ESMTP),
        "the client in plain text: {held}"
    );
    assert_eq!(trace[1].from_ip, Some([192, 0, 2, 21].into()));
}
