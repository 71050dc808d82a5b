//! STARTTLS at the front door: the engine's own STARTTLS (Postfix's
//! replies, the state that starts over, plaintext behind STARTTLS thrown
//! away), the deep tests inside TLS, the handoff of a client doorman
//! decrypted (PROXY v2 with HAProxy's SSL TLV for a plain-text backend),
//! certificates by SNI and signature scheme with `openssl s_client`,
//! reload, `doorman check`, and every bad handshake's bounded answer.

mod backends;
mod certificates;
mod check;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::tls::*;
use crate::support::*;

const GREETING: &str = "220 mx.doorman.test ESMTP\r\n";
const READY: &str = "220 2.0.0 Ready to start TLS\r\n";

/// A config whose engine talks to every client (the pipelining test is
/// due) and offers STARTTLS with `tls`; `backend_extra` goes into the
/// backend's table.
fn engine_config(backend: SocketAddr, tls: &str, backend_extra: &str) -> String {
    config_with(
        backend,
        "v2",
        "",
        "5s",
        &format!(
            "{backend_extra}\n[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[deep_tests]\npipelining = {{ enable = true }}\n{tls}"
        ),
    )
}

/// doorman with one RSA certificate for mx.doorman.test, in front of a
/// fake backend that does not offer STARTTLS.
fn start(extra: &str, backend_extra: &str) -> (FakeBackend, Doorman, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let pair = certificate(certs.path(), "mx", "mx.doorman.test", Key::Rsa, 30);
    let backend = FakeBackend::start(true);
    let config = engine_config(backend.address, &tls_section(&[pair], extra), backend_extra);
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    (backend, doorman, certs)
}

fn say(stream: &mut impl Write, text: &str) {
    stream.write_all(text.as_bytes()).unwrap();
}

/// A client through the listed proxy, greeted by the engine, that sent
/// EHLO and STARTTLS and read the 220.
fn ready(doorman: &Doorman, client: &str) -> TcpStream {
    let mut stream = connect_as(doorman, client);
    assert_eq!(read_line(&mut stream), GREETING);
    say(&mut stream, "EHLO client.test\r\n");
    let ehlo = read_reply(&mut stream);
    assert!(ehlo.contains("STARTTLS\r\n"), "{ehlo}");
    say(&mut stream, "STARTTLS\r\n");
    assert_eq!(read_line(&mut stream), READY);
    stream
}

/// One whole (multi-line) reply in plain text.
fn read_reply(stream: &mut TcpStream) -> String {
    whole_reply(stream)
}

/// Reads until the peer closes or `within` passes; whether it closed.
fn closes_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).is_ok()
}

#[test]
fn a_client_in_tls_meets_the_engine_and_is_replayed_with_the_ssl_tlv() {
    if !require_program("openssl") {
        return;
    }
    let (backend, doorman, _certs) = start("", "tls = \"none\"");
    let mut plain = connect_as(&doorman, "203.0.113.50");
    assert_eq!(read_line(&mut plain), GREETING);
    say(&mut plain, "EHLO client.test\r\n");
    assert_eq!(
        read_reply(&mut plain),
        "250-mx.doorman.test\r\n250 STARTTLS\r\n",
        "the backend's keywords (PIPELINING withheld) and the engine's STARTTLS"
    );
    say(&mut plain, "MAIL FROM:<before@client.test>\r\n");
    assert_eq!(read_line(&mut plain), "250 2.1.0 Ok\r\n");
    say(&mut plain, "STARTTLS now\r\n");
    assert_eq!(read_line(&mut plain), "501 5.5.4 Syntax: STARTTLS\r\n");
    say(&mut plain, "STARTTLS\r\n");
    assert_eq!(read_line(&mut plain), READY);
    let mut tls = start_tls(plain, Some("mx.doorman.test"));
    assert_eq!(peer_certificate(&tls).0, "mx.doorman.test");
    let established = doorman.log.wait_for(
        "Anonymous TLS connection established from [203.0.113.50]:40000: TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits) key-exchange X25519",
        Duration::from_secs(5),
    );
    assert!(established.contains("postfix/postscreen"), "{established}");
    // RFC 3207: the state starts over; STARTTLS is no longer offered.
    say_tls(&mut tls, "RCPT TO:<r@doorman.test>\r\n");
    assert_eq!(
        reply_tls(&mut tls),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    say_tls(&mut tls, "EHLO client.test\r\n");
    assert_eq!(reply_tls(&mut tls), "250 mx.doorman.test\r\n");
    say_tls(&mut tls, "STARTTLS\r\n");
    assert_eq!(
        reply_tls(&mut tls),
        "554 5.5.1 Error: TLS already active\r\n"
    );
    say_tls(&mut tls, "MAIL FROM:<alice@client.test>\r\n");
    assert_eq!(reply_tls(&mut tls), "250 2.1.0 Ok\r\n");
    say_tls(&mut tls, "RCPT TO:<bob@doorman.test>\r\n");
    assert_eq!(
        reply_tls(&mut tls),
        "250 2.0.0 ok\r\n",
        "the backend's answer"
    );
    say_tls(&mut tls, "DATA\r\n");
    assert_eq!(reply_tls(&mut tls), "354 go ahead\r\n");
    say_tls(&mut tls, "Subject: in TLS\r\n\r\nhello\r\n.\r\n");
    assert_eq!(reply_tls(&mut tls), "250 2.0.0 queued\r\n");
    say_tls(&mut tls, "QUIT\r\n");
    assert_eq!(reply_tls(&mut tls), "221 2.0.0 bye\r\n");

    // The backend got the dialogue in plain text, behind a v2 header whose
    // SSL TLV names the client's TLS version and cipher.
    let got = backend.wait_closed(0);
    let (source, length) = proxied_client(&got);
    assert_eq!(source, "203.0.113.50:40000".parse().unwrap());
    let header = &got[..length];
    let ssl = header
        .windows(3)
        .position(|w| w[0] == 0x20 && u16::from_be_bytes([w[1], w[2]]) as usize > 5)
        .expect("an SSL TLV");
    let value = &header[ssl + 3..];
    assert_eq!(
        &value[..5],
        &[0x01, 0, 0, 0, 1],
        "PP2_CLIENT_SSL, not verified"
    );
    assert_eq!(&value[5..15], b"\x21\x00\x07TLSv1.3");
    assert_eq!(&value[15..18], b"\x23\x00\x16");
    assert_eq!(&value[18..40], b"TLS_AES_128_GCM_SHA256");
    assert_eq!(
        String::from_utf8_lossy(&got[length..]),
        "EHLO client.test\r\nMAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@doorman.test>\r\nDATA\r\nSubject: in TLS\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.50]:40000", Duration::from_secs(5));
}

#[test]
fn plaintext_pipelined_behind_starttls_is_never_answered() {
    if !require_program("openssl") {
        return;
    }
    let (_backend, doorman, _certs) = start("", "");
    let mut plain = connect_as(&doorman, "203.0.113.51");
    assert_eq!(read_line(&mut plain), GREETING);
    // STARTTLS before any EHLO is accepted, as Postfix does.
    say(&mut plain, "STARTTLS\r\nRSET\r\n");
    assert_eq!(read_line(&mut plain), READY);
    let mut tls = start_tls(plain, None);
    say_tls(&mut tls, "VRFY\r\n");
    assert_eq!(
        reply_tls(&mut tls),
        "501 5.5.4 Syntax: VRFY address\r\n",
        "the first reply inside TLS answers VRFY: RSET was thrown away"
    );
    doorman.log.wait_for(
        "warning: 6 bytes of plaintext after STARTTLS from [203.0.113.51]:40000 discarded: RSET\\r\\n",
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        "COMMAND PIPELINING from [203.0.113.51]:40000 after STARTTLS: RSET\\r\\n",
        Duration::from_secs(5),
    );

    // Pipelining inside TLS, after the second EHLO, fails the deep test as
    // it does in plain text.
    let mut tls = start_tls(ready(&doorman, "203.0.113.61"), None);
    say_tls(&mut tls, "EHLO bot.test\r\nMAIL FROM:<a@bot.test>\r\n");
    assert_eq!(reply_tls(&mut tls), "250 mx.doorman.test\r\n");
    assert_eq!(reply_tls(&mut tls), "250 2.1.0 Ok\r\n");
    say_tls(&mut tls, "RCPT TO:<victim@doorman.test>\r\n");
    assert_eq!(reply_tls(&mut tls), "550 5.5.1 Protocol error\r\n");
    doorman.log.wait_for(
        "COMMAND PIPELINING from [203.0.113.61]:40000 after EHLO: MAIL FROM:<a@bot.test>\\r\\n",
        Duration::from_secs(5),
    );
}

#[test]
fn bad_handshakes_get_a_bounded_logged_end() {
    if !require_program("openssl") {
        return;
    }
    // One screening place: a place a bad handshake kept would turn the last
    // good client away with 421. No backend probes while descriptors are
    // counted.
    let (_backend, doorman, _certs) = start(
        "handshake_timeout = \"1s\"",
        "[limits]\nscreening = 1\n[pool]\ncheck_interval = \"1h\"",
    );
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{}/fd", doorman.child.id()))
            .unwrap()
            .count()
    };
    // One good handshake first: the crypto library opens what it keeps
    // for good (its entropy sources) on first use, not per connection.
    let mut warm = start_tls(ready(&doorman, "203.0.113.49"), None);
    say_tls(&mut warm, "QUIT\r\n");
    assert_eq!(reply_tls(&mut warm), "221 2.0.0 Bye\r\n");
    drop(warm);
    std::thread::sleep(Duration::from_millis(200));
    let baseline = descriptors();

    // Garbage instead of a ClientHello.
    let mut garbage = ready(&doorman, "203.0.113.52");
    say(&mut garbage, "GET / HTTP/1.0\r\n\r\n");
    assert!(closes_within(&mut garbage, Duration::from_secs(5)));
    doorman.log.wait_for(
        "SSL_accept error from [203.0.113.52]:40000: received corrupt message",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("DISCONNECT [203.0.113.52]:40000", Duration::from_secs(5));

    // STARTTLS, then silence: the handshake timeout.
    let mut silent = ready(&doorman, "203.0.113.53");
    let started = Instant::now();
    assert!(closes_within(&mut silent, Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(900));
    doorman.log.wait_for(
        "SSL_accept error from [203.0.113.53]:40000: timeout",
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        "timeout after STARTTLS from [203.0.113.53]:40000",
        Duration::from_secs(5),
    );

    // A client that stops mid-handshake.
    let mut quitter = ready(&doorman, "203.0.113.54");
    quitter
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    quitter.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closes_within(&mut quitter, Duration::from_secs(5)));
    doorman.log.wait_for(
        "SSL_accept error from [203.0.113.54]:40000: lost connection",
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        "lost connection after STARTTLS from [203.0.113.54]:40000",
        Duration::from_secs(5),
    );

    // A TLS 1.0 ClientHello (no supported_versions): refused with an alert.
    let mut old = ready(&doorman, "203.0.113.55");
    old.write_all(&tls10_client_hello()).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = old.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&0x15), "an alert: {answer:?}");
    doorman.log.wait_for(
        "SSL_accept error from [203.0.113.55]:40000: peer is incompatible",
        Duration::from_secs(5),
    );

    // An oversized ClientHello: its declared length is refused at once.
    let mut huge = ready(&doorman, "203.0.113.56");
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    record.resize(5 + 0x4000, 0x41);
    let _ = huge.write_all(&record);
    assert!(closes_within(&mut huge, Duration::from_secs(5)));
    doorman.log.wait_for(
        "SSL_accept error from [203.0.113.56]:40000: ",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("DISCONNECT [203.0.113.56]:40000", Duration::from_secs(5));

    // No descriptor outlives the bad handshakes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while descriptors() > baseline {
        assert!(
            Instant::now() < deadline,
            "{} descriptors, {baseline} before",
            descriptors()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A good client still gets the one screening place and its handshake.
    let good = ready(&doorman, "203.0.113.57");
    let mut tls = start_tls(good, Some("unknown.example"));
    assert_eq!(
        peer_certificate(&tls).0,
        "mx.doorman.test",
        "an unknown SNI name gets the default certificate"
    );
    say_tls(&mut tls, "QUIT\r\n");
    assert_eq!(reply_tls(&mut tls), "221 2.0.0 Bye\r\n");
}

/// A TLS 1.0 ClientHello offering one TLS 1.0 suite, without extensions.
fn tls10_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01];
    body.extend([0x11; 32]);
    body.extend([0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
    let mut handshake = vec![0x01, 0x00, 0x00, u8::try_from(body.len()).unwrap()];
    handshake.extend(body);
    let mut record = vec![
        0x16,
        0x03,
        0x01,
        0x00,
        u8::try_from(handshake.len()).unwrap(),
    ];
    record.extend(handshake);
    record
}

#[test]
fn handshakes_are_counted() {
    if !require_program("openssl") {
        return;
    }
    let admin = free_port();
    let (_backend, doorman, _certs) = start(
        "handshake_timeout = \"1s\"",
        &format!("[admin]\naddress = \"127.0.0.1:{admin}\""),
    );
    let good = ready(&doorman, "203.0.113.58");
    let mut tls = start_tls(good, None);
    say_tls(&mut tls, "QUIT\r\n");
    assert_eq!(reply_tls(&mut tls), "221 2.0.0 Bye\r\n");
    let mut lost = ready(&doorman, "203.0.113.59");
    lost.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closes_within(&mut lost, Duration::from_secs(5)));
    doorman.log.wait_for(
        "lost connection after STARTTLS from [203.0.113.59]",
        Duration::from_secs(5),
    );
    let mut http = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    assert!(
        text.contains("doorman_tls_handshakes_total{result=\"ok\",version=\"TLSv1.3\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("doorman_tls_handshakes_total{result=\"lost\",version=\"none\"} 1"),
        "{text}"
    );
}
