//! The built-in engine's tests: postscreen's replies, STARTTLS, limits.

use super::*;

const REPLY: &str = "550 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.test\r\n";

fn line(text: &str) -> Line {
    Line {
        text: text.as_bytes().to_vec(),
        bare_newline: false,
    }
}

#[test]
fn dialogue() {
    let mut engine = Engine::new("mx.test", RcptPolicy::Refuse(REPLY.into()), 20, None);
    assert_eq!(engine.after(), "CONNECT");
    assert_eq!(
        engine
            .command(&line("EHLO bad.example"))
            .reply
            .lines()
            .count(),
        9
    );
    assert_eq!(
        engine.command(&line("EHLO bad.example")).reply,
        "250-mx.test\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        "postscreen's list"
    );
    assert!(!engine
        .command(&line("EHLO bad.example"))
        .reply
        .contains("PIPELINING"));
    assert_eq!(
        engine.command(&line("RCPT TO:<a@b>")).reply,
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    assert_eq!(
        engine.command(&line("MAIL FROM:<s@x> SIZE=5")).reply,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        engine.command(&line("MAIL FROM:<s@x>")).reply,
        "503 5.5.1 Error: nested MAIL command\r\n"
    );
    let step = engine.command(&line("RCPT TO:<good@y>"));
    assert_eq!(step.reply, REPLY);
    assert_eq!(
        step.event,
        Some(EngineEvent::Refused(RefusedRcpt {
            reply: REPLY.trim_end().into(),
            from: "s@x".into(),
            to: "good@y".into(),
            proto: Proto::Esmtp.as_str(),
            helo: "bad.example".into(),
        }))
    );
    assert_eq!(
        engine.command(&line("XCLIENT ADDR=1.2.3.4")).reply,
        reply::NOT_RECOGNIZED
    );
    assert_eq!(
        engine.command(&line("AUTH PLAIN x")).reply,
        reply::NOT_RECOGNIZED
    );
    assert_eq!(
        engine
            .command(&line("PROXY TCP4 1.2.3.4 5.6.7.8 1 2"))
            .reply,
        reply::NOT_RECOGNIZED
    );
    let data = engine.command(&line("DATA"));
    assert_eq!(data.reply, "554 5.5.1 Error: no valid recipients\r\n");
    assert!(data.close);
    assert_eq!(data.event, Some(EngineEvent::NoValidRcpt("DATA")));
}

#[test]
fn pass_policy_reports_the_transaction_and_backend_keywords() {
    let keywords = vec![
        "PIPELINING".to_string(),
        "SIZE 10240000".to_string(),
        "STARTTLS".to_string(),
        "XCLIENT NAME ADDR".to_string(),
        "8BITMIME".to_string(),
    ];
    let mut engine = Engine::new("mx.test", RcptPolicy::Pass, 20, Some(keywords));
    assert_eq!(
        engine.command(&line("EHLO client.test")).reply,
        "250-mx.test\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
    );
    engine.command(&line("MAIL FROM:<a@b> SIZE=100"));
    let step = engine.command(&line("RCPT TO:<c@d> NOTIFY=NEVER"));
    assert_eq!(step.reply, "");
    match step.event {
        Some(EngineEvent::Passed(transaction)) => {
            assert_eq!(
                transaction.helo_line.as_deref(),
                Some(&b"EHLO client.test\r\n"[..])
            );
            assert_eq!(transaction.mail_line, b"MAIL FROM:<a@b> SIZE=100\r\n");
            assert_eq!(transaction.rcpt_line, b"RCPT TO:<c@d> NOTIFY=NEVER\r\n");
        }
        other => panic!("{other:?}"),
    }
    let step = engine.command(&line("STARTTLS"));
    assert_eq!(
        step.event,
        Some(EngineEvent::HandOffAt(b"STARTTLS\r\n".to_vec()))
    );
    engine.refuse_with("550 5.5.1 Protocol error\r\n".into());
    assert_eq!(
        engine.command(&line("RCPT TO:<e@f>")).reply,
        "550 5.5.1 Protocol error\r\n"
    );
}

#[test]
fn gates_are_asked_about_helo_mail_and_rcpt_in_sequence() {
    let mut engine = Engine::new("mx.test", RcptPolicy::Pass, 20, None);
    assert_eq!(engine.question(&line("RCPT TO:<a@b>")), None, "no MAIL yet");
    assert_eq!(
        engine.question(&line("EHLO client.test extra")),
        Some((GateStage::Helo, "client.test".into()))
    );
    engine.command(&line("EHLO client.test"));
    assert_eq!(
        engine.question(&line("MAIL FROM:<s@x> SIZE=5")),
        Some((GateStage::Mail, "s@x".into()))
    );
    engine.command(&line("MAIL FROM:<s@x>"));
    assert_eq!(engine.envelope().sender.as_deref(), Some("s@x"));
    assert_eq!(
        engine.question(&line("RCPT TO:<trap@y>")),
        Some((GateStage::Rcpt, "trap@y".into()))
    );
    assert!(engine.envelope().esmtp);
    let step = engine.refuse(&line("RCPT TO:<trap@y>"), "550 5.7.1 trap\r\n".into());
    assert_eq!(step.reply, "550 5.7.1 trap\r\n");
    assert_eq!(step.event, None, "the gate logs its refusal");
    assert_eq!(engine.after(), "RCPT");
    assert_eq!(
        engine.question(&line("RCPT TO:<good@y>")),
        Some((GateStage::Rcpt, "good@y".into())),
        "still in the transaction"
    );
    engine.refuse_with("550 5.5.1 Protocol error\r\n".into());
    assert_eq!(
        engine.question(&line("RCPT TO:<good@y>")),
        None,
        "a client that failed a test meets no gate"
    );
}

#[test]
fn starttls_of_the_engine_itself() {
    let mut engine = Engine::new("mx.test", RcptPolicy::Pass, 20, None);
    engine.offer_starttls();
    assert_eq!(
        engine.command(&line("EHLO client.test")).reply,
        "250-mx.test\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        "where postscreen lists it"
    );
    engine.command(&line("MAIL FROM:<a@b>"));
    assert_eq!(
        engine.command(&line("STARTTLS now")).reply,
        "501 5.5.4 Syntax: STARTTLS\r\n"
    );
    let step = engine.command(&line("STARTTLS"));
    assert_eq!(step.reply, "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(step.event, Some(EngineEvent::StartTls));
    engine.tls_started();
    assert_eq!(engine.starttls(), Starttls::Active);
    assert_eq!(
        engine.command(&line("RCPT TO:<c@d>")).reply,
        "503 5.5.1 Error: need MAIL command\r\n",
        "the transaction was forgotten"
    );
    assert_eq!(engine.envelope().helo, None);
    assert!(!engine
        .command(&line("EHLO client.test"))
        .reply
        .contains("STARTTLS"));
    assert_eq!(
        engine.command(&line("STARTTLS")).reply,
        "554 5.5.1 Error: TLS already active\r\n"
    );

    // The backend's keywords: its STARTTLS gives way to the engine's.
    let keywords = vec!["SIZE 1000".to_string(), "ENHANCEDSTATUSCODES".to_string()];
    let mut engine = Engine::new("mx.test", RcptPolicy::Pass, 20, Some(keywords));
    engine.offer_starttls();
    assert_eq!(
        engine.command(&line("EHLO client.test")).reply,
        "250-mx.test\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n"
    );
}

#[test]
fn limits() {
    let mut engine = Engine::new("mx.test", RcptPolicy::Refuse(REPLY.into()), 2, None);
    assert!(!engine.command(&line("NOOP")).close);
    assert!(!engine.command(&line("HELO x")).close);
    let third = engine.command(&line("NOOP"));
    assert_eq!(
        third.reply,
        "421 mx.test Service unavailable - try again later\r\n"
    );
    assert!(third.close);
    assert_eq!(third.event, Some(EngineEvent::Limit(Limit::Count)));
    assert_eq!(engine.after(), "HELO", "the last command before the limit");
    // The command that gets the 421 is never put to the gates (no gate may
    // make a record for it).
    let mut gated = Engine::new("mx.test", RcptPolicy::Pass, 3, None);
    gated.command(&line("HELO x"));
    gated.command(&line("MAIL FROM:<s@x>"));
    assert!(gated.question(&line("RCPT TO:<a@y>")).is_some());
    gated.command(&line("RCPT TO:<a@y>"));
    assert_eq!(
        gated.question(&line("RCPT TO:<b@y>")),
        None,
        "the limit is spent"
    );
    let mut quitter = Engine::new("mx.test", RcptPolicy::Refuse(REPLY.into()), 1, None);
    quitter.command(&line("NOOP"));
    assert_eq!(quitter.command(&line("QUIT")).reply, "221 2.0.0 Bye\r\n");
    assert_eq!(
        engine.timed_out().reply,
        "421 4.4.2 mx.test Error: timeout exceeded\r\n"
    );
}

#[test]
fn a_declared_size_past_the_backends_limit_is_refused_at_mail() {
    let keywords = vec!["SIZE 1000".to_string(), "8BITMIME".to_string()];
    let mut engine = Engine::new("mx.test", RcptPolicy::Pass, 20, Some(keywords));
    engine.command(&line("EHLO client.example"));
    assert_eq!(
        engine.command(&line("MAIL FROM:<s@x> size=1001")).reply,
        "552 5.3.4 Message size exceeds fixed limit\r\n"
    );
    assert_eq!(
        engine
            .command(&line("MAIL FROM:<s@x> BODY=8BITMIME SIZE=1000"))
            .reply,
        "250 2.1.0 Ok\r\n"
    );
}
