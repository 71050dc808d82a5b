//! The backends at runtime, for a fleet: two doorman instances on one
//! redis-server, two backends. A drain given to one instance makes the
//! other send no new client there within one interval while a live session
//! finishes its message; undrain, weight 0 and flush (which ends a live
//! session after the grace); `doorman backend list`, the JSON, and the
//! refusals of bad requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

fn start(x: SocketAddr, y: SocketAddr, redis: &Redis, admin: u16) -> Doorman {
    let config = format!(
        "hostname = \"mx.doorman.test\"\nshutdown_grace = \"3s\"\n[proxy]\nhosts_file = \"haproxy_hosts\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\n\
[[backend]]\naddress = \"{x}\"\nsend_proxy = \"v2\"\n[[backend]]\naddress = \"{y}\"\nsend_proxy = \"v2\"\n\
[pool]\nbalance = \"roundrobin\"\ncheck_interval = \"300ms\"\nflush_grace = \"1s\"\n\
[greet]\nbanner = \"\"\n[cache]\nstore = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"d:\"\n\
[admin]\naddress = \"127.0.0.1:{admin}\"\n",
        redis.url()
    );
    Doorman::start(&config, "127.0.0.1\n")
}

fn backend(doorman: &Doorman, verb: &str, args: &[&str]) -> std::process::Output {
    Command::new(doorman_bin())
        .args(["backend", verb, "--config"])
        .arg(doorman.config_path())
        .args(args)
        .output()
        .unwrap()
}

/// Sends `n` clients through `doorman`; how many more each backend got.
fn spread(doorman: &Doorman, x: &FakeBackend, y: &FakeBackend, n: usize) -> (usize, usize) {
    let (x0, y0) = (x.count(), y.count());
    for i in 0..n {
        let mut client = connect_as(doorman, &format!("203.0.113.{}", 100 + i));
        assert_eq!(read_line(&mut client), BACKEND);
    }
    (x.count() - x0, y.count() - y0)
}

/// A client of `doorman` whose session landed on `backend` (clients are
/// sent until one does).
fn session_on(doorman: &Doorman, backend: &FakeBackend, client: &str) -> TcpStream {
    loop {
        let before = backend.count();
        let mut stream = connect_as(doorman, client);
        assert_eq!(read_line(&mut stream), BACKEND);
        if backend.count() > before {
            return stream;
        }
    }
}

/// Waits until `check` holds.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_command_drains_weighs_and_flushes_a_backend_for_the_fleet() {
    let Some(redis) = Redis::start() else { return };
    let (x, y) = (FakeBackend::start(true), FakeBackend::start(true));
    let a = start(x.address, y.address, &redis, free_port());
    let b = start(x.address, y.address, &redis, free_port());
    let (to_x, to_y) = spread(&b, &x, &y, 4);
    assert!(
        to_x > 0 && to_y > 0,
        "both backends in service: {to_x} {to_y}"
    );

    // A session live on X through B, before X is drained through A.
    let mut live = session_on(&b, &x, "203.0.113.50");
    let drained = backend(&a, "drain", &[&x.address.to_string()]);
    assert!(drained.status.success(), "{drained:?}");
    let said = String::from_utf8_lossy(&drained.stdout).into_owned();
    assert!(said.contains("true"), "the new state: {said}");
    thread::sleep(Duration::from_millis(700));
    assert_eq!(spread(&b, &x, &y, 6), (0, 6), "B sends nothing new to X");
    // The live session finishes its message.
    live.write_all(b"MAIL FROM:<a@client.test>\r\n").unwrap();
    assert_eq!(read_line(&mut live), "250 2.0.0 ok\r\n");
    live.write_all(b"DATA\r\n").unwrap();
    assert_eq!(read_line(&mut live), "354 go ahead\r\n");
    live.write_all(b"hello\r\n.\r\n").unwrap();
    assert_eq!(read_line(&mut live), "250 2.0.0 queued\r\n");

    let list = backend(&b, "list", &[]);
    let table = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.status.success(), "{list:?}");
    let x_row: Vec<String> = table
        .lines()
        .find(|l| l.starts_with(&x.address.to_string()))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        x_row[..5],
        [
            x.address.to_string(),
            "-".into(),
            "1".into(),
            "true".into(),
            "true".into()
        ],
        "address, cluster, weight, up, draining: {table}"
    );
    assert!(
        table.contains("runtime state: shared by every doorman on the same Redis"),
        "{table}"
    );
    let json = backend(&b, "list", &["--json"]);
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    for key in [
        "\"address\"",
        "\"cluster\"",
        "\"weight\"",
        "\"up\"",
        "\"draining\"",
        "\"sessions\"",
    ] {
        assert!(json.contains(key), "{json}");
    }

    assert!(backend(&a, "undrain", &[&x.address.to_string()])
        .status
        .success());
    thread::sleep(Duration::from_millis(700));
    let (to_x, _) = spread(&b, &x, &y, 4);
    assert!(to_x > 0, "X takes clients again");

    assert!(backend(&a, "weight", &[&x.address.to_string(), "0"])
        .status
        .success());
    thread::sleep(Duration::from_millis(700));
    assert_eq!(spread(&b, &x, &y, 4), (0, 4), "weight 0 drains");
    assert!(backend(&a, "undrain", &[&x.address.to_string()])
        .status
        .success());
    thread::sleep(Duration::from_millis(700));

    // An operator's weight outlives a drain, as a vhost count outlives
    // Dovecot's `doveadm director down` and `up`.
    let x_weight = |output: &std::process::Output| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.starts_with(&x.address.to_string()))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
    };
    let weighted = backend(&a, "weight", &[&x.address.to_string(), "3"]);
    assert_eq!(x_weight(&weighted).as_deref(), Some("3"), "{weighted:?}");
    assert!(backend(&a, "drain", &[&x.address.to_string()])
        .status
        .success());
    let undrained = backend(&a, "undrain", &[&x.address.to_string()]);
    assert_eq!(x_weight(&undrained).as_deref(), Some("3"), "{undrained:?}");
    thread::sleep(Duration::from_millis(700));

    // Flush: a session live on X through B ends after the grace.
    let mut doomed = session_on(&b, &x, "203.0.113.60");
    let started = Instant::now();
    assert!(backend(&a, "flush", &[&x.address.to_string()])
        .status
        .success());
    doomed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = doomed.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after the grace: {took:?}"
    );
    b.log.wait_for(
        "director: ended the session of [203.0.113.60]:40000: its backend was flushed",
        Duration::from_secs(5),
    );
    eventually("a flushed backend stays drained", || {
        spread(&b, &x, &y, 2) == (0, 2)
    });
}

#[test]
fn bad_requests_change_nothing() {
    let Some(redis) = Redis::start() else { return };
    let (x, y) = (FakeBackend::start(true), FakeBackend::start(true));
    let admin = free_port();
    let a = start(x.address, y.address, &redis, admin);
    let unknown = backend(&a, "drain", &["127.0.0.1:1"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("fatal: 127.0.0.1:1 is not a backend of the running doorman"),
        "{unknown:?}"
    );
    let heavy = backend(&a, "weight", &[&x.address.to_string(), "5000"]);
    assert!(!heavy.status.success());
    assert!(
        String::from_utf8_lossy(&heavy.stderr)
            .contains("fatal: weight 5000 is out of range: give a weight from 0 to 1000"),
        "{heavy:?}"
    );
    // A huge request head is refused by the HTTP layer, and nothing hangs.
    let mut big = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    let _ = big.write_all(format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(100_000)).as_bytes());
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(!answer.contains("200 OK"), "{answer}");
    let (to_x, to_y) = spread(&a, &x, &y, 4);
    assert!(to_x > 0 && to_y > 0, "nothing changed: {to_x} {to_y}");
}

#[test]
fn a_first_flush_reaches_every_instance() {
    let Some(redis) = Redis::start() else { return };
    let (x, y) = (FakeBackend::start(true), FakeBackend::start(true));
    let a = start(x.address, y.address, &redis, free_port());
    let b = start(x.address, y.address, &redis, free_port());
    // Let B see the backends (no state in the store yet).
    thread::sleep(Duration::from_millis(700));
    let mut live = session_on(&b, &x, "203.0.113.70");
    let started = Instant::now();
    assert!(backend(&a, "flush", &[&x.address.to_string()])
        .status
        .success());
    live.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let mut rest = Vec::new();
    let _ = live.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "B cut its session after the grace: {:?}",
        started.elapsed()
    );
    b.log.wait_for(
        "director: ended the session of [203.0.113.70]:40000",
        Duration::from_secs(5),
    );
}
