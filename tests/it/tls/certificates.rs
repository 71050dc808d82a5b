//! Certificates: SNI and signature schemes choose one, a reload swaps them.

use super::*;

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
