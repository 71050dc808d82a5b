//! `doorman check` on TLS settings: expiry, names, the gates STARTTLS would skip.

use super::*;

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
