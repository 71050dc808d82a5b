//! TLS to the backends, greylisting inside TLS, and resumption with the engine's tickets.

use super::*;

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
    use rustls::HandshakeKind;
    let (_backend, doorman, _certs) = start("", "");
    let config = std::sync::Arc::new(doorman::tls::backend::client_config(None).unwrap());
    let kinds: Vec<_> = ["203.0.113.90", "203.0.113.91"]
        .into_iter()
        .map(|client| handshake_as(&doorman, client, config.clone()).1)
        .collect();
    assert_eq!(
        kinds,
        [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
    );
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
    // doorman offers AES-128-GCM first, and Postfix follows its client's
    // order.
    assert!(
        line.contains("TLSv1.3 with cipher TLS_AES_128_GCM_SHA256"),
        "{line}"
    );
    postfix.wait_for_log("from=<alice@client.test>", Duration::from_secs(10));
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

/// A client config that lists `first` first (it keeps its own tickets).
fn client_listing_first(first: rustls::CipherSuite) -> std::sync::Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != first);
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(doorman::tls::backend::any_certificate())
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// STARTTLS from `client` with `config`: the suite and the kind of
/// handshake it got.
fn handshake_as(
    doorman: &Doorman,
    client: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> (Option<rustls::CipherSuite>, Option<rustls::HandshakeKind>) {
    use rustls::pki_types::ServerName;
    let mut plain = connect_as(doorman, client);
    assert_eq!(read_line(&mut plain), GREETING);
    say(&mut plain, "EHLO client.test\r\n");
    read_reply(&mut plain);
    say(&mut plain, "STARTTLS\r\n");
    assert_eq!(read_line(&mut plain), READY);
    let name = ServerName::try_from("mx.doorman.test").unwrap();
    let mut connection = rustls::ClientConnection::new(config, name).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut plain).unwrap();
    }
    let mut tls = rustls::StreamOwned::new(connection, plain);
    // The ticket comes after the handshake: a reply reads it.
    say_tls(&mut tls, "EHLO client.test\r\n");
    assert!(reply_tls(&mut tls).starts_with("250"));
    let chosen = tls.conn.negotiated_cipher_suite().map(|s| s.suite());
    let kind = tls.conn.handshake_kind();
    say_tls(&mut tls, "QUIT\r\n");
    assert_eq!(reply_tls(&mut tls), "221 2.0.0 Bye\r\n");
    (chosen, kind)
}

/// doorman picks the cipher suite in its own order (AES-128-GCM first), so
/// a client that lists AES-256-GCM first, as OpenSSL's do, gets
/// AES-128-GCM; one that lists ChaCha20 first (no AES in hardware) keeps
/// its own order. Each resumes its next session with its ticket (rustls
/// resumes a session only with the suite it had, so a ticket never goes
/// from one order to the other).
#[test]
fn the_engine_picks_aes_128_unless_the_client_puts_chacha_first() {
    use rustls::CipherSuite::*;
    use rustls::HandshakeKind::{Full, Resumed};
    let (_backend, doorman, _certs) = start("", "");
    let aes = client_listing_first(TLS13_AES_256_GCM_SHA384);
    let chacha = client_listing_first(TLS13_CHACHA20_POLY1305_SHA256);
    let cases = [
        (&aes, TLS13_AES_128_GCM_SHA256, Full),
        (&aes, TLS13_AES_128_GCM_SHA256, Resumed),
        (&chacha, TLS13_CHACHA20_POLY1305_SHA256, Full),
        (&chacha, TLS13_CHACHA20_POLY1305_SHA256, Resumed),
    ];
    for (n, (config, suite, kind)) in cases.into_iter().enumerate() {
        let client = format!("203.0.113.{}", 95 + n);
        let got = handshake_as(&doorman, &client, config.clone());
        assert_eq!(got, (Some(suite), Some(kind)), "handshake {n}");
    }
}
