//! End to end with the real programs: Debian's HAProxy in front (v1 and v2,
//! tcp-check and smtpchk health checks), doorman, and `doorman sink` or
//! Postfix's smtp-sink behind it; swaks as the client, from a chosen
//! loopback address.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// How the HAProxy backend line checks and sends the header.
struct Front {
    send_proxy: &'static str,
    checks: &'static str,
}

impl Front {
    /// PROXY v2 with the recommended tcp-check.
    const V2_TCP_CHECK: Front = Front {
        send_proxy: "send-proxy-v2",
        checks: TCP_CHECK,
    };
}

const TCP_CHECK: &str = "    option tcp-check\n    tcp-check connect default\n    tcp-check expect rstring ^220\n    tcp-check send QUIT\\r\\n\n    tcp-check expect rstring ^221\n";
const SMTPCHK: &str = "    option smtpchk HELO localhost\n";

fn start_haproxy(
    dir: &Path,
    front_port: u16,
    doorman: std::net::SocketAddr,
    front: &Front,
) -> Program {
    let socket = dir.join("haproxy.sock");
    let cfg = format!(
        "global\n    stats socket {sock} mode 600 level admin\n\
defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    timeout check 2s\n\
frontend smtp\n    bind 127.0.0.1:{front_port}\n    default_backend doormen\n\
backend doormen\n{checks}    server d1 {doorman} {send_proxy} check-send-proxy check inter 300ms rise 2 fall 1\n",
        sock = socket.display(),
        checks = front.checks,
        send_proxy = front.send_proxy,
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut command = Command::new("haproxy");
    command.arg("-f").arg(&path).arg("-db");
    spawn(command, "haproxy")
}

/// HAProxy's status of backend server d1.
fn server_status(dir: &Path) -> String {
    haproxy_stat(dir, "status")
}

fn wait_up(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut status = String::new();
    while Instant::now() < deadline {
        status = server_status(dir);
        if status == "UP" {
            // Stay UP over several more checks.
            std::thread::sleep(Duration::from_millis(1500));
            assert_eq!(server_status(dir), "UP");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("HAProxy never reported the doorman server UP: {status}");
}

fn swaks(front_port: u16, source: &str, subject: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{front_port}")])
        .args(["--local-interface", source])
        .args(["--from", "sender@client.test", "--to", "rcpt@doorman.test"])
        .args(["--header", &format!("Subject: {subject}")])
        .args(["--header", "Message-Id: <e2e-1@client.test>"])
        .args(["--body", "hello through haproxy and doorman"])
        .args(["--timeout", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "swaks failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// HAProxy in front of `doorman`, reported UP by its stats socket; returns
/// it, its folder and its frontend port.
fn haproxy_up(doorman: &Doorman, front: Front) -> (Program, tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    let front_port = free_port();
    let haproxy = start_haproxy(dir.path(), front_port, doorman.address, &front);
    wait_up(dir.path());
    (haproxy, dir, front_port)
}

fn deliver_through(front: Front) {
    if !require_program("haproxy") || !require_program("swaks") {
        return;
    }
    let (sink, sink_address) = start_sink(true);
    let doorman = Doorman::start(&config(sink_address, "v2", "", "5s"), "127.0.0.1\n");
    let (haproxy, _dir, front_port) = haproxy_up(&doorman, front);
    let transcript = swaks(front_port, "127.0.0.5", "doorman e2e");
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued"),
        "{transcript}"
    );
    sink.log
        .wait_for("sink: connect from [127.0.0.5]:", Duration::from_secs(5));
    let message = sink.log.wait_for(
        "sink: message from=<sender@client.test>",
        Duration::from_secs(5),
    );
    assert!(message.contains("to=<rcpt@doorman.test>"), "{message}");
    assert!(
        message.contains("message-id=<e2e-1@client.test>"),
        "{message}"
    );
    assert!(message.contains("subject=\"doorman e2e\""), "{message}");
    assert!(message.contains("client=[127.0.0.5]:"), "{message}");
    let connect = doorman
        .log
        .wait_for("CONNECT from [127.0.0.5]:", Duration::from_secs(5));
    assert!(
        connect.contains(&format!(" to [127.0.0.1]:{front_port}")),
        "{connect}"
    );
    // Only the client was handed off; the checks were answered by doorman and never warn.
    assert_eq!(sink.log.matching("sink: connect from [127.0.0.5]").len(), 1);
    assert!(
        doorman.log.matching("warning:").is_empty(),
        "{:?}",
        doorman.log.matching("warning:")
    );
    assert!(!doorman
        .log
        .matching("health check from [127.0.0.1]")
        .is_empty());
    drop(haproxy);
}

#[test]
fn haproxy_send_proxy_v2_with_tcp_check() {
    deliver_through(Front {
        send_proxy: "send-proxy-v2",
        checks: TCP_CHECK,
    });
}

#[test]
fn haproxy_send_proxy_v1_with_tcp_check() {
    deliver_through(Front {
        send_proxy: "send-proxy",
        checks: TCP_CHECK,
    });
}

#[test]
fn haproxy_send_proxy_v2_with_smtpchk() {
    deliver_through(Front {
        send_proxy: "send-proxy-v2",
        checks: SMTPCHK,
    });
}

#[test]
fn haproxy_send_proxy_v1_with_smtpchk() {
    deliver_through(Front {
        send_proxy: "send-proxy",
        checks: SMTPCHK,
    });
}

#[test]
fn haproxy_marks_doorman_down_when_no_backend_is_alive() {
    if !require_program("haproxy") {
        return;
    }
    let (_reserved, dead) = dead_address();
    let doorman = Doorman::start(&config(dead, "v2", "", "5s"), "127.0.0.1\n");
    let dir = tempfile::tempdir().unwrap();
    let front = Front {
        send_proxy: "send-proxy-v2",
        checks: TCP_CHECK,
    };
    let _haproxy = start_haproxy(dir.path(), free_port(), doorman.address, &front);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = server_status(dir.path());
    while !status.starts_with("DOWN") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        status = server_status(dir.path());
    }
    assert!(status.starts_with("DOWN"), "{status}");
}

#[test]
fn smtp_sink_backend_without_header() {
    if !require_program("haproxy") || !require_program("swaks") || !require_program("smtp-sink") {
        return;
    }
    let (_sink, sink_address) = start_smtp_sink();
    let doorman = Doorman::start(&config(sink_address, "none", "", "5s"), "127.0.0.1\n");
    let (_haproxy, _dir, front_port) = haproxy_up(&doorman, Front::V2_TCP_CHECK);
    let transcript = swaks(front_port, "127.0.0.6", "via smtp-sink");
    assert!(transcript.contains("<-  250 2.0.0 Ok"), "{transcript}");
    doorman
        .log
        .wait_for("CONNECT from [127.0.0.6]:", Duration::from_secs(5));
}

/// Whether the tests run as root (smtp-sink then needs `-u`).
fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Starts Postfix's smtp-sink on a free port and waits until it listens.
fn start_smtp_sink() -> (Program, std::net::SocketAddr) {
    let port = free_port();
    let mut command = Command::new("smtp-sink");
    if unsafe_is_root() {
        command.args(["-u", "postfix"]);
    }
    command.args([&format!("127.0.0.1:{port}"), "100"]);
    let sink = spawn(command, "smtp-sink");
    let address = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (sink, address)
}

#[test]
fn gating_through_haproxy_listed_refused_clean_delivered() {
    if !require_program("haproxy") || !require_program("swaks") || !require_program("smtp-sink") {
        return;
    }
    let Some(dns) = Rbldnsd::start() else { return };
    let (_sink, sink_address) = start_smtp_sink();
    let sections = format!(
        "[greet]\nwait = \"1s\"\n[dnsbl]\nsites = [\"bl.test=127.0.0.[2..11]*2\"]\nthreshold = 2\naction = \"enforce\"\nnameservers = [\"{}\"]\n",
        dns.address
    );
    let doorman = Doorman::start(
        &config_with(sink_address, "none", "", "5s", &sections),
        "127.0.0.1\n",
    );
    let (_haproxy, _dir, front_port) = haproxy_up(&doorman, Front::V2_TCP_CHECK);

    // 127.0.0.2 is the RFC 5782 test point, listed in bl.test.
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{front_port}")])
        .args(["--local-interface", "127.0.0.2"])
        .args([
            "--from",
            "spammer@example.com",
            "--to",
            "goodguy@example.com",
        ])
        .args(["--timeout", "20"])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        transcript.contains(
            "<** 550 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
        ),
        "{transcript}"
    );
    doorman
        .log
        .wait_for("DNSBL rank 2 for [127.0.0.2]:", Duration::from_secs(5));
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from [127.0.0.2]:",
        Duration::from_secs(5),
    );

    let transcript = swaks(front_port, "127.0.0.5", "clean");
    assert!(
        transcript.contains("<-  220-mx.doorman.test ESMTP"),
        "{transcript}"
    );
    assert!(transcript.contains("<-  220 "), "{transcript}");
    assert!(transcript.contains("<-  250 2.0.0 Ok"), "{transcript}");
    doorman
        .log
        .wait_for("PASS NEW [127.0.0.5]:", Duration::from_secs(5));
}
