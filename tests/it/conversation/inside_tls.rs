//! The hostile input of `hostile.rs`, inside doorman's TLS: the same
//! lines get the same refusals, a dripped command is cut, a late PROXY
//! line ends the session, AUTH is relayed and judged, and a lost backend
//! gets Postfix's 451.

use std::time::Duration;

use super::auth_and_gates::auth_backend;
use super::hostile::{dies_at_end_of_message, drip, replayed};
use super::*;

/// doorman with every deep test on and `[tls]`, in front of `backend`.
fn tls_engine(backend: SocketAddr, dir: &Path, extra: &str) -> Doorman {
    engine_first(backend, &format!("{extra}{}", tls_config(dir, true)))
}

#[test]
fn hostile_lines_inside_tls_get_the_same_replies() {
    let backend = FakeBackend::start(true);
    let certs = tempfile::tempdir().unwrap();
    let doorman = tls_engine(
        backend.address,
        certs.path(),
        "[engine]\ncommand_time = \"2s\"\n",
    );
    let mut s = replayed(&doorman, "203.0.113.100", true);
    let s = &mut *s;
    let bad = "500 5.5.2 Error: bad syntax\r\n".to_string();
    let denied = "550 5.7.0 Error: insufficient authorization\r\n".to_string();
    steps(
        s,
        &[
            ("XCLIENT ADDR=10.9.9.9\r\n", denied.clone()),
            ("XFORWARD ADDR=10.9.9.9\r\n", denied),
            ("XCLIENT\x0bADDR=10.9.9.9\r\n", bad.clone()),
            ("NOOP \0x\r\n", bad.clone()),
            ("NOOP a\rRCPT TO:<x@y>\r\n", bad.clone()),
            ("\r\n", bad),
            (
                "XSHADOW ADDR=1\r\n",
                "502 5.5.2 Error: command not recognized\r\n".to_string(),
            ),
            (
                "RCPT TO:<>\r\n",
                "501 5.1.3 Bad recipient address syntax\r\n".to_string(),
            ),
            (
                "BDAT 5 LAST\r\n",
                "502 5.5.1 Error: command not implemented\r\n".to_string(),
            ),
            (
                "STARTTLS\r\n",
                "554 5.5.1 Error: TLS already active\r\n".to_string(),
            ),
        ],
    );
    s.write_all(b"RCPT TO:<\xff@doorman.test>\r\n").unwrap();
    assert_eq!(reply(s), "500 5.5.2 Error: bad UTF-8 syntax\r\n");
    // A dripped command is cut at the command time (2 s), counted from the
    // wait's start: bytes until 1.8 s, and the cut comes at 2 s, where a
    // deadline per read would wait until 3.8 s. (The drip stops first so
    // that no byte races the close.)
    let (answer, took) = drip(s, Duration::from_millis(1800));
    assert_eq!(
        answer,
        "421 4.4.2 mx.doorman.test Error: timeout exceeded\r\n"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    let got = String::from_utf8_lossy(&backend.wait_closed(0)).into_owned();
    for never in [
        "XCLIENT",
        "XFORWARD",
        "XSHADOW",
        "\0x",
        "<\u{FFFD}@",
        "BDAT",
    ] {
        assert!(!got.contains(never), "{never:?} reached the backend");
    }

    // A line one byte over the limit, and a late PROXY line.
    let mut s = replayed(&doorman, "203.0.113.101", true);
    let long = format!("RCPT TO:<{}@doorman.test>\r\n", "x".repeat(2049 - 25));
    assert_eq!(
        ask(&mut *s, &long),
        "421 mx.doorman.test Service unavailable - try again later\r\n"
    );
    let mut s = replayed(&doorman, "203.0.113.102", true);
    assert_eq!(
        ask(&mut *s, "PROXY TCP4 6.6.6.6 127.0.0.1 1 25\r\n"),
        "421 4.7.0 PROXY not allowed from 203.0.113.102\r\n"
    );
}

#[test]
fn auth_inside_tls_is_relayed_and_a_refused_line_cancels_it() {
    let certs = tempfile::tempdir().unwrap();
    let doorman = tls_engine(auth_backend(), certs.path(), "");
    let mut s = greet(&doorman, "203.0.113.103", true);
    steps(
        &mut *s,
        &[
            ("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n".to_string()),
            (
                "dX\x0bNlcg==\r\n",
                "500 5.5.2 Error: bad syntax\r\n".to_string(),
            ),
            ("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n".to_string()),
            ("dXNlcg==\r\n", "334 UGFzc3dvcmQ6\r\n".to_string()),
            (
                "cGFzcw==\r\n",
                "235 2.7.0 Authentication successful\r\n".to_string(),
            ),
            (
                "XCLIENT ADDR=10.9.9.9\r\n",
                "550 5.7.0 Error: insufficient authorization\r\n".to_string(),
            ),
            ("QUIT\r\n", "221 2.0.0 Bye\r\n".to_string()),
        ],
    );
    // An AUTH line past the line limit.
    let mut s = greet(&doorman, "203.0.113.104", true);
    let auth = format!("AUTH PLAIN {}\r\n", "A".repeat(10_000));
    assert_eq!(
        ask(&mut *s, &auth),
        "421 mx.doorman.test Service unavailable - try again later\r\n"
    );
}

#[test]
fn a_backend_lost_inside_tls_gets_postfixs_451() {
    let certs = tempfile::tempdir().unwrap();
    let doorman = tls_engine(dies_at_end_of_message(), certs.path(), "");
    let mut s = replayed(&doorman, "203.0.113.105", true);
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
}
