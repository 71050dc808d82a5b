//! The README's first command: doorman with the shipped config in front of
//! `doorman sink --proxy` on 127.0.0.1:10026, and swaks delivering a message
//! to 127.0.0.1:2525.

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
}
