//! HAProxy's agent check against doorman's own agent, with Debian's HAProxy
//! and its stats socket: `doorman drain` turns the server DRAIN and
//! `undrain` back, the weight falls as screening fills, no backend means
//! DOWN; and control requests need a trusted network or the token.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn start(backend: &FakeBackend, admin: u16, agent: u16) -> Doorman {
    let sections = format!(
        "[greet]\nwait = \"30s\"\n[cache]\nstore = \"memory\"\n[limits]\nscreening = 10\n\
[admin]\naddress = \"127.0.0.1:{admin}\"\nagent = \"127.0.0.1:{agent}\"\n\
trusted = [\"127.0.0.1/32\"]\ntoken_file = \"admin-token\"\n\
[pool]\ncheck_interval = \"300ms\"\nfall = 1\n"
    );
    Doorman::start_with_files(
        &config_with(backend.address, "v2", "", "5s", &sections),
        &[
            ("haproxy_hosts", "127.0.0.1\n"),
            ("admin-token", "s3cret-token-0123\n"),
        ],
    )
}

fn start_haproxy(dir: &Path, doorman: SocketAddr, agent: u16) -> Program {
    let config = format!(
        "global\n    stats socket {sock} mode 600 level admin\n\
defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    timeout check 2s\n\
frontend smtp\n    bind 127.0.0.1:{front}\n    default_backend doormen\n\
backend doormen\n    option tcp-check\n    tcp-check connect default\n    tcp-check expect rstring ^220\n    tcp-check send QUIT\\r\\n\n    tcp-check expect rstring ^221\n\
    server d1 {doorman} send-proxy-v2 check-send-proxy check inter 300ms rise 1 fall 1 weight 100 agent-check agent-addr 127.0.0.1 agent-port {agent} agent-inter 300ms\n",
        sock = dir.join("haproxy.sock").display(),
        front = free_port(),
    );
    std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
    let mut command = Command::new("haproxy");
    command.arg("-f").arg(dir.join("haproxy.cfg")).arg("-db");
    spawn(command, "haproxy")
}

/// Waits until `column` of the server reads as `wanted` says.
fn wait_stat(dir: &Path, column: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = haproxy_stat(dir, column);
        if wanted(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{column} stayed {value}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn doorman_command(doorman: &Doorman, verb: &str) -> String {
    stdout_of(
        Command::new(doorman_bin())
            .arg(verb)
            .arg("--config")
            .arg(doorman.config_path()),
    )
}

#[test]
fn haproxy_follows_doormans_agent() {
    if !require_program("haproxy") {
        return;
    }
    let backend = FakeBackend::start(true);
    let (admin, agent) = (free_port(), free_port());
    let doorman = start(&backend, admin, agent);
    let dir = tempfile::tempdir().unwrap();
    let _haproxy = start_haproxy(dir.path(), doorman.address, agent);
    wait_stat(dir.path(), "status", |s| s == "UP");
    wait_stat(dir.path(), "weight", |w| w == "100");

    assert_eq!(doorman_command(&doorman, "drain"), "drain\n");
    wait_stat(dir.path(), "status", |s| s.starts_with("DRAIN"));
    doorman.log.wait_for(
        "agent: draining (/drain from [127.0.0.1]:",
        Duration::from_secs(5),
    );
    assert_eq!(doorman_command(&doorman, "undrain"), "ready\n");
    wait_stat(dir.path(), "status", |s| s == "UP");

    // Five of ten screening places taken: ready 55%.
    let held: Vec<TcpStream> = (1..=5)
        .map(|n| {
            let mut client = connect_as(&doorman, &format!("203.0.113.{n}"));
            assert_eq!(read_line(&mut client), "220-mx.doorman.test ESMTP\r\n");
            client
        })
        .collect();
    wait_stat(dir.path(), "weight", |w| w == "55");
    drop(held);
    wait_stat(dir.path(), "weight", |w| w == "100");

    // No backend up: the agent says down.
    backend.stop();
    wait_stat(dir.path(), "status", |s| s.starts_with("DOWN"));
}

/// A control request from `source`, with an optional token; the status
/// line.
fn post(admin: u16, source: Ipv4Addr, path: &str, token: Option<&str>) -> String {
    admin_request("POST", admin, source, path, token)
}

/// An admin request (`method`, `path`) from `source`, with an optional
/// token; the status line.
fn admin_request(
    method: &str,
    admin: u16,
    source: Ipv4Addr,
    path: &str,
    token: Option<&str>,
) -> String {
    let mut stream = connect_from(source, format!("127.0.0.1:{admin}").parse().unwrap());
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: doorman\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_string()
}

#[test]
fn control_requests_need_a_trusted_network_or_the_token() {
    let backend = FakeBackend::start(true);
    let (admin, agent) = (free_port(), free_port());
    let doorman = start(&backend, admin, agent);
    let stranger = Ipv4Addr::new(127, 0, 0, 9);
    assert_eq!(
        post(admin, stranger, "/drain", None),
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        post(admin, stranger, "/drain", Some("wrong")),
        "HTTP/1.1 401 Unauthorized"
    );
    doorman.log.wait_for(
        "warning: admin: refused POST /drain from [127.0.0.9]:",
        Duration::from_secs(5),
    );
    // Users' addresses are read only with the same authorisation.
    let lookup = "/users?address=a@doorman.test";
    assert_eq!(
        admin_request("GET", admin, stranger, lookup, None),
        "HTTP/1.1 401 Unauthorized"
    );
    assert_ne!(
        admin_request("GET", admin, stranger, lookup, Some("s3cret-token-0123")),
        "HTTP/1.1 401 Unauthorized"
    );
    let mut agent_line = String::new();
    TcpStream::connect(("127.0.0.1", agent))
        .unwrap()
        .read_to_string(&mut agent_line)
        .unwrap();
    assert_eq!(agent_line, "ready 100%\n", "nothing changed");
    assert_eq!(
        post(admin, stranger, "/drain", Some("s3cret-token-0123")),
        "HTTP/1.1 200 OK"
    );
    let mut agent_line = String::new();
    TcpStream::connect(("127.0.0.1", agent))
        .unwrap()
        .read_to_string(&mut agent_line)
        .unwrap();
    assert_eq!(agent_line, "drain\n");
    assert_eq!(
        post(admin, Ipv4Addr::LOCALHOST, "/undrain", None),
        "HTTP/1.1 200 OK",
        "a trusted network needs no token"
    );
}

/// The agent's line now.
fn agent_says(agent: u16) -> String {
    let mut line = String::new();
    TcpStream::connect(("127.0.0.1", agent))
        .unwrap()
        .read_to_string(&mut line)
        .unwrap();
    line
}

/// The status line of `GET /healthz`.
fn healthz(admin: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: doorman\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_string()
}

/// What HAProxy's check (a v2 LOCAL header) reads first.
fn health_check_greeting(doorman: &Doorman) -> String {
    let mut check = connect_from(Ipv4Addr::LOCALHOST, doorman.address);
    check.write_all(doorman::proxy::write::V2_LOCAL).unwrap();
    read_line(&mut check)
}

#[test]
fn a_pool_whose_backends_are_all_drained_is_not_ready() {
    let backend = FakeBackend::start(true);
    let (admin, agent) = (free_port(), free_port());
    let doorman = start(&backend, admin, agent);
    let address = backend.address.to_string();
    let backend_command = |verb: &str| {
        stdout_of(
            Command::new(doorman_bin())
                .args(["backend", verb, "--config"])
                .arg(doorman.config_path())
                .arg(&address),
        )
    };
    assert_eq!(
        health_check_greeting(&doorman),
        "220 mx.doorman.test ESMTP\r\n"
    );
    assert_eq!(agent_says(agent), "ready 100%\n");
    assert_eq!(healthz(admin), "HTTP/1.1 200 OK");

    // Its one backend drained: HAProxy must send nobody, as when none is up;
    // the agent says drain, so live sessions finish.
    backend_command("drain");
    assert_eq!(
        health_check_greeting(&doorman),
        "421 4.3.2 All server ports are busy\r\n"
    );
    assert_eq!(agent_says(agent), "drain\n");
    assert_eq!(healthz(admin), "HTTP/1.1 503 Service Unavailable");

    // Weight 0 is a drain too.
    backend_command("undrain");
    assert_eq!(agent_says(agent), "ready 100%\n");
    stdout_of(
        Command::new(doorman_bin())
            .args(["backend", "weight", "--config"])
            .arg(doorman.config_path())
            .args([address.as_str(), "0"]),
    );
    assert_eq!(agent_says(agent), "drain\n");
    assert_eq!(
        health_check_greeting(&doorman),
        "421 4.3.2 All server ports are busy\r\n"
    );
    backend_command("undrain");
    assert_eq!(
        health_check_greeting(&doorman),
        "220 mx.doorman.test ESMTP\r\n"
    );
    assert_eq!(healthz(admin), "HTTP/1.1 200 OK");
}
