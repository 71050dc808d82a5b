//! STARTTLS at the front door: the engine's own STARTTLS (Postfix's
//! replies, the state that starts over, plaintext behind STARTTLS thrown
//! away), the deep tests inside TLS, the handoff of a client doorman
//! decrypted (PROXY v2 with HAProxy's SSL TLV for a plain-text backend),
//! certificates by SNI and signature scheme with `openssl s_client`,
//! reload, `doorman check`, and every bad handshake's bounded answer.

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
        "Anonymous TLS connection established from [203.0.113.50]:40000: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519",
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
    assert_eq!(&value[18..40], b"TLS_AES_256_GCM_SHA384");
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

#[test]
fn sni_and_signature_schemes_choose_the_certificate_and_reload_swaps_it() {
    if !require_program("openssl") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let mx = chain(dir, "mx", "mx.doorman.test");
    let mx_ecdsa = certificate(dir, "mx-ec", "mx.doorman.test", Key::Ecdsa, 30);
    let other = certificate(dir, "other", "other.test", Key::Ecdsa, 30);
    let backend = FakeBackend::start(true);
    let config = engine_config(
        backend.address,
        &tls_section(&[mx.clone(), mx_ecdsa, other], ""),
        "",
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    // A direct client (127.0.0.1 is a listed proxy; s_client cannot send
    // PROXY): use a second listener-less path, the proxy's own address is
    // a health check. So talk through a v2 header written by hand.
    let shown = s_client_through(&doorman, &["-servername", "mx.doorman.test"]);
    assert!(shown.contains("0 s:CN = mx.doorman.test"), "{shown}");
    assert!(
        shown.contains("1 s:CN = doorman test CA"),
        "the chain: {shown}"
    );
    let shown = s_client_through(&doorman, &["-servername", "other.test"]);
    assert!(shown.contains("0 s:CN = other.test"), "{shown}");
    let shown = s_client_through(&doorman, &["-servername", "nobody.test"]);
    assert!(shown.contains("0 s:CN = mx.doorman.test"), "{shown}");
    assert!(shown.contains("1 s:CN = doorman test CA"), "{shown}");
    // A client that can only verify ECDSA gets the ECDSA certificate for
    // the same name.
    let shown = s_client_through(
        &doorman,
        &[
            "-servername",
            "mx.doorman.test",
            "-sigalgs",
            "ecdsa_secp256r1_sha256",
        ],
    );
    assert!(shown.contains("Peer signature type: ECDSA"), "{shown}");
    assert!(shown.contains("0 s:CN = mx.doorman.test"), "{shown}");

    // A client that offers a certificate of its own: none is asked for,
    // the session is anonymous.
    let own = certificate(dir, "client", "client.test", Key::Rsa, 30);
    let shown = s_client_through(
        &doorman,
        &[
            "-cert",
            &own.0.display().to_string(),
            "-key",
            &own.1.display().to_string(),
        ],
    );
    assert!(shown.contains("0 s:CN = mx.doorman.test"), "{shown}");
    assert!(
        shown.contains("No client certificate CA names sent"),
        "{shown}"
    );
    doorman.log.wait_for(
        "Anonymous TLS connection established from [203.0.113.60]:40000",
        Duration::from_secs(5),
    );

    // SIGHUP with a new certificate in the same files: new handshakes use it.
    let before = serial(&s_client_through(&doorman, &[]));
    let fresh = tempfile::tempdir().unwrap();
    let renewed = chain(fresh.path(), "mx", "mx.doorman.test");
    std::fs::copy(&renewed.0, &mx.0).unwrap();
    std::fs::copy(&renewed.1, &mx.1).unwrap();
    signal(doorman.child.id(), "HUP");
    doorman.log.wait_for("reloaded", Duration::from_secs(10));
    let after = serial(&s_client_through(&doorman, &[]));
    assert_ne!(before, after, "the renewed certificate");
    assert_eq!(after, serial_of(&renewed.0));

    // A certificate deleted before a reload: the reload is refused, and
    // the certificates in use stay.
    std::fs::remove_file(&mx.0).unwrap();
    signal(doorman.child.id(), "HUP");
    let refused = doorman
        .log
        .wait_for("reload refused", Duration::from_secs(10));
    assert!(refused.contains("mx.pem"), "{refused}");
    assert_eq!(serial(&s_client_through(&doorman, &[])), after);
}

/// `openssl s_client -starttls smtp` to doorman through a relay that puts
/// a PROXY v1 header for 203.0.113.60 in front (s_client cannot).
fn s_client_through(doorman: &Doorman, args: &[&str]) -> String {
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = relay.local_addr().unwrap();
    let target = doorman.address;
    std::thread::spawn(move || {
        let Ok((mut client, _)) = relay.accept() else {
            return;
        };
        let mut upstream = connect_as_to(target, "203.0.113.60");
        let mut down = upstream.try_clone().unwrap();
        let mut up = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut down, &mut up);
            let _ = up.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut client, &mut upstream);
        let _ = upstream.shutdown(std::net::Shutdown::Write);
    });
    s_client(address, args)
}

/// A connection from the listed proxy with a v1 header naming `client`.
fn connect_as_to(target: SocketAddr, client: &str) -> TcpStream {
    let mut stream = connect_from(std::net::Ipv4Addr::new(127, 0, 0, 1), target);
    say(
        &mut stream,
        &format!("PROXY TCP4 {client} 198.51.100.25 40000 25\r\n"),
    );
    stream
}

/// The leaf's serial in `s_client -showcerts` output.
fn serial(shown: &str) -> String {
    let start = shown.find("-----BEGIN CERTIFICATE-----").expect(shown);
    let end = shown[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, &shown[start..end]).unwrap();
    serial_of(&leaf)
}

/// A certificate file's serial, as openssl prints it.
fn serial_of(pem: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn check_warns_of_expiry_names_and_skipped_gates() {
    if !require_program("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let soon = certificate(dir.path(), "soon", "mx.doorman.test", Key::Rsa, 3);
    let elsewhere = certificate(dir.path(), "elsewhere", "other.test", Key::Ecdsa, 30);
    let backend = FakeBackend::start(true);
    let config = engine_config(
        backend.address,
        &tls_section(&[soon.clone(), elsewhere], ""),
        "",
    );
    std::fs::write(dir.path().join("doorman.toml"), &config).unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    let check = |dir: &Path| {
        std::process::Command::new(doorman_bin())
            .args(["check", "--config"])
            .arg(dir.join("doorman.toml"))
            .output()
            .unwrap()
    };
    let out = check(dir.path());
    let warned = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{warned}");
    assert!(
        warned.contains("soon.pem: the certificate expires in 2 days"),
        "{warned}"
    );
    assert!(
        warned.contains(
            "elsewhere.pem: the certificate's names do not cover hostname \"mx.doorman.test\""
        ),
        "{warned}"
    );
    // A key that is not the certificate's fails the check.
    let stranger = certificate(dir.path(), "stranger", "mx.doorman.test", Key::Rsa, 30);
    std::fs::copy(&stranger.1, &soon.1).unwrap();
    let out = check(dir.path());
    let failed = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        failed.contains("soon.key\": this private key does not belong to the certificate in"),
        "{failed}"
    );

    // A backend's tls_server_name that is no name.
    let odd = engine_config(backend.address, "", "tls_server_name = \"no such name!\"");
    std::fs::write(dir.path().join("doorman.toml"), &odd).unwrap();
    let out = check(dir.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("tls_server_name \"no such name!\" is no DNS name"),
        "{out:?}"
    );

    // A backend CA file without tls_verify checks nothing: said so.
    let ca = soon.0.clone();
    let unverified = engine_config(
        backend.address,
        "",
        &format!("tls_ca_file = \"{}\"", ca.display()),
    );
    std::fs::write(dir.path().join("doorman.toml"), &unverified).unwrap();
    let out = check(dir.path());
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "warning: backend {}: tls_ca_file is set but tls_verify is off: its certificate is not checked",
            backend.address
        )),
        "{out:?}"
    );

    // Without [tls], a config whose engine gates a STARTTLS client skips
    // says so, in check and at start-up.
    let plain = engine_config(backend.address, "", "");
    std::fs::write(dir.path().join("doorman.toml"), &plain).unwrap();
    let out = check(dir.path());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "warning: no [tls] section: clients that send STARTTLS are handed to a backend at once and skip the deep tests"
        ),
        "{out:?}"
    );
    let doorman = Doorman::start(&plain, "127.0.0.1\n");
    doorman.log.wait_for(
        "warning: no [tls] section: clients that send STARTTLS are handed to a backend at once and skip the deep tests",
        Duration::from_secs(5),
    );
}

/// doorman scoring with rbldnsd (127.0.0.2 is listed in bl.test at weight
/// 1), greylisting from 1 with a 2 s delay, offering STARTTLS, in front of
/// `postfix`; swaks reaches it directly (no proxy is listed).
fn greylisting_in_front_of(postfix: SocketAddr, dns: SocketAddr, certs: &Path) -> Doorman {
    let pair = certificate(certs, "mx", "mx.doorman.test", Key::Rsa, 30);
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"2s\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nsites = [\"bl.test=127.0.0.2\"]\nthreshold = 5\naction = \"enforce\"\ntimeout = \"2s\"\nnameservers = [\"{dns}\"]\n\
[greylist]\nthreshold = 1\ndelay = \"2s\"\nretry_window = \"1h\"\n{}",
        tls_section(&[pair], "")
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"deep\", \"greylist\"]\n{}",
        config_with(postfix, "v2", "", "5s", &sections)
    );
    Doorman::start(&config, "127.0.0.200\n")
}

/// swaks with STARTTLS from 127.0.0.2; its exit status and transcript.
fn swaks_tls(doorman: &Doorman) -> (bool, String) {
    let out = std::process::Command::new("swaks")
        .args(["--server", &doorman.address.to_string()])
        .args(["--local-interface", "127.0.0.2"])
        .args(["--from", "alice@client.test", "--to", "bob@doorman.test"])
        .args(["--tls", "--timeout", "20"])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A doubtful client that encrypts is greylisted inside TLS on first
/// contact, and its retry is replayed into Postfix over STARTTLS.
fn greylisted_in_tls_then_delivered(level: &str) {
    if !require_program("swaks") {
        return;
    }
    let Some(dns) = Rbldnsd::start() else { return };
    let Some((postfix, _backend_certs)) = postfix_with_tls(level) else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let doorman = greylisting_in_front_of(postfix.address(), dns.address, certs.path());
    let (delivered, transcript) = swaks_tls(&doorman);
    assert!(!delivered, "{transcript}");
    assert!(
        transcript.contains("<-  220 2.0.0 Ready to start TLS"),
        "{transcript}"
    );
    assert!(
        transcript.contains("=== TLS started with cipher"),
        "{transcript}"
    );
    assert!(
        transcript.contains("CN=mx.doorman.test"),
        "doorman's certificate: {transcript}"
    );
    assert!(
        transcript.contains(
            "<~* 450 4.2.0 <bob@doorman.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/doorman.test.html"
        ),
        "greylisted inside TLS: {transcript}"
    );
    doorman.log.wait_for(
        "Anonymous TLS connection established from [127.0.0.2]:",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let (delivered, transcript) = swaks_tls(&doorman);
    assert!(delivered, "{transcript}");
    assert!(
        transcript.contains("<~  250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    doorman
        .log
        .wait_for("greylist: pass for [127.0.0.2]:", Duration::from_secs(5));
    // Postfix saw a TLS session of its own, for the real client.
    let line = postfix.wait_for_log(
        "TLS connection established from unknown[127.0.0.2]",
        Duration::from_secs(10),
    );
    assert!(line.contains("TLSv1."), "{line}");
    postfix.wait_for_log("from=<alice@client.test>", Duration::from_secs(10));
}

#[test]
fn a_doubtful_client_in_tls_is_greylisted_then_delivered_over_tls() {
    greylisted_in_tls_then_delivered("may");
}

#[test]
fn a_backend_that_demands_encryption_takes_the_replay() {
    greylisted_in_tls_then_delivered("encrypt");
}

/// A backend that announces STARTTLS, answers it with 220 and then sends
/// plain text: right behind the 220 the first time, instead of the
/// handshake later; it counts the clients that got that far.
fn broken_tls_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let tried = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&tried);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = std::sync::Arc::clone(&counted);
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                if read_v2_header(&mut reader).is_none() {
                    return;
                }
                let _ = writer.write_all(b"220 broken.test ESMTP\r\n");
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-broken.test\r\n250 STARTTLS\r\n",
                        "STAR" => {
                            // The first time plain text right behind the
                            // 220, later plain text where the handshake
                            // should be.
                            // (The first time in one write, so both reach
                            // doorman's first read even on a busy machine.)
                            let seen = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if seen == 0 {
                                let _ = writer.write_all(
                                    b"220 2.0.0 Ready to start TLS\r\nthis is no TLS\r\n",
                                );
                                return;
                            }
                            let _ = writer.write_all(b"220 2.0.0 Ready to start TLS\r\n");
                            std::thread::sleep(Duration::from_millis(200));
                            let _ = writer.write_all(b"this is no TLS\r\n");
                            return;
                        }
                        "QUIT" => b"221 2.0.0 Bye\r\n",
                        _ => b"250 2.0.0 Ok\r\n",
                    };
                    let _ = writer.write_all(reply);
                    line.clear();
                }
            });
        }
    });
    (address, tried)
}

#[test]
fn a_backend_whose_tls_fails_counts_as_one_that_did_not_connect() {
    if !require_program("openssl") {
        return;
    }
    let (broken, tried) = broken_tls_backend();
    let certs = tempfile::tempdir().unwrap();
    let pair = certificate(certs.path(), "mx", "mx.doorman.test", Key::Rsa, 30);
    let backend = FakeBackend::start(true);
    // The broken backend first in the config; each client goes to the
    // first backend that takes it.
    let config = engine_config(
        broken,
        &tls_section(&[pair], ""),
        &format!(
            "[[backend]]\naddress = \"{}\"\nsend_proxy = \"v2\"\n[pool]\ncheck_interval = \"1s\"",
            backend.address
        ),
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    // Balancing rotates the order: two of the four try the broken one first.
    let clients = [
        "203.0.113.70",
        "203.0.113.71",
        "203.0.113.72",
        "203.0.113.73",
    ];
    for (n, client) in clients.into_iter().enumerate() {
        let mut tls = start_tls(ready(&doorman, client), None);
        say_tls(&mut tls, "EHLO client.test\r\n");
        assert!(reply_tls(&mut tls).starts_with("250"));
        say_tls(&mut tls, "MAIL FROM:<a@client.test>\r\n");
        assert_eq!(reply_tls(&mut tls), "250 2.1.0 Ok\r\n");
        say_tls(&mut tls, "RCPT TO:<b@doorman.test>\r\n");
        assert_eq!(
            reply_tls(&mut tls),
            "250 2.0.0 ok\r\n",
            "client {n} reached the working backend"
        );
        let got = backend.wait_bytes(n, 1);
        assert_eq!(proxied_client(&got).0.ip().to_string(), client);
    }
    assert_eq!(tried.load(std::sync::atomic::Ordering::SeqCst), 2);
    let warning = format!(
        "warning: cannot connect to service 127.0.0.1:{}: STARTTLS: ",
        broken.port()
    );
    doorman.log.wait_for(
        &format!("{warning}bytes after its 220 to STARTTLS: this is no TLS\\r\\n"),
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        &format!("{warning}handshake: received corrupt message"),
        Duration::from_secs(5),
    );
}

/// doorman sends a TLS 1.3 session ticket as soon as it has the client's
/// Finished (what lets a Nagle-on client's EHLO go without waiting for a
/// delayed ACK), and a client that keeps it resumes its next session.
#[test]
fn the_engine_sends_a_ticket_and_a_client_resumes_with_it() {
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, HandshakeKind, StreamOwned};
    let (_backend, doorman, _certs) = start("", "");
    let config = std::sync::Arc::new(doorman::tls::backend::client_config(None).unwrap());
    let mut kinds = Vec::new();
    for client in ["203.0.113.90", "203.0.113.91"] {
        let mut plain = connect_as(&doorman, client);
        assert_eq!(read_line(&mut plain), GREETING);
        say(&mut plain, "EHLO client.test\r\n");
        read_reply(&mut plain);
        say(&mut plain, "STARTTLS\r\n");
        assert_eq!(read_line(&mut plain), READY);
        let name = ServerName::try_from("mx.doorman.test").unwrap();
        let mut connection = ClientConnection::new(config.clone(), name).unwrap();
        while connection.is_handshaking() {
            connection.complete_io(&mut plain).unwrap();
        }
        kinds.push(connection.handshake_kind());
        let mut tls = StreamOwned::new(connection, plain);
        say_tls(&mut tls, "EHLO client.test\r\n");
        assert!(reply_tls(&mut tls).starts_with("250"));
        say_tls(&mut tls, "QUIT\r\n");
        assert_eq!(reply_tls(&mut tls), "221 2.0.0 Bye\r\n");
    }
    assert_eq!(
        kinds,
        [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
    );
}
