//! Every transaction after a replay meets the gates; AUTH lets them pass
//! only when the backend accepts it.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use super::*;

/// Every way a client past greylisting once tried to reach new recipients
/// ungated, against a real Postfix: each new recipient is greylisted, and
/// none reaches Postfix.
fn every_transaction_is_gated(tls: bool) {
    let Some(dns) = Rbldnsd::start() else { return };
    let Some(postfix) = postfix() else { return };
    let certs = tempfile::tempdir().unwrap();
    let section = tls_config(certs.path(), tls);
    let doorman = greylisting(postfix.address(), dns.address, &section);
    let mut s = past_greylisting(&doorman, "203.0.113.22", tls);
    let s = &mut *s;

    // A bare recipient in the same transaction.
    assert_eq!(
        ask(s, "RCPT TO:erin@doorman.test\r\n"),
        greylisted("erin@doorman.test")
    );
    // RSET and a sender without angle brackets, in any letter case.
    steps(
        s,
        &[
            ("RSET\r\n", "250 2.0.0 Ok\r\n".to_string()),
            (
                "mail from:mallory@evil.test\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            (
                "rcpt to:<dave@doorman.test>\r\n",
                greylisted("dave@doorman.test"),
            ),
        ],
    );
    // The gates see a bare sender as the one they passed.
    steps(
        s,
        &[
            ("RSET\r\n", "250 2.0.0 Ok\r\n".to_string()),
            (
                "MAIL FROM:alice@sender.test\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<bob@doorman.test>\r\n",
                "250 2.1.5 Ok\r\n".to_string(),
            ),
        ],
    );
    // A whole message, then a second transaction.
    assert!(ask(s, "DATA\r\n").starts_with("354 "));
    assert!(ask(s, "Subject: one\r\n\r\nhello\r\n.\r\n").starts_with("250 2.0.0 Ok: queued as"));
    steps(
        s,
        &[
            (
                "MAIL FROM:<alice@sender.test>\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<carol@doorman.test>\r\n",
                greylisted("carol@doorman.test"),
            ),
            ("RSET\r\n", "250 2.0.0 Ok\r\n".to_string()),
        ],
    );
    // BDAT LAST ends a transaction too.
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
    let chunk = "Subject: three\r\n\r\nchunked\r\n";
    let answer = ask(s, &format!("BDAT {} LAST\r\n{chunk}", chunk.len()));
    assert!(
        answer.starts_with("250 2.0.0 Ok: 27 bytes queued as"),
        "{answer}"
    );
    steps(
        s,
        &[
            (
                "MAIL FROM:<alice@sender.test>\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<hal@doorman.test>\r\n",
                greylisted("hal@doorman.test"),
            ),
        ],
    );
    // What cannot be parsed never reaches Postfix.
    steps(
        s,
        &[
            (
                "RCPT TO:<broken@doorman.test\r\n",
                "501 5.1.3 Bad recipient address syntax\r\n".to_string(),
            ),
            (
                "RCPT TO:<>\r\n",
                "501 5.1.3 Bad recipient address syntax\r\n".to_string(),
            ),
            ("RSET\r\n", "250 2.0.0 Ok\r\n".to_string()),
            (
                "MAIL FROM:<a@b\r\n",
                "501 5.1.7 Bad sender address syntax\r\n".to_string(),
            ),
        ],
    );
    // The client never speaks for doorman.
    steps(
        s,
        &[
            (
                "XCLIENT ADDR=10.9.9.9\r\n",
                "550 5.7.0 Error: insufficient authorization\r\n".to_string(),
            ),
            (
                "XFORWARD ADDR=10.9.9.9\r\n",
                "550 5.7.0 Error: insufficient authorization\r\n".to_string(),
            ),
        ],
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

/// A backend that announces AUTH, accepts `AUTH PLAIN good` and the LOGIN
/// exchange, and refuses anything else.
pub(super) fn auth_backend() -> SocketAddr {
    scripted_backend(
        |_| Some(b"220 backend.test ESMTP\r\n"),
        |line| match line.trim_end() {
            l if l.starts_with("EHLO") => {
                b"250-backend.test\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n"
            }
            "AUTH PLAIN good" => b"235 2.7.0 Authentication successful\r\n",
            "AUTH LOGIN" => b"334 VXNlcm5hbWU6\r\n",
            "AUTH GSSAPI" => b"334 \r\n",
            "" => b"535 5.7.8 Error: empty GSSAPI token\r\n",
            "*" => b"501 5.7.0 Authentication aborted\r\n",
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
    steps(
        &mut *s,
        &[
            (
                "AUTH PLAIN bad\r\n",
                "535 5.7.8 Error: authentication failed\r\n".to_string(),
            ),
            (
                "MAIL FROM:<alice@sender.test>\r\n",
                "250 2.0.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<bob@doorman.test>\r\n",
                greylisted("bob@doorman.test"),
            ),
            // An empty SASL response reaches the backend (RFC 4954).
            ("AUTH GSSAPI\r\n", "334 \r\n".to_string()),
            (
                "\r\n",
                "535 5.7.8 Error: empty GSSAPI token\r\n".to_string(),
            ),
            // A response doorman refuses cancels the exchange with `*`;
            // the client gets doorman's reply alone, and the next reply is
            // the backend's to the next command.
            ("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n".to_string()),
            (
                "dX\x0bNlcg==\r\n",
                "500 5.5.2 Error: bad syntax\r\n".to_string(),
            ),
            ("NOOP\r\n", "250 2.0.0 Ok\r\n".to_string()),
            ("QUIT\r\n", "221 2.0.0 Bye\r\n".to_string()),
        ],
    );
    // The next visit meets the engine again: no pass was stored.
    let mut s = greet(&doorman, "203.0.113.22", false);
    // The LOGIN exchange, line by line; 235 lets the RCPTs pass.
    steps(
        &mut *s,
        &[
            ("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n".to_string()),
            ("dXNlcg==\r\n", "334 UGFzc3dvcmQ6\r\n".to_string()),
            (
                "cGFzcw==\r\n",
                "235 2.7.0 Authentication successful\r\n".to_string(),
            ),
            (
                "MAIL FROM:<alice@sender.test>\r\n",
                "250 2.0.0 Ok\r\n".to_string(),
            ),
            (
                "RCPT TO:<carol@doorman.test>\r\n",
                "250 2.0.0 Ok\r\n".to_string(),
            ),
            (
                "XCLIENT ADDR=10.9.9.9\r\n",
                "550 5.7.0 Error: insufficient authorization\r\n".to_string(),
            ),
        ],
    );
    doorman.log.wait_for(
        "AUTH from [203.0.113.22]:40000: accepted by backend",
        Duration::from_secs(5),
    );
    assert!(doorman.log.matching("PASS NEW [203.0.113.22]").is_empty());
}

/// A client a connect gate permits skips every further test: in a cluster
/// balanced by recipient it talks to the engine up to its first RCPT, but
/// no engine gate judges it, then or after the replay. (The policy service
/// is dead, so every client it judges gets its default 451.)
#[test]
fn a_permitted_client_meets_no_engine_gate() {
    let backend = FakeBackend::start(true);
    let (_reserved, dead) = dead_address();
    let sections = format!(
        "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[access]\nfile = \"access\"\n\
[cluster.\"\"]\nbalance = \"recipient\"\n\
[policy]\naddress = \"{dead}\"\nclients = \"all\"\ntimeout = \"1s\"\n"
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"policy\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    let doorman = Doorman::start_with_files(
        &config,
        &[
            ("haproxy_hosts", "127.0.0.1\n"),
            ("access", "203.0.113.60 permit\n"),
        ],
    );
    let unavailable =
        "451 4.3.5 <b@doorman.test>: Recipient address rejected: Server configuration problem\r\n"
            .to_string();
    let mut other = greet(&doorman, "203.0.113.61", false);
    steps(
        &mut *other,
        &[
            (
                "MAIL FROM:<a@sender.test>\r\n",
                "250 2.1.0 Ok\r\n".to_string(),
            ),
            ("RCPT TO:<b@doorman.test>\r\n", unavailable),
        ],
    );
    let mut s = greet(&doorman, "203.0.113.60", false);
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
            (
                "RCPT TO:<c@doorman.test>\r\n",
                "250 2.0.0 ok\r\n".to_string(),
            ),
            ("QUIT\r\n", "221 2.0.0 bye\r\n".to_string()),
        ],
    );
}
