//! Greylisting beside the other tests: an ignored pregreet, a kept pregreet pass, a deep test's failure first.

use super::*;

#[test]
fn an_ignored_pregreet_does_not_spare_a_doubtful_client() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let sections = format!(
        "[greet]\nbanner = \"mx.doorman.test ESMTP\"\nwait = \"1s\"\naction = \"ignore\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nsites = [\"bl.test=127.0.0.2\"]\nthreshold = 5\ntimeout = \"2s\"\nnameservers = [\"{}\"]\n\
[greylist]\nthreshold = 1\ndelay = \"2s\"\n",
        dns.address
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"deep\", \"greylist\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let mut client = connect_as(&doorman, "203.0.113.22");
    say(&mut client, "HELO early.test\r\n");
    assert_eq!(read_line(&mut client), "220-mx.doorman.test ESMTP\r\n");
    assert_eq!(read_line(&mut client), "220 mx.doorman.test ESMTP\r\n");
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    say(
        &mut client,
        "MAIL FROM:<a@early.test>\r\nRCPT TO:<b@doorman.test>\r\n",
    );
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    assert_eq!(read_line(&mut client), greylisted("b@doorman.test"));
    assert_eq!(backend.count(), 0);
}

#[test]
fn a_greylisted_client_keeps_its_pregreet_pass_but_not_its_score() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let sections = format!(
        "[greet]\nwait = \"1s\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nsites = [\"bl.test=127.0.0.2\"]\nthreshold = 5\naction = \"enforce\"\ntimeout = \"2s\"\nnameservers = [\"{}\"]\n\
[greylist]\nthreshold = 1\ndelay = \"1h\"\nretry_window = \"2h\"\n",
        dns.address
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"deep\", \"greylist\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    // 203.0.113.7 is listed in bl.test (weight 1): doubtful.
    for visit in 0..2 {
        let started = std::time::Instant::now();
        let mut stream = connect_as(&doorman, "203.0.113.7");
        let mut first = read_line(&mut stream);
        if visit == 0 {
            assert_eq!(first, "220-mx.doorman.test ESMTP\r\n", "the teaser");
            first = read_line(&mut stream);
        }
        assert_eq!(first, BANNER, "visit {visit}");
        if visit > 0 {
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "no greet wait the second time: {:?}",
                started.elapsed()
            );
        }
        helo_and_mail(&mut stream, "s@client.test");
        say(&mut stream, "RCPT TO:<r@doorman.test>\r\n");
        assert_eq!(
            read_line(&mut stream),
            greylisted("r@doorman.test"),
            "still greylisted: its score was judged again (visit {visit})"
        );
        say(&mut stream, "QUIT\r\n");
        assert_eq!(read_to_close(&mut stream), "221 2.0.0 Bye\r\n");
    }
    assert_eq!(backend.count(), 0);
}

/// A doubtful client that fails an enforced deep test is refused with
/// postscreen's 550 on first contact, and meets no greylisting: no record
/// is made, so its next (clean) visit after the delay is greylisted anew.
#[test]
fn a_deep_test_failure_comes_before_greylisting_and_makes_no_record() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = start(
        &backend,
        dns.address,
        "store = \"memory\"\n[deep_tests]\npipelining = { enable = true }",
    );
    let mut stream = connect_as(&doorman, "203.0.113.22");
    assert_eq!(read_line(&mut stream), BANNER);
    say(&mut stream, "EHLO client.test\r\n");
    let ehlo = whole_reply(&mut stream);
    assert!(ehlo.starts_with("250"), "{ehlo}");
    // MAIL and RCPT in one write, without PIPELINING announced.
    say(
        &mut stream,
        "MAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@doorman.test>\r\n",
    );
    assert_eq!(read_line(&mut stream), "250 2.1.0 Ok\r\n");
    assert_eq!(read_line(&mut stream), "550 5.5.1 Protocol error\r\n");
    drop(stream);
    thread::sleep(Duration::from_millis(2200));
    let (_again, reply) = attempt(
        &doorman,
        "203.0.113.22",
        "alice@sender.test",
        "bob@doorman.test",
    );
    assert_eq!(
        reply,
        greylisted("bob@doorman.test"),
        "no record was made at the refused visit"
    );
}
