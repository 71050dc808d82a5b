//! The README's first command: doorman with the shipped config in front of
//! `doorman sink --proxy` on 127.0.0.1:10026, and swaks delivering a message
//! to 127.0.0.1:2525; then the example HAProxy config in front of it, as
//! shipped but for its port 25, delivering too: the shipped (and packaged)
//! files run together on one host.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[test]
fn shipped_config_delivers_a_message_from_swaks() {
    if !require_program("swaks") {
        return;
    }
    let mut sink = Command::new(doorman_bin());
    sink.args(["sink", "--listen", "127.0.0.1:10026", "--proxy"]);
    let sink = spawn(sink, "sink");
    sink.log.wait_for(
        "sink: listening on [127.0.0.1]:10026",
        Duration::from_secs(10),
    );
    let mut run = Command::new(doorman_bin());
    run.args([
        "run",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/doorman.toml"),
    ]);
    let doorman = spawn(run, "doorman");
    doorman
        .log
        .wait_for("listening on [127.0.0.1]:2525", Duration::from_secs(10));
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1:2525",
            "--to",
            "postmaster@example.test",
        ])
        .args(["--header", "Subject: quickstart"])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    assert!(
        transcript.contains("<-  220 sink.localhost ESMTP doorman sink"),
        "{transcript}"
    );
    let line = sink
        .log
        .wait_for("sink: message from=", Duration::from_secs(5));
    assert!(
        line.contains("to=<postmaster@example.test>") && line.contains("subject=\"quickstart\""),
        "{line}"
    );
    assert!(line.contains("client=[127.0.0.1]:"), "{line}");
    doorman
        .log
        .wait_for("CONNECT from [127.0.0.1]:", Duration::from_secs(5));
    // doorman's health probes (one before it listened, then every 2 s) are
    // not logged as clients: the one connect line is swaks's.
    assert_eq!(
        sink.log.matching("sink: connect from").len(),
        1,
        "{:?}",
        sink.log.matching("sink: ")
    );
    through_the_example_haproxy(&doorman, &sink);
}

/// The example haproxy.cfg in front of the shipped doorman: only its port
/// 25 and its stats socket are changed for the test; HAProxy connects from
/// 127.0.0.10, which the shipped haproxy_hosts lists, with a PROXY v2
/// header naming the client.
fn through_the_example_haproxy(doorman: &Program, sink: &Program) {
    if !require_program("haproxy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/haproxy.cfg"))
            .unwrap();
    let socket = dir.path().join("haproxy.sock");
    let config = shipped
        .replace("    bind :25\n", &format!("    bind 127.0.0.1:{port}\n"))
        .replace("/run/haproxy/admin.sock", &socket.display().to_string());
    assert!(
        config.contains(&format!("bind 127.0.0.1:{port}\n"))
            && config.contains(&socket.display().to_string()),
        "the example changed: {shipped}"
    );
    std::fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
    let mut command = Command::new("haproxy");
    command
        .arg("-f")
        .arg(dir.path().join("haproxy.cfg"))
        .arg("-db");
    let _haproxy = spawn(command, "haproxy");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let transcript = loop {
        let out = Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{port}")])
            .args(["--to", "postmaster@example.test"])
            .args(["--header", "Subject: through haproxy"])
            .output()
            .unwrap();
        let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() || std::time::Instant::now() > deadline {
            break transcript;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        transcript.contains("<-  250 ") && transcript.contains("sink.localhost"),
        "{transcript}"
    );
    // doorman took HAProxy's header: the client, and the address it called.
    doorman
        .log
        .wait_for(&format!("to [127.0.0.1]:{port}"), Duration::from_secs(5));
    let line = sink
        .log
        .wait_for("subject=\"through haproxy\"", Duration::from_secs(5));
    assert!(line.contains("client=[127.0.0.1]:"), "{line}");
}
