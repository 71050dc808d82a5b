//! Deep protocol tests after the 220 greeting (pipelining, non-SMTP
//! commands, bare newlines), with byte-for-byte transcripts, and what
//! happens after a pass: the dialogue replayed into the backend in the same
//! connection (or postscreen's 450 and reconnect). STARTTLS hands off to a
//! real Postfix smtpd, so TLS runs end to end.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::support::tls::postfix_with_tls;
use crate::support::*;

const GREETING: &str = "220 mx.doorman.test ESMTP\r\n";

fn deep_config(backend: SocketAddr, deep: &str) -> String {
    config_with(
        backend,
        "v2",
        "",
        "5s",
        &format!("[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[deep_tests]\n{deep}\n"),
    )
}

const ALL: &str = "pipelining = { enable = true }\nnon_smtp_command = { enable = true }\nbare_newline = { enable = true }\n";

fn say(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).unwrap();
}

#[test]
fn pipelining_enforce_and_drop() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(&deep_config(backend.address, ALL), "127.0.0.1\n");
    let mut client = connect_as(&doorman, "203.0.113.1");
    assert_eq!(read_line(&mut client), GREETING);
    say(&mut client, "EHLO bot.test\r\nMAIL FROM:<a@bot.test>\r\n");
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<victim@doorman.test>\r\n");
    assert_eq!(read_line(&mut client), "550 5.5.1 Protocol error\r\n");
    say(&mut client, "QUIT\r\n");
    assert_eq!(read_to_close(&mut client), "221 2.0.0 Bye\r\n");
    doorman.log.wait_for(
        "COMMAND PIPELINING from [203.0.113.1]:40000 after EHLO: MAIL FROM:<a@bot.test>\\r\\n",
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from [203.0.113.1]:40000: 550 5.5.1 Protocol error; from=<a@bot.test>, to=<victim@doorman.test>, proto=ESMTP, helo=<bot.test>",
        Duration::from_secs(5),
    );
    assert_eq!(backend.count(), 0);

    let dropping = Doorman::start(
        &deep_config(
            backend.address,
            "pipelining = { enable = true, action = \"drop\" }",
        ),
        "127.0.0.1\n",
    );
    let mut client = connect_as(&dropping, "203.0.113.2");
    assert_eq!(read_line(&mut client), GREETING);
    say(&mut client, "HELO bot.test\r\nNOOP\r\n");
    assert_eq!(read_to_close(&mut client), "521 5.5.1 Protocol error\r\n");
    dropping
        .log
        .wait_for("DISCONNECT [203.0.113.2]:40000", Duration::from_secs(5));
}

#[test]
fn non_smtp_command_drop_and_bare_newline_ignore() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(&deep_config(backend.address, ALL), "127.0.0.1\n");
    let mut http = connect_as(&doorman, "203.0.113.3");
    assert_eq!(read_line(&mut http), GREETING);
    say(&mut http, "GET / HTTP/1.0\r\n");
    assert_eq!(
        read_to_close(&mut http),
        "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n"
    );
    doorman.log.wait_for(
        "NON-SMTP COMMAND from [203.0.113.3]:40000 after CONNECT: GET / HTTP/1.0",
        Duration::from_secs(5),
    );

    // A bare LF is logged and ignored: the client still reaches the backend.
    let mut sloppy = connect_as(&doorman, "203.0.113.4");
    assert_eq!(read_line(&mut sloppy), GREETING);
    say(&mut sloppy, "HELO sloppy.test\n");
    assert_eq!(read_line(&mut sloppy), "250 mx.doorman.test\r\n");
    say(&mut sloppy, "MAIL FROM:<s@sloppy.test>\r\n");
    assert_eq!(read_line(&mut sloppy), "250 2.1.0 Ok\r\n");
    say(&mut sloppy, "RCPT TO:<r@doorman.test>\r\n");
    assert_eq!(
        read_line(&mut sloppy),
        "250 2.0.0 ok\r\n",
        "the backend's answer"
    );
    doorman.log.wait_for(
        "BARE NEWLINE from [203.0.113.4]:40000 after HELO sloppy.test",
        Duration::from_secs(5),
    );
    // As postscreen, an ignored deep-test failure counts as a pass until
    // the shortest TTL of any test.
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.4]:40000", Duration::from_secs(5));
}

#[test]
fn a_good_client_passes_and_its_message_reaches_the_backend_in_the_same_connection() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(&deep_config(backend.address, ALL), "127.0.0.1\n");
    let mut client = connect_as(&doorman, "203.0.113.5");
    assert_eq!(read_line(&mut client), GREETING);
    say(&mut client, "EHLO good.test\r\n");
    // The backend announces only PIPELINING, which doorman withholds.
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    say(
        &mut client,
        "MAIL FROM:<alice@good.test> SIZE=120 BODY=8BITMIME\r\n",
    );
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<bob@doorman.test> NOTIFY=NEVER\r\n");
    assert_eq!(read_line(&mut client), "250 2.0.0 ok\r\n");
    say(&mut client, "RCPT TO:<carol@doorman.test>\r\n");
    assert_eq!(read_line(&mut client), "250 2.0.0 ok\r\n");
    say(&mut client, "DATA\r\n");
    assert_eq!(read_line(&mut client), "354 go ahead\r\n");
    say(&mut client, "Subject: hi\r\n\r\nhello\r\n.\r\n");
    assert_eq!(read_line(&mut client), "250 2.0.0 queued\r\n");
    say(&mut client, "QUIT\r\n");
    assert_eq!(read_line(&mut client), "221 2.0.0 bye\r\n");

    let got = backend.wait_closed(0);
    let (source, length) = proxied_client(&got);
    assert_eq!(source, "203.0.113.5:40000".parse().unwrap());
    assert_eq!(
        String::from_utf8_lossy(&got[length..]),
        "EHLO good.test\r\nMAIL FROM:<alice@good.test> SIZE=120 BODY=8BITMIME\r\nRCPT TO:<bob@doorman.test> NOTIFY=NEVER\r\nRCPT TO:<carol@doorman.test>\r\nDATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.5]:40000", Duration::from_secs(5));

    // Next time: PASS OLD, straight to the backend, no engine at all.
    let mut again = connect_as(&doorman, "203.0.113.5");
    assert_eq!(read_line(&mut again), "220 backend.test ESMTP fake\r\n");
    doorman
        .log
        .wait_for("PASS OLD [203.0.113.5]:40000", Duration::from_secs(5));
}

/// A backend that refuses every MAIL.
fn refusing_backend() -> SocketAddr {
    scripted_backend(
        |_| Some(b"220 strict.test ESMTP\r\n"),
        |line| match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
            Some("EHLO") => b"250-strict.test\r\n250 8BITMIME\r\n",
            Some("MAIL") => b"550 5.7.1 <s@bad.test>: Sender address rejected\r\n",
            Some("RCPT") => b"503 5.5.1 Error: need MAIL command\r\n",
            Some("QUIT") => b"221 2.0.0 Bye\r\n",
            _ => b"250 2.0.0 Ok\r\n",
        },
    )
}

#[test]
fn backend_refusing_the_replayed_mail() {
    let address = refusing_backend();
    let doorman = Doorman::start(&deep_config(address, ALL), "127.0.0.1\n");
    let mut client = connect_as(&doorman, "203.0.113.6");
    assert_eq!(read_line(&mut client), GREETING);
    say(&mut client, "EHLO x.test\r\n");
    assert_eq!(read_line(&mut client), "250-mx.doorman.test\r\n");
    assert_eq!(read_line(&mut client), "250 8BITMIME\r\n");
    say(&mut client, "MAIL FROM:<s@bad.test>\r\n");
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<r@doorman.test>\r\n");
    // The answer to RCPT is the backend's refusal of the MAIL.
    assert_eq!(
        read_line(&mut client),
        "550 5.7.1 <s@bad.test>: Sender address rejected\r\n"
    );
    say(&mut client, "QUIT\r\n");
    assert_eq!(read_to_close(&mut client), "221 2.0.0 Bye\r\n");
    doorman.log.wait_for(
        "replay for [203.0.113.6]:40000: backend refused MAIL FROM:<s@bad.test>\\r\\n: 550 5.7.1",
        Duration::from_secs(5),
    );
}

#[test]
fn reconnect_mode_is_postscreens() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(
        &deep_config(
            backend.address,
            &format!("after_pass = \"reconnect\"\n{ALL}"),
        ),
        "127.0.0.1\n",
    );
    let mut client = connect_as(&doorman, "203.0.113.8");
    assert_eq!(read_line(&mut client), GREETING);
    say(&mut client, "HELO polite.test\r\n");
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    say(&mut client, "MAIL FROM:<p@polite.test>\r\n");
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<r@doorman.test>\r\n");
    assert_eq!(
        read_line(&mut client),
        "450 4.3.2 Service currently unavailable\r\n"
    );
    say(&mut client, "RCPT TO:<s@doorman.test>\r\n");
    assert_eq!(
        read_line(&mut client),
        "450 4.3.2 Service currently unavailable\r\n"
    );
    say(&mut client, "QUIT\r\n");
    assert_eq!(read_to_close(&mut client), "221 2.0.0 Bye\r\n");
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from [203.0.113.8]:40000: 450 4.3.2 Service currently unavailable; from=<p@polite.test>, to=<r@doorman.test>, proto=SMTP, helo=<polite.test>",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.8]:40000", Duration::from_secs(5));
    assert_eq!(backend.count(), 0);
    let mut back = connect_as(&doorman, "203.0.113.8");
    assert_eq!(read_line(&mut back), "220 backend.test ESMTP fake\r\n");
    doorman
        .log
        .wait_for("PASS OLD [203.0.113.8]:40000", Duration::from_secs(5));
}

#[test]
fn starttls_hands_off_to_a_real_postfix_smtpd_end_to_end() {
    if !require_program("swaks") {
        return;
    }
    let Some((postfix, _certs)) = postfix_with_tls("may") else {
        return;
    };
    // swaks connects directly (no proxy is listed), from 127.0.0.5.
    let doorman = Doorman::start(&deep_config(postfix.address(), ALL), "127.0.0.200\n");
    let out = Command::new("swaks")
        .args(["--server", &doorman.address.to_string()])
        .args(["--local-interface", "127.0.0.5"])
        .args(["--from", "alice@client.test", "--to", "bob@doorman.test"])
        .args(["--tls", "--timeout", "20"])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{transcript}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        transcript.contains("<-  220 2.0.0 Ready to start TLS"),
        "{transcript}"
    );
    assert!(
        transcript.contains("=== TLS started with cipher"),
        "{transcript}"
    );
    assert!(
        transcript.contains("CN=backend.postfix.test"),
        "{transcript}"
    );
    assert!(
        transcript.contains("<~  250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    postfix.wait_for_log("TLS connection established from", Duration::from_secs(10));
    postfix.wait_for_log("[127.0.0.5]", Duration::from_secs(10));
    doorman
        .log
        .wait_for("CONNECT from [127.0.0.5]:", Duration::from_secs(5));
}

#[test]
fn shutdown_ends_an_engine_dialogue_with_421() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(&deep_config(backend.address, ALL), "127.0.0.1\n");
    let mut client = connect_as(&doorman, "203.0.113.9");
    assert_eq!(read_line(&mut client), GREETING);
    doorman.terminate();
    doorman.log.wait_for(
        "stopping: no new connections; 1 live",
        Duration::from_secs(5),
    );
    assert!(
        doorman.log.matching("agent:").is_empty(),
        "no agent is configured: {:?}",
        doorman.log.matching("agent:")
    );
    // The grace period (3 s) ends, and the engine says why it closes.
    assert_eq!(
        read_to_close(&mut client),
        "421 4.3.2 Service shutting down, try again later\r\n"
    );
    doorman
        .log
        .wait_for("stopped; 1 sessions were closed", Duration::from_secs(5));
}

/// A backend that takes one recipient, then gives up on the client (its
/// own timeout) and closes.
fn impatient_backend() -> SocketAddr {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                if read_v2_header(&mut reader).is_none() {
                    return;
                }
                let _ = writer.write_all(b"220 backend.test ESMTP\r\n");
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let upper = line.to_ascii_uppercase();
                    let _ = writer.write_all(b"250 ok\r\n");
                    if upper.starts_with("RCPT") {
                        std::thread::sleep(Duration::from_millis(300));
                        let _ =
                            writer.write_all(b"421 4.4.2 backend.test Error: timeout exceeded\r\n");
                        return;
                    }
                    if upper.starts_with("QUIT") {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    address
}

#[test]
fn a_backend_that_gives_up_after_the_replay_ends_the_session_at_once() {
    let backend = impatient_backend();
    let doorman = Doorman::start(
        &deep_config(backend, "pipelining = { enable = true }"),
        "127.0.0.1\n",
    );
    let mut client = connect_as(&doorman, "203.0.113.90");
    assert_eq!(read_line(&mut client), GREETING);
    say(&mut client, "HELO client.test\r\n");
    assert_eq!(read_line(&mut client), "250 mx.doorman.test\r\n");
    say(&mut client, "MAIL FROM:<a@client.test>\r\n");
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    say(&mut client, "RCPT TO:<b@doorman.test>\r\n");
    assert_eq!(read_line(&mut client), "250 ok\r\n", "replayed");
    let started = std::time::Instant::now();
    assert_eq!(
        read_to_close(&mut client),
        "421 4.4.2 backend.test Error: timeout exceeded\r\n"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not after doorman's own command time: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_pregreet_pass_outlives_a_client_that_leaves_before_rcpt() {
    let backend = FakeBackend::start(true);
    let config = config_with(
        backend.address,
        "v2",
        "",
        "5s",
        "[greet]\nwait = \"1s\"\n[cache]\nstore = \"memory\"\n[deep_tests]\npipelining = { enable = true }\n",
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let visit = || {
        let started = std::time::Instant::now();
        let mut client = connect_as(&doorman, "203.0.113.30");
        let mut first = read_line(&mut client);
        if first.starts_with("220-") {
            first = read_line(&mut client);
        }
        assert_eq!(first, GREETING);
        let waited = started.elapsed();
        say(&mut client, "EHLO client.test\r\n");
        while !read_line(&mut client).starts_with("250 ") {}
        say(&mut client, "QUIT\r\n");
        assert_eq!(read_to_close(&mut client), "221 2.0.0 Bye\r\n");
        waited
    };
    assert!(
        visit() >= Duration::from_millis(950),
        "the first visit waits"
    );
    // The pregreet test was finished: the next visits skip the wait, while
    // the pipelining test, never finished, is still due (the engine greets).
    for _ in 0..2 {
        let waited = visit();
        assert!(waited < Duration::from_millis(500), "waited {waited:?}");
    }
    assert_eq!(doorman.log.matching("PASS NEW").len(), 0);
    assert_eq!(backend.count(), 0);
}
