//! Relay mode under bad input and failing backends: a body that stops, bare
//! newlines, 8-bit data, declared sizes, a backend that reads slowly, hangs
//! or closes, and one that is not there.

use std::io::Read;

use super::*;

const BOB: [(&str, &str); 1] = [("bob@doorman.test", OK)];

const QUEUE_WRITE_ERROR: &str = "451 4.3.0 Error: queue file write error\r\n";

#[test]
fn a_body_that_stops_is_cut_at_command_time_and_never_ends_at_the_backend() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let doorman = relaying(backend.address, "[engine]\ncommand_time = \"2s\"\n");
    let (mut stream, _) = greeted(&doorman, "192.0.2.9");
    // The header block is whole, so the backend has begun the message.
    let partial = b"Subject: stops\r\n\r\nfirst line\r\n";
    assert_eq!(
        transaction(&mut stream, &BOB, partial),
        "421 4.4.2 mx.doorman.test Error: timeout exceeded\r\n"
    );
    let session = backend.wait_for(0, b"first line\r\n");
    assert_eq!(find(&session, b"\r\n.\r\n"), None, "no end of DATA");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after the 421");
}

#[test]
fn bare_newlines_are_normalised_and_eight_bit_data_passes_unchanged() {
    // A backend without 8BITMIME: doorman does not announce it either, and
    // passes what the client sends anyway as it is (the backend judges).
    let backend = RelayBackend::start(&["SIZE 100000", "ENHANCEDSTATUSCODES"], AtEnd::Accept);
    let doorman = relaying(backend.address, "");
    let (mut stream, ehlo) = greeted(&doorman, "192.0.2.10");
    assert!(!ehlo.contains("8BITMIME"), "{ehlo}");
    let message = "Subject: caf\u{e9}\r\n\r\nbare\nline\r\nna\u{ef}ve\r\n.\r\n";
    assert_eq!(transaction(&mut stream, &BOB, message.as_bytes()), QUEUED);
    let session = backend.wait_for(0, b"\r\n.\r\n");
    let relayed = message_of(&session);
    let expected = "Subject: caf\u{e9}\r\n\r\nbare\r\nline\r\nna\u{ef}ve\r\n.\r\n";
    assert!(
        relayed.ends_with(expected.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&relayed)
    );
}

#[test]
fn a_declared_size_past_the_backends_limit_is_refused_at_mail() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let doorman = relaying(backend.address, "");
    let (mut stream, _) = greeted(&doorman, "192.0.2.11");
    assert_eq!(
        ask(&mut stream, "MAIL FROM:<alice@sender.test> SIZE=100001\r\n"),
        "552 5.3.4 Message size exceeds fixed limit\r\n"
    );
    assert_eq!(
        ask(&mut stream, "MAIL FROM:<alice@sender.test> SIZE=99999\r\n"),
        "250 2.1.0 Ok\r\n"
    );
}

#[test]
fn the_end_of_data_waits_for_a_backend_that_reads_slowly() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Slow);
    let doorman = relaying(backend.address, "");
    let (mut stream, _) = greeted(&doorman, "192.0.2.12");
    let mut message = b"Subject: large\r\n\r\n".to_vec();
    for n in 0..4_000 {
        message.extend_from_slice(
            format!("line {n:05} of a message the backend reads slowly\r\n").as_bytes(),
        );
    }
    message.extend_from_slice(b".\r\n");
    // The whole message and its end in one write, long before the backend
    // has read it.
    assert_eq!(transaction(&mut stream, &BOB, &message), QUEUED);
    let session = backend.wait_for(0, b"\r\n.\r\n");
    assert!(message_of(&session).ends_with(&message));
}

#[test]
fn a_backend_lost_in_data_or_after_its_end_gets_the_client_451_never_250() {
    for (at_end, log) in [
        (AtEnd::CloseInData, "lost connection with backend"),
        (AtEnd::Close, "lost connection with backend"),
        (AtEnd::Hang, "timeout talking to backend"),
    ] {
        let backend = RelayBackend::start(KEYWORDS, at_end);
        let doorman = relaying(backend.address, "[relay]\ntimeout = \"2s\"\n");
        let (mut stream, _) = greeted(&doorman, "192.0.2.13");
        let message = b"Subject: lost\r\n\r\nbody\r\n.\r\n";
        assert_eq!(
            transaction(&mut stream, &BOB, message),
            QUEUE_WRITE_ERROR,
            "{at_end:?}"
        );
        let line = doorman.log.wait_for(log, Duration::from_secs(5));
        assert!(line.contains("after END-OF-MESSAGE"), "{line}");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{at_end:?}: closed after the 451");
        let (_, metrics) = get(admin(&doorman), "/metrics");
        assert_eq!(
            sample(&metrics, "doorman_relay_messages_total{result=\"failed\"}"),
            Some(1.0),
            "{at_end:?}"
        );
    }
}

#[test]
fn a_backend_that_is_not_there_gets_every_rcpt_451() {
    let (_reserved, dead) = dead_address();
    let doorman = relaying(dead, "");
    let (mut stream, _) = greeted(&doorman, "192.0.2.14");
    assert_eq!(
        ask(&mut stream, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    for rcpt in ["bob@doorman.test", "carol@doorman.test"] {
        assert_eq!(
            ask(&mut stream, &format!("RCPT TO:<{rcpt}>\r\n")),
            QUEUE_WRITE_ERROR
        );
    }
    assert_eq!(ask(&mut stream, "QUIT\r\n"), "221 2.0.0 Bye\r\n");
}

#[test]
fn a_cluster_that_mixes_relay_mode_with_proxy_backends_is_refused() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(backend.address, "received", "", "5s", "");
    config.push_str("[[backend]]\naddress = \"127.0.0.1:2\"\nsend_proxy = \"v2\"\n");
    let path = dir.path().join("doorman.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    let out = std::process::Command::new(doorman_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mixes send_proxy = \"received\" with other kinds"),
        "{stderr}"
    );
}

#[test]
fn a_bare_newline_after_the_header_block_under_reject_ends_the_session_at_once() {
    let backend = RelayBackend::start(KEYWORDS, AtEnd::Accept);
    let doorman = relaying(
        backend.address,
        "[engine]\nbare_newline = \"reject\"\n[relay]\ntimeout = \"30s\"\n",
    );
    let (mut stream, _) = greeted(&doorman, "192.0.2.17");
    // The header block goes to the backend first; the bare LF comes in a
    // later read, while the backend is inside DATA.
    assert_eq!(
        ask(&mut stream, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(ask(&mut stream, "RCPT TO:<bob@doorman.test>\r\n"), OK);
    assert_eq!(
        ask(&mut stream, "DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    stream.write_all(b"Subject: s\r\n\r\nline0\r\n").unwrap();
    backend.wait_for(0, b"line0\r\n");
    let started = std::time::Instant::now();
    stream.write_all(b"line1\nline2\r\n.\r\n").unwrap();
    assert_eq!(
        whole_reply(&mut stream),
        "550 5.5.2 mx.doorman.test Error: bare <LF> received\r\n"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at once, not at [relay] timeout"
    );
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty());
    let session = backend.wait_for(0, b"line0\r\n");
    assert_eq!(
        find(&session, b"\r\n.\r\n"),
        None,
        "the backend never saw an end"
    );
}

#[test]
fn a_backend_that_refuses_doormans_ehlo_gives_the_client_its_own_4xx() {
    let backend = scripted_relay_backend(|_| b"451 4.3.2 Try again later\r\n");
    let doorman = relaying(backend, "");
    let (mut stream, _) = greeted(&doorman, "192.0.2.18");
    assert_eq!(
        ask(&mut stream, "MAIL FROM:<alice@sender.test>\r\n"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        ask(&mut stream, "RCPT TO:<bob@doorman.test>\r\n"),
        "451 4.3.2 Try again later\r\n"
    );
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from [192.0.2.18]:40000: 451 4.3.2 Try again later; from=<alice@sender.test>, to=<bob@doorman.test>",
        Duration::from_secs(5),
    );
}

/// A backend that greets and answers each line with `answer(line)` (a
/// plain listener: relay mode sends no header).
fn scripted_relay_backend(answer: fn(&str) -> &'static [u8]) -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let _ = writer.write_all(b"220 relay.test ESMTP\r\n");
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let quit = line.to_ascii_uppercase().starts_with("QUIT");
                    let _ = writer.write_all(if quit {
                        b"221 2.0.0 Bye\r\n"
                    } else {
                        answer(&line)
                    });
                    if quit {
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
fn a_backend_that_refuses_data_has_its_reply_at_the_clients_end_of_data() {
    let backend = scripted_relay_backend(|line| {
        if line.starts_with("DATA") {
            b"554 5.7.1 Rejected by policy\r\n"
        } else {
            b"250 2.0.0 Ok\r\n"
        }
    });
    let doorman = relaying(backend, "");
    let (mut stream, _) = greeted(&doorman, "192.0.2.19");
    let message = b"Subject: refused\r\n\r\nbody\r\n.\r\n";
    assert_eq!(
        transaction(
            &mut stream,
            &[("bob@doorman.test", "250 2.0.0 Ok\r\n")],
            message
        ),
        "554 5.7.1 Rejected by policy\r\n"
    );
    doorman.log.wait_for(
        "proxy-reject: END-OF-MESSAGE: 554 5.7.1 Rejected by policy; from=<alice@sender.test> to=<bob@doorman.test> proto=ESMTP helo=<client.test> client=[192.0.2.19]:40000",
        Duration::from_secs(5),
    );
    // The session goes on.
    assert_eq!(ask(&mut stream, "NOOP\r\n"), "250 2.0.0 Ok\r\n");
}
