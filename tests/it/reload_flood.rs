//! Reloads during a flood: many concurrent sessions over three backends
//! while doorman is sent SIGHUP again and again, some of the reloads
//! changing the backend list. Every client gets a whole answer (its
//! message delivered, or `421 4.3.2 All server ports are busy`), never a
//! bare close; no backend ever holds more clients than its
//! `max_connections`; the backends' connection gauges return to 0; and
//! nothing panics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::*;

/// Each backend's `max_connections`.
const MAX_CONNECTIONS: usize = 3;
/// Clients connecting at once, each session after session.
const CLIENTS: usize = 40;
const BANNER: &str = "220 backend.test ESMTP fake\r\n";
const BUSY: &str = "421 4.3.2 All server ports are busy\r\n";

/// A config with `backends`, each capped at [`MAX_CONNECTIONS`], probed
/// every `interval`, with an admin listener.
fn config(backends: &[SocketAddr], interval: &str) -> String {
    let mut text = format!(
        "hostname = \"mx.doorman.test\"\n[proxy]\nhosts_file = \"haproxy_hosts\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\n[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n\
[admin]\naddress = \"127.0.0.1:0\"\n[pool]\ncheck_interval = \"{interval}\"\n"
    );
    for address in backends {
        text.push_str(&format!(
            "[[backend]]\naddress = \"{address}\"\nconnect_timeout = \"1s\"\n\
max_connections = {MAX_CONNECTIONS}\n"
        ));
    }
    text
}

/// How one session ended: delivered, refused as busy, or what went wrong.
enum Ended {
    Delivered,
    Busy,
    Broken(String),
}

/// One client session: a message, slowly enough that sessions overlap.
fn session(stream: &mut TcpStream) -> Ended {
    let banner = whole_reply(stream);
    if banner == BUSY {
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        return match rest.is_empty() {
            true => Ended::Busy,
            false => Ended::Broken(format!("after the 421: {rest:?}")),
        };
    }
    if banner != BANNER {
        return Ended::Broken(format!("banner {banner:?}"));
    }
    let steps: [(&str, &str); 7] = [
        (
            "EHLO client.test\r\n",
            "250-backend.test\r\n250 PIPELINING\r\n",
        ),
        ("MAIL FROM:<a@client.test>\r\n", "250 2.0.0 ok\r\n"),
        ("RCPT TO:<b@doorman.test>\r\n", "250 2.0.0 ok\r\n"),
        ("DATA\r\n", "354 go ahead\r\n"),
        (
            "Subject: flood\r\n\r\nhello\r\n.\r\n",
            "250 2.0.0 queued\r\n",
        ),
        ("NOOP\r\n", "250 2.0.0 ok\r\n"),
        ("QUIT\r\n", "221 2.0.0 bye\r\n"),
    ];
    for (line, expected) in steps {
        std::thread::sleep(Duration::from_millis(10));
        if stream.write_all(line.as_bytes()).is_err() {
            return Ended::Broken(format!("write of {line:?} failed"));
        }
        let answer = whole_reply(stream);
        if answer != expected {
            return Ended::Broken(format!("{line:?} got {answer:?}"));
        }
    }
    Ended::Delivered
}

/// Client sessions on this backend now (probes and closed ones aside).
/// The fake backend marks a session closed before its socket closes, so
/// this never counts one that doorman has already let go.
fn live_clients(backend: &FakeBackend) -> usize {
    backend
        .connections
        .lock()
        .unwrap()
        .iter()
        .filter(|c| {
            let c = c.lock().unwrap();
            c.probe == Some(false) && !c.closed
        })
        .count()
}

/// The `doorman_backend_connections` samples: (line, value).
fn backend_gauges(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| line.starts_with("doorman_backend_connections{"))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn sighup_during_a_flood_keeps_every_answer_the_limits_and_the_gauges() {
    let backends = [
        FakeBackend::start(true),
        FakeBackend::start(true),
        FakeBackend::start(true),
    ];
    let [a, b, c] = [0, 1, 2].map(|n| backends[n].address);
    let doorman = Doorman::start(&config(&[a, b], "200ms"), "127.0.0.1\n");
    let admin = parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(5)),
    );
    // The reloads, in turn: a backend added, one removed, one back, the
    // probe interval changed, the same list again.
    let reloads = [
        config(&[a, b, c], "200ms"),
        config(&[b, c], "200ms"),
        config(&[a, b, c], "300ms"),
        config(&[a, c], "300ms"),
        config(&[a, b, c], "300ms"),
        config(&[a, b, c], "200ms"),
        config(&[c, b, a], "200ms"),
        config(&[a, b, c], "200ms"),
    ];
    let stop = AtomicBool::new(false);
    let (delivered, busy) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let broken = Mutex::new(Vec::<String>::new());
    let peaks = Mutex::new([0usize; 3]);
    std::thread::scope(|scope| {
        for n in 0..CLIENTS {
            let (stop, delivered, busy, broken) = (&stop, &delivered, &busy, &broken);
            let doorman = &doorman;
            scope.spawn(move || {
                let client = format!("203.0.113.{}", n + 1);
                while !stop.load(Ordering::SeqCst) {
                    let mut stream = connect_as(doorman, &client);
                    match session(&mut stream) {
                        Ended::Delivered => delivered.fetch_add(1, Ordering::SeqCst),
                        Ended::Busy => {
                            std::thread::sleep(Duration::from_millis(20));
                            busy.fetch_add(1, Ordering::SeqCst)
                        }
                        Ended::Broken(why) => {
                            broken.lock().unwrap().push(format!("{client}: {why}"));
                            0
                        }
                    };
                }
            });
        }
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let mut peaks = peaks.lock().unwrap();
                for (peak, backend) in peaks.iter_mut().zip(&backends) {
                    *peak = (*peak).max(live_clients(backend));
                }
                drop(peaks);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        for (n, text) in reloads.iter().enumerate() {
            std::fs::write(doorman.config_path(), text).unwrap();
            signal(doorman.child.id(), "HUP");
            doorman
                .log
                .wait_for_count("reloaded", n + 1, Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(400));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let broken = broken.into_inner().unwrap();
    let (delivered, busy) = (delivered.into_inner(), busy.into_inner());
    let peaks = peaks.into_inner().unwrap();
    assert!(
        broken.is_empty(),
        "{} sessions without a whole answer ({delivered} delivered, {busy} busy):\n{}",
        broken.len(),
        broken.join("\n")
    );
    assert!(
        delivered > 50 && busy > 0,
        "the flood must fill the backends: {delivered} delivered, {busy} busy"
    );
    assert!(
        peaks.iter().all(|&peak| peak <= MAX_CONNECTIONS),
        "a backend held more than {MAX_CONNECTIONS} clients: {peaks:?}"
    );
    assert!(
        peaks.iter().all(|&peak| peak > 0),
        "every backend served: {peaks:?}"
    );
    // Every backend's gauge returns to 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gauges = backend_gauges(&crate::support::metrics(admin));
        assert_eq!(gauges.len(), 3, "{gauges:?}");
        if gauges.iter().all(|(_, value)| *value == 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "gauges stay up: {gauges:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let panics = doorman.log.matching("panicked");
    assert!(panics.is_empty(), "{panics:?}");
    eprintln!(
        "reload flood: {delivered} delivered, {busy} busy, peaks {peaks:?}, {} reloads",
        reloads.len()
    );
}
