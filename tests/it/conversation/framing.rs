//! The end of DATA is `<CR><LF>.<CR><LF>` and nothing else, against a
//! real Postfix (CVE-2023-51764), and `bare_newline = "reject"`.

use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// The smtpsmug tool's end-of-DATA variants (CVE-2023-51764).
const SMUGGLING: [&str; 6] = [
    "\n.\n",
    "\n.\r\n",
    "\r\n.\r",
    "\r.\r\n",
    "\r.\r",
    "\r\n\0.\r\n",
];

/// Each smuggling variant, then a second transaction inside the body:
/// Postfix queues one message per session and never sees the smuggled
/// recipient.
fn no_smuggling(tls: bool) {
    let Some(postfix) = postfix() else { return };
    let certs = tempfile::tempdir().unwrap();
    let section = tls_config(certs.path(), tls);
    let doorman = engine_first(postfix.address(), &section);
    for (n, ending) in SMUGGLING.iter().enumerate() {
        let mut s = greet(&doorman, &format!("203.0.113.{}", 30 + n), tls);
        let s = &mut *s;
        steps(
            s,
            &[
                (
                    "MAIL FROM:<alice@sender.test>\r\n",
                    "250 2.1.0 Ok\r\n".to_string(),
                ),
                (
                    "RCPT TO:<bob@doorman.test>\r\n",
                    "250 2.1.5 Ok\r\n".to_string(),
                ),
            ],
        );
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
    steps(
        s,
        &[
            (
                "MAIL FROM:<alice@sender.test>\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<bob@doorman.test>\r\n",
                "250 2.0.0 ok\r\n".to_string(),
            ),
            ("DATA\r\n", "354 go ahead\r\n".to_string()),
        ],
    );
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
