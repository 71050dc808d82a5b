//! What a new operator trips over (issue 34): a certificate out of its
//! validity period named as such, `doorman drain` without an agent, error
//! messages that say what the valid form is, admin commands that answer
//! in sentences, and reload warnings about what actually runs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::tls::*;
use crate::support::*;

/// `doorman ARGS --config DIR/doorman.toml ...`: its output.
fn doorman_in(dir: &Path, command: &[&str], after: &[&str]) -> Output {
    Command::new(doorman_bin())
        .args(command)
        .arg("--config")
        .arg(dir.join("doorman.toml"))
        .args(after)
        .output()
        .unwrap()
}

/// Its stderr, as text.
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A config with `[tls]` for `pair`, in front of `backend`, whose engine
/// talks to every client (the pipelining test is due).
fn tls_config(
    backend: std::net::SocketAddr,
    pair: (std::path::PathBuf, std::path::PathBuf),
) -> String {
    config_with(
        backend,
        "v2",
        "",
        "5s",
        &format!(
            "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[deep_tests]\npipelining = {{ enable = true }}\n{}",
            tls_section(&[pair], "")
        ),
    )
}

#[test]
fn a_certificate_out_of_its_validity_is_named_by_check_at_start_up_and_at_each_reload() {
    if !require_program("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let expired = certificate_between(
        dir.path(),
        "expired",
        "mx.doorman.test",
        "20240101000000Z",
        "20250101000000Z",
    );
    let backend = FakeBackend::start(true);
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    std::fs::write(
        dir.path().join("doorman.toml"),
        tls_config(backend.address, expired.clone()),
    )
    .unwrap();
    let said = "expired.pem: the certificate expired on 2025-01-01 00:00:00 UTC (";
    let out = doorman_in(dir.path(), &["check"], &[]);
    assert!(out.status.success(), "a warning, not an error: {out:?}");
    assert!(
        stderr(&out).contains(&format!("warning: {}/{said}", dir.path().display())),
        "{out:?}"
    );
    assert!(!stderr(&out).contains("expires in"), "{out:?}");

    // Not valid before 2099.
    let early = certificate_between(
        dir.path(),
        "early",
        "mx.doorman.test",
        "20990101000000Z",
        "21000101000000Z",
    );
    std::fs::write(
        dir.path().join("doorman.toml"),
        tls_config(backend.address, early),
    )
    .unwrap();
    let out = doorman_in(dir.path(), &["check"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains(
            "early.pem: the certificate is not valid yet: its validity begins on 2099-01-01 00:00:00 UTC"
        ),
        "{out:?}"
    );

    // `doorman run` says it at start-up and at every reload, and serves it;
    // the expiry gauge (which the alert rule watches) has its date.
    let admin = free_port();
    let running = tls_config(backend.address, expired.clone())
        + &format!("[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    let doorman = Doorman::start(&running, "127.0.0.1\n");
    let gauge = format!(
        "doorman_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}} 1735689600",
        expired.0.display()
    );
    let text = crate::support::metrics(("127.0.0.1", admin));
    assert!(text.contains(&gauge), "{text}");
    doorman.log.wait_for(said, Duration::from_secs(5));
    signal(doorman.child.id(), "HUP");
    doorman.log.wait_for("reloaded", Duration::from_secs(10));
    doorman.log.wait_for_count(said, 2, Duration::from_secs(5));
    let line = doorman.log.matching(said).remove(0);
    assert!(line.contains("warning: "), "{line}");
    let mut client = connect_as(&doorman, "192.0.2.7");
    assert_eq!(whole_reply(&mut client), "220 mx.doorman.test ESMTP\r\n");
    client.write_all(b"EHLO client.test\r\n").unwrap();
    let offered = whole_reply(&mut client);
    assert!(offered.contains("STARTTLS"), "{offered}");
}

#[test]
fn a_reload_compares_the_restart_only_sections_with_what_runs() {
    let backend = FakeBackend::start(false);
    let config = config(backend.address, "none", "", "5s") + "[cache]\nstore = \"memory\"\n";
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let changed = "[cache] changed; that takes effect at the next restart";
    // Changed: said once.
    std::fs::write(
        doorman.config_path(),
        config.replace("store = \"memory\"", "store = \"memory\"\nsize = 5"),
    )
    .unwrap();
    signal(doorman.child.id(), "HUP");
    doorman
        .log
        .wait_for_count("reloaded", 1, Duration::from_secs(10));
    assert_eq!(doorman.log.matching(changed).len(), 1);
    // Restored: what runs again, so nothing waits for a restart.
    std::fs::write(doorman.config_path(), &config).unwrap();
    signal(doorman.child.id(), "HUP");
    doorman
        .log
        .wait_for_count("reloaded", 2, Duration::from_secs(10));
    assert_eq!(
        doorman.log.matching(changed).len(),
        1,
        "{:?}",
        doorman.log.lines()
    );
    // Changed again after the restore: said again.
    std::fs::write(
        doorman.config_path(),
        config.replace("store = \"memory\"", "store = \"memory\"\nsize = 7"),
    )
    .unwrap();
    signal(doorman.child.id(), "HUP");
    doorman
        .log
        .wait_for_count("reloaded", 3, Duration::from_secs(10));
    assert_eq!(doorman.log.matching(changed).len(), 2);
}

/// A config with an admin listener on a free port and no agent.
fn admin_config(backend: std::net::SocketAddr) -> (String, u16) {
    let admin = free_port();
    let text = config(backend, "v2", "", "5s")
        + &format!("[cache]\nstore = \"memory\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n");
    (text, admin)
}

#[test]
fn drain_without_an_agent_fails_and_says_how_to_enable_it() {
    let backend = FakeBackend::start(true);
    let (config, _) = admin_config(backend.address);
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let out = doorman_in(doorman.dir.path(), &["drain"], &[]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let said = stderr(&out);
    for words in [
        "has no [admin] agent, so HAProxy cannot learn of a drain",
        "agent = \"127.0.0.1:9777\"",
        "agent-check agent-port 9777",
    ] {
        assert!(said.contains(words), "{words:?} in {said}");
    }
    // Nothing was asked of the running doorman.
    assert!(doorman.log.matching("/drain from").is_empty());
}

#[test]
fn admin_commands_answer_in_sentences() {
    let backend = FakeBackend::start(true);
    let (config, _) = admin_config(backend.address);
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let dir = doorman.dir.path();
    let no_http = |said: &str| {
        for internal in [
            "/backends",
            "/users",
            "400",
            "404",
            "Bad Request",
            "{\"error\"",
        ] {
            assert!(!said.contains(internal), "{internal:?} in {said}");
        }
    };
    let address = backend.address.to_string();
    let out = doorman_in(dir, &["backend", "weight"], &[&address, "5000"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fatal: weight 5000 is out of range: give a weight from 0 to 1000"),
        "{out:?}"
    );
    no_http(&stderr(&out));
    let out = doorman_in(dir, &["backend", "drain"], &["127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fatal: 127.0.0.1:1 is not a backend of the running doorman"),
        "{out:?}"
    );
    no_http(&stderr(&out));
    let out = doorman_in(dir, &["user", "lookup"], &["someone@example.test"]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("is balanced by recipient")
            && said.contains("balance = \"recipient\" in a [cluster.NAME] section"),
        "{said}"
    );
    assert!(!said.contains("cluster=NAME"), "{said}");
    no_http(&said);
    // A weight in range still works.
    let out = doorman_in(dir, &["backend", "weight"], &[&address, "5"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_missing_config_file_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    for command in [&["check"][..], &["run"], &["drain"], &["backend", "list"]] {
        let out = doorman_in(dir.path(), command, &[]);
        assert!(!out.status.success());
        let said = stderr(&out);
        assert!(said.contains("doorman.toml: cannot read: "), "{said}");
        assert_eq!(
            said.matches("No such file or directory").count(),
            1,
            "{command:?}: {said}"
        );
    }
}

#[test]
fn a_key_that_is_not_the_certificates_is_said_in_words_before_any_listener() {
    if !require_program("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (chain, _) = certificate(dir.path(), "mx", "mx.doorman.test", Key::Ecdsa, 30);
    let (_, other) = certificate(dir.path(), "other", "mx.doorman.test", Key::Ecdsa, 30);
    let backend = FakeBackend::start(true);
    let config = tls_config(backend.address, (chain.clone(), other.clone()));
    std::fs::write(dir.path().join("doorman.toml"), &config).unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    let line = config
        .lines()
        .position(|line| line.starts_with("key = "))
        .unwrap()
        + 1;
    let said = format!(
        "{}:{line}: key = \"{}\": this private key does not belong to the certificate in \"{}\"",
        dir.path().join("doorman.toml").display(),
        other.display(),
        chain.display()
    );
    let out = doorman_in(dir.path(), &["check"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&said), "{out:?}");
    assert!(!stderr(&out).contains("KeyMismatch"), "{out:?}");
    // `doorman run` fails with the same words, before it listens.
    let mut run = Command::new("timeout");
    run.args(["20", doorman_bin(), "run", "--config"])
        .arg(dir.path().join("doorman.toml"));
    let out = run.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains(&said), "{out:?}");
    assert!(!stderr(&out).contains("listening on"), "{out:?}");
    // A chain file that is not there: the config's line, and the file.
    std::fs::write(
        dir.path().join("doorman.toml"),
        config.replace("mx.pem", "missing.pem"),
    )
    .unwrap();
    let out = doorman_in(dir.path(), &["check"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "doorman.toml:{}: chain = \"{}\": cannot read: No such file or directory",
            line - 1,
            dir.path().join("missing.pem").display()
        )),
        "{out:?}"
    );
}

/// The samples of `doorman_connections_total` on `/metrics` of the admin
/// listener on `port`, by outcome.
fn connections_by_outcome(port: u16) -> Vec<(String, f64)> {
    crate::support::metrics(("127.0.0.1", port))
        .lines()
        .filter_map(|line| line.strip_prefix("doorman_connections_total{outcome=\""))
        .filter_map(|rest| rest.split_once("\"} "))
        .map(|(outcome, value)| (outcome.to_string(), value.trim().parse().unwrap()))
        .collect()
}

#[test]
fn every_session_is_counted_once_a_greylisted_one_too() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let admin = free_port();
    // rbldnsd scores 203.0.113.22 1: doubtful, so greylisted.
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"2s\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nsites = [\"bl.test=127.0.0.2\", \"bl2.test\", \"v6.test\"]\nthreshold = 5\naction = \"enforce\"\ntimeout = \"2s\"\nnameservers = [\"{}\"]\n\
[greylist]\nthreshold = 1\ndelay = \"1h\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n",
        dns.address
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"deep\", \"greylist\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let total = || -> f64 {
        connections_by_outcome(admin)
            .iter()
            .map(|(_, value)| value)
            .sum()
    };
    assert_eq!(total(), 0.0);

    // Greylisted, then QUIT: the session ends in the engine.
    let mut doubtful = connect_as(&doorman, "203.0.113.22");
    assert_eq!(read_line(&mut doubtful), "220 mx.doorman.test ESMTP\r\n");
    helo_and_mail(&mut doubtful, "alice@sender.test");
    doubtful
        .write_all(b"RCPT TO:<bob@doorman.test>\r\n")
        .unwrap();
    assert!(read_line(&mut doubtful).starts_with("450 4.2.0 <bob@doorman.test>"));
    doubtful.write_all(b"QUIT\r\n").unwrap();
    assert!(read_to_close(&mut doubtful).starts_with("221"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while total() < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        connections_by_outcome(admin),
        [("engine".to_string(), 1.0)],
        "the greylisted session, once"
    );

    // A clean client: handed off, counted once, also when its session ends.
    let mut clean = connect_as(&doorman, "203.0.113.200");
    assert_eq!(read_line(&mut clean), "220 backend.test ESMTP fake\r\n");
    clean.write_all(b"QUIT\r\n").unwrap();
    drop(clean);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(total(), 2.0, "{:?}", connections_by_outcome(admin));
}
