//! Operating doorman: SIGHUP reload (valid and invalid), the admin
//! listener's `/metrics` (Prometheus text whose counters move),
//! `/healthz`, and its caps on connections and request heads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::*;

const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

/// GETs `path` from the admin listener; returns (status line, body).
pub(crate) fn get(admin: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: doorman\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Parses Prometheus/OpenMetrics text: every sample line is
/// `name{labels} value`; returns the value of `series`.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        assert!(
            name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()),
            "metric name in {line:?}"
        );
        if name == series {
            found = Some(value);
        }
    }
    found
}

fn write_config(doorman: &Doorman, text: &str) {
    std::fs::write(doorman.config_path(), text).unwrap();
}

#[test]
fn reload_metrics_and_healthz() {
    let Some(dns) = Rbldnsd::start() else { return };
    let a = FakeBackend::start(true);
    let b = FakeBackend::start(true);
    let base = |backend: SocketAddr, dnsbl: &str| {
        config_with(
            backend,
            "v2",
            "",
            "5s",
            &format!("[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[admin]\naddress = \"127.0.0.1:0\"\n{dnsbl}"),
        )
    };
    let doorman = Doorman::start(&base(a.address, ""), "127.0.0.1\n");
    let admin = parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(5)),
    );
    let (status, body) = get(admin, "/healthz");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );

    // A session in progress on backend A.
    let mut live = connect_as(&doorman, "203.0.113.1");
    assert_eq!(read_line(&mut live), BACKEND);
    assert_eq!(a.count(), 1);

    // A valid change: backend B replaces A, and a DNSBL site appears.
    let dnsbl = format!(
        "[dnsbl]\nsites = [\"bl.test=127.0.0.[2..11]*2\"]\nthreshold = 2\naction = \"drop\"\nnameservers = [\"{}\"]\n",
        dns.address
    );
    write_config(&doorman, &base(b.address, &dnsbl));
    signal(doorman.child.id(), "HUP");
    doorman.log.wait_for("reloaded ", Duration::from_secs(10));
    let mut fresh = connect_as(&doorman, "203.0.113.2");
    assert_eq!(read_line(&mut fresh), BACKEND);
    assert_eq!(b.count(), 1, "new connections use the new backend");
    let mut listed = connect_as(&doorman, "203.0.113.7");
    assert!(read_to_close(&mut listed)
        .starts_with("521 5.7.1 Service unavailable; client [203.0.113.7] blocked using bl.test"));
    // The live session carries on with A.
    live.write_all(b"NOOP\r\n").unwrap();
    assert_eq!(read_line(&mut live), "250 2.0.0 ok\r\n");

    // An invalid change is refused, and the running config stays.
    write_config(&doorman, "hostname = \"x\"\nbogus = 1\n");
    signal(doorman.child.id(), "HUP");
    let refused = doorman
        .log
        .wait_for("warning: reload refused", Duration::from_secs(10));
    assert!(refused.contains("bogus"), "{refused}");
    let mut after = connect_as(&doorman, "203.0.113.3");
    assert_eq!(read_line(&mut after), BACKEND);
    assert_eq!(b.count(), 2);

    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(
        sample(&text, "doorman_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "doorman_config_reloads_total{result=\"refused\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "doorman_connections_total{outcome=\"dropped\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "doorman_tests_total{test=\"dnsbl\",result=\"fail\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("doorman_backend_up{{backend=\"{}\"}}", b.address)
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("doorman_backend_connections{{backend=\"{}\"}}", b.address)
        ),
        Some(2.0),
        "fresh and after are still open"
    );
    assert!(
        sample(
            &text,
            "doorman_dnsbl_lookup_seconds_count{site=\"bl.test\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    drop((fresh, after));
    let mut more = connect_as(&doorman, "203.0.113.4");
    assert_eq!(read_line(&mut more), BACKEND);
    let (_, text) = get(admin, "/metrics");
    // 203.0.113.2, .3 and .4 passed the DNSBL test after the reload; .1
    // came before any test was configured.
    assert_eq!(
        sample(&text, "doorman_connections_total{outcome=\"pass_new\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "doorman_connections_total{outcome=\"untested\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "doorman_cache_lookups_total{result=\"miss\"}"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(get(admin, "/nope").0, "HTTP/1.1 404 Not Found");
}

#[test]
fn the_waiting_room_is_counted() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(
        &config_with(
            backend.address,
            "v2",
            "",
            "5s",
            "[greet]\nwait = \"2s\"\n[cache]\nstore = \"memory\"\n[admin]\naddress = \"127.0.0.1:0\"\n",
        ),
        "127.0.0.1\n",
    );
    let admin = parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(5)),
    );
    let mut talker = connect_as(&doorman, "203.0.113.10");
    let mut waiter = connect_as(&doorman, "203.0.113.11");
    assert_eq!(read_line(&mut talker), "220-mx.doorman.test ESMTP\r\n");
    assert_eq!(read_line(&mut waiter), "220-mx.doorman.test ESMTP\r\n");
    std::thread::sleep(Duration::from_millis(300));
    let (_, text) = get(admin, "/metrics");
    assert_eq!(
        sample(&text, "doorman_waiting_room_clients"),
        Some(2.0),
        "{text}"
    );
    // Talking early hands the client back at once, readable.
    talker.write_all(b"EHLO early.test\r\n").unwrap();
    doorman.log.wait_for("PREGREET", Duration::from_secs(5));
    // The other is handed back at its deadline and passes.
    assert_eq!(read_line(&mut waiter), BACKEND);
    let (_, text) = get(admin, "/metrics");
    assert_eq!(sample(&text, "doorman_waiting_room_clients"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "doorman_waiting_room_returns_total{woken=\"readable\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "doorman_waiting_room_returns_total{woken=\"deadline\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn tells_systemd_when_ready() {
    let backend = FakeBackend::start(true);
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    std::fs::write(
        dir.path().join("doorman.toml"),
        config(backend.address, "v2", "", "5s"),
    )
    .unwrap();
    let mut child = std::process::Command::new(doorman_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("doorman.toml"))
        .env("NOTIFY_SOCKET", &socket_path)
        .spawn()
        .unwrap();
    let mut message = [0u8; 256];
    let n = socket.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"READY=1\n");
    signal(child.id(), "HUP");
    let n = socket.recv(&mut message).unwrap();
    assert!(String::from_utf8_lossy(&message[..n]).starts_with("RELOADING=1"));
    let n = socket.recv(&mut message).unwrap();
    assert_eq!(&message[..n], b"READY=1\n");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_keyed_zone_shows_no_key_in_the_metrics() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"1s\"\n[cache]\nstore = \"memory\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
[dnsbl]\nsites = [\"secretkey123.zen.test\"]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n\
[dnsbl.reply_map]\n\"secretkey123.zen.test\" = \"zen.test\"\n",
        dns.address
    );
    let doorman = Doorman::start(
        &config_with(backend.address, "v2", "", "5s", &sections),
        "127.0.0.1\n",
    );
    let admin = parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(5)),
    );
    let mut client = connect_as(&doorman, "203.0.113.70");
    assert_eq!(read_line(&mut client), BACKEND);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (_, text) = get(admin, "/metrics");
        if text.contains("doorman_dnsbl_lookups_total{") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("site=\"zen.test\""), "{text}");
    assert!(!text.contains("secretkey123"), "{text}");
}

#[test]
fn admin_connections_are_capped() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(
        &config_with(
            backend.address,
            "v2",
            "",
            "5s",
            "[cache]\nstore = \"memory\"\n[admin]\naddress = \"127.0.0.1:0\"\n",
        ),
        "127.0.0.1\n",
    );
    let admin = parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(5)),
    );
    // 64 connections that send nothing hold every place ...
    let mut idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    let mut busy = TcpStream::connect(admin).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    busy.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n")
            && answer.ends_with("\r\n\r\ntoo many admin connections\n"),
        "{answer}"
    );
    // ... until one goes.
    idle.pop();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(admin, "/nope").0, "HTTP/1.1 404 Not Found");
    // A request head over 16 KiB is not served.
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let huge = "x".repeat(20 * 1024);
    let _ = write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: doorman\r\nX-Big: {huge}\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
}
