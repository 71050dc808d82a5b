//! The policy service's connections: one closed after each answer, the second try, one instance per transaction.

use super::*;

#[test]
fn a_service_that_closes_after_each_answer_costs_no_client_the_default_action() {
    let recorder = Recorder::start_closing();
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, &recorder.address, "all");
    // The first session opens the connection; the later ones take the
    // kept one, find it closed, and try again on a new one (try_limit 2).
    for n in 0..3 {
        let mut client = connect_as(&doorman, "203.0.113.55");
        assert_eq!(read_line(&mut client), BANNER, "session {n}");
        helo_and_mail(&mut client, "s@client.test");
        assert_eq!(
            rcpt(&mut client, "dunno"),
            "250 2.0.0 ok\r\n",
            "session {n}"
        );
        say(&mut client, "QUIT\r\n");
        let mut rest = String::new();
        let _ = client.read_to_string(&mut rest);
    }
    assert_eq!(recorder.requests.lock().unwrap().len(), 3);
    let problems = doorman.log.matching("problem talking to server");
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn without_a_second_try_a_closed_connection_gets_the_default_action() {
    let recorder = Recorder::start_closing();
    let backend = FakeBackend::start(true);
    let doorman = start_with(&backend, &recorder.address, "all", "try_limit = 1\n");
    let mut client = connect_as(&doorman, "203.0.113.56");
    assert_eq!(read_line(&mut client), BANNER);
    helo_and_mail(&mut client, "s@client.test");
    assert_eq!(rcpt(&mut client, "dunno"), "250 2.0.0 ok\r\n");
    // The service closed the kept connection after its answer.
    assert_eq!(
        rcpt(&mut client, "again"),
        refused("451 4.3.5", "again", "Server configuration problem")
    );
    doorman.log.wait_for(
        &format!("warning: problem talking to server {}: ", recorder.address),
        Duration::from_secs(5),
    );
}

#[test]
fn every_rcpt_of_a_transaction_has_its_instance() {
    let recorder = Recorder::start();
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, &recorder.address, "all");
    let mut client = connect_as(&doorman, "203.0.113.57");
    assert_eq!(read_line(&mut client), BANNER);
    helo_and_mail(&mut client, "s@client.test");
    // In the engine, then after the replay, through the gated relay.
    assert_eq!(
        rcpt(&mut client, "reject"),
        refused("554 5.7.1", "reject", "Access denied")
    );
    assert_eq!(rcpt(&mut client, "dunno"), "250 2.0.0 ok\r\n");
    assert_eq!(rcpt(&mut client, "other"), "250 2.0.0 ok\r\n");
    say(&mut client, "RSET\r\n");
    assert!(read_line(&mut client).starts_with("250"));
    say(&mut client, "MAIL FROM:<t@client.test>\r\n");
    assert!(read_line(&mut client).starts_with("250"));
    assert_eq!(rcpt(&mut client, "next"), "250 2.0.0 ok\r\n");
    let first = recorder.instance(0);
    assert!(first.starts_with("mx.doorman.test."), "{first}");
    assert_eq!(recorder.instance(1), first);
    assert_eq!(recorder.instance(2), first);
    let second = recorder.instance(3);
    assert!(second.starts_with("mx.doorman.test."), "{second}");
    assert_ne!(second, first, "a new transaction, a new instance");
}
