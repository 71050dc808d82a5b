//! The backend pool: weighted roundrobin, leastconn, source hashing, active
//! health checks with rise and fall, failover within one client connection,
//! and per-backend connection limits.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::support::*;
use doorman::proxy::{self, Header, Parsed};

const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

fn pool_config(backends: &[(std::net::SocketAddr, &str)], pool: &str) -> String {
    let mut text = String::from(
        "hostname = \"mx.doorman.test\"\n[proxy]\nhosts_file = \"haproxy_hosts\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n",
    );
    text.push_str(&format!("[pool]\n{pool}\n"));
    for (address, extra) in backends {
        text.push_str(&format!(
            "[[backend]]\naddress = \"{address}\"\nconnect_timeout = \"1s\"\n{extra}\n"
        ));
    }
    text
}

/// A client that gets the backend's banner, says QUIT and is done.
fn visit(doorman: &Doorman, client: &str) {
    let mut stream = connect_as(doorman, client);
    assert_eq!(read_line(&mut stream), BACKEND);
    stream.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_line(&mut stream), "221 2.0.0 bye\r\n");
}

/// The client address in the header of each client connection a backend got.
fn clients_of(backend: &FakeBackend) -> Vec<IpAddr> {
    (0..backend.count())
        .map(|n| match proxy::parse(&backend.wait_bytes(n, 16)) {
            Ok(Parsed::Complete {
                header: Header::Proxied { source, .. },
                ..
            }) => source.ip(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn weighted_roundrobin() {
    let a = FakeBackend::start(true);
    let b = FakeBackend::start(true);
    let doorman = Doorman::start(
        &pool_config(
            &[(a.address, "weight = 1"), (b.address, "weight = 2")],
            "balance = \"roundrobin\"",
        ),
        "127.0.0.1\n",
    );
    for n in 0..6 {
        visit(&doorman, &format!("203.0.113.{n}"));
    }
    assert_eq!((a.count(), b.count()), (2, 4));
}

#[test]
fn leastconn_prefers_the_idle_backend() {
    let a = FakeBackend::start(true);
    let b = FakeBackend::start(true);
    let doorman = Doorman::start(
        &pool_config(
            &[(a.address, ""), (b.address, "weight = 2")],
            "balance = \"leastconn\"",
        ),
        "127.0.0.1\n",
    );
    // Every client stays connected, so the counts are exact: A (weight 1)
    // and B (weight 2) fill up at one connection per unit of weight.
    let mut held = Vec::new();
    let mut expected = Vec::new();
    for (n, goes_to) in [(1, "a"), (2, "b"), (3, "b"), (4, "a"), (5, "b"), (6, "b")] {
        let mut client = connect_as(&doorman, &format!("203.0.113.{n}"));
        assert_eq!(read_line(&mut client), BACKEND);
        held.push(client);
        expected.push(goes_to);
        let counts = expected.iter().fold(
            (0, 0),
            |(x, y), g| if *g == "a" { (x + 1, y) } else { (x, y + 1) },
        );
        assert_eq!((a.count(), b.count()), counts, "after client {n}");
    }
}

#[test]
fn source_hashing_keeps_each_client_on_its_backend() {
    let backends: Vec<FakeBackend> = (0..3).map(|_| FakeBackend::start(true)).collect();
    let doorman = Doorman::start(
        &pool_config(
            &backends.iter().map(|b| (b.address, "")).collect::<Vec<_>>(),
            "balance = \"source\"",
        ),
        "127.0.0.1\n",
    );
    for round in 0..2 {
        for n in 0..30 {
            visit(&doorman, &format!("203.0.113.{}", 100 + n));
        }
        let _ = round;
    }
    let mut seen = 0;
    for backend in &backends {
        let clients = clients_of(backend);
        seen += clients.len();
        for ip in &clients {
            assert_eq!(
                clients.iter().filter(|c| *c == ip).count(),
                2,
                "{ip} came back to the same backend"
            );
        }
    }
    assert_eq!(seen, 60);
    assert!(
        backends.iter().all(|b| b.count() > 0),
        "all three get a share"
    );
}

#[test]
fn health_checks_take_a_backend_out_and_back_and_clients_fail_over() {
    let (reserved, a_address) = dead_address();
    let b = FakeBackend::start(true);
    let doorman = Doorman::start(
        &pool_config(
            &[(a_address, ""), (b.address, "")],
            "check_interval = \"200ms\"\nrise = 2\nfall = 2",
        ),
        "127.0.0.1\n",
    );
    doorman.log.wait_for(
        &format!("warning: backend {a_address} is DOWN"),
        Duration::from_secs(5),
    );
    for n in 0..4 {
        visit(&doorman, &format!("203.0.113.{n}"));
    }
    assert_eq!(b.count(), 4, "the dead backend gets no client");

    drop(reserved);
    let a = FakeBackend::start_on(a_address, true);
    doorman.log.wait_for(
        &format!("backend {a_address} is UP"),
        Duration::from_secs(5),
    );
    for n in 10..14 {
        visit(&doorman, &format!("203.0.113.{n}"));
    }
    assert_eq!(a.count(), 2, "back in rotation after rise checks");

    // A backend that dies between checks: the client falls over to the
    // next one within its own connection.
    a.stop();
    for n in 20..22 {
        visit(&doorman, &format!("203.0.113.{n}"));
    }
    doorman.log.wait_for(
        &format!("warning: cannot connect to service {a_address}"),
        Duration::from_secs(5),
    );
    assert_eq!(a.count(), 2);
}

/// A backend whose listener accepts but whose smtpd dies before it greets
/// a client (as when Postfix's master accepts and each smtpd exits on a
/// fatal error), while doorman's health checks (PROXY v2 LOCAL) still get a
/// full dialogue.
fn dies_before_greeting() -> SocketAddr {
    scripted_backend(
        |check| check.then_some(b"220 half-dead.test ESMTP\r\n"),
        |line| {
            if line.starts_with("QUIT") {
                b"221 bye\r\n"
            } else {
                b"250 half-dead.test\r\n"
            }
        },
    )
}

#[test]
fn a_backend_that_dies_before_greeting_passes_the_client_on() {
    let half_dead = dies_before_greeting();
    let b = FakeBackend::start(true);
    let doorman = Doorman::start(
        &pool_config(
            &[(half_dead, ""), (b.address, "")],
            "balance = \"roundrobin\"\ncheck_interval = \"1h\"\nfall = 100",
        ),
        "127.0.0.1\n",
    );
    for n in 0..4 {
        visit(&doorman, &format!("203.0.113.{n}"));
    }
    assert_eq!(b.count(), 4, "every client was served by the live backend");
    assert_eq!(
        doorman
            .log
            .matching(&format!(
                "warning: cannot connect to service {half_dead}: backend closed the connection"
            ))
            .len(),
        2,
        "the half-dead backend's turns were logged"
    );
}

#[test]
fn max_connections_per_backend() {
    let a = FakeBackend::start(true);
    let doorman = Doorman::start(
        &pool_config(&[(a.address, "max_connections = 1")], ""),
        "127.0.0.1\n",
    );
    let mut held = connect_as(&doorman, "203.0.113.1");
    assert_eq!(read_line(&mut held), BACKEND);
    let mut refused = connect_as(&doorman, "203.0.113.2");
    assert_eq!(
        read_to_close(&mut refused),
        "421 4.3.2 All server ports are busy\r\n"
    );
    held.write_all(b"QUIT\r\n").unwrap();
    read_to_close(&mut held);
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    visit(&doorman, "203.0.113.3");
}

#[test]
fn xclient_against_real_postfix_smtpd() {
    let Some(postfix) = Postfix::start("smtpd_authorized_xclient_hosts = 127.0.0.0/8", "") else {
        return;
    };
    let doorman = Doorman::start(
        &pool_config(&[(postfix.address(), "send_proxy = \"xclient\"")], ""),
        "127.0.0.1\n",
    );
    let mut client = connect_as(&doorman, "203.0.113.77");
    // The fresh 220 that XCLIENT brings is the client's greeting.
    assert_eq!(
        read_line(&mut client),
        "220 backend.postfix.test ESMTP Postfix\r\n"
    );
    client.write_all(b"HELO client.test\r\n").unwrap();
    assert_eq!(read_line(&mut client), "250 backend.postfix.test\r\n");
    client.write_all(b"MAIL FROM:<a@client.test>\r\n").unwrap();
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    client.write_all(b"RCPT TO:<b@elsewhere.test>\r\n").unwrap();
    assert!(read_line(&mut client).starts_with("554 5.7.1 <b@elsewhere.test>: Relay access denied"));
    client.write_all(b"QUIT\r\n").unwrap();
    read_to_close(&mut client);
    // Postfix's own log names the real client.
    postfix.wait_for_log(
        "NOQUEUE: reject: RCPT from unknown[203.0.113.77]",
        Duration::from_secs(10),
    );
    postfix.wait_for_log(
        "disconnect from unknown[203.0.113.77]",
        Duration::from_secs(10),
    );
}

#[test]
fn xclient_refused_when_not_authorized() {
    let Some(postfix) = Postfix::start("", "") else {
        return;
    };
    let doorman = Doorman::start(
        &pool_config(&[(postfix.address(), "send_proxy = \"xclient\"")], ""),
        "127.0.0.1\n",
    );
    let mut client = connect_as(&doorman, "203.0.113.78");
    assert_eq!(
        read_to_close(&mut client),
        "421 4.3.2 All server ports are busy\r\n"
    );
    let line = doorman
        .log
        .wait_for("XCLIENT not announced in EHLO", Duration::from_secs(10));
    assert!(
        line.contains(&format!("cannot connect to service {}", postfix.address())),
        "{line}"
    );
}

#[test]
fn a_client_that_never_closes_is_let_go_after_its_backend_finished() {
    let a = FakeBackend::start(true);
    let doorman = Doorman::start(
        &pool_config(&[(a.address, "max_connections = 1")], ""),
        "127.0.0.1\n",
    );
    let mut stays = connect_as(&doorman, "203.0.113.1");
    assert_eq!(read_line(&mut stays), BACKEND);
    stays.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_to_close(&mut stays), "221 2.0.0 bye\r\n");
    // `stays` keeps its socket open: its place at the backend is held...
    let mut refused = connect_as(&doorman, "203.0.113.2");
    assert_eq!(
        read_to_close(&mut refused),
        "421 4.3.2 All server ports are busy\r\n"
    );
    // ...until the linger after the backend finished (10 s) runs out.
    std::thread::sleep(doorman::handoff::relay::LINGER + Duration::from_secs(1));
    visit(&doorman, "203.0.113.3");
    drop(stays);
}

#[test]
fn a_backend_that_serves_clients_is_not_probed() {
    let a = FakeBackend::start(true);
    let doorman = Doorman::start(
        &pool_config(&[(a.address, "")], "check_interval = \"1s\""),
        "127.0.0.1\n",
    );
    // Clients every 200 ms for 3 s: the backend is seen up without probes.
    let probes = a.probes();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        visit(&doorman, "203.0.113.80");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.probes() <= probes + 1, "{} probes", a.probes() - probes);
    // Idle, it is probed every interval again.
    let probes = a.probes();
    std::thread::sleep(Duration::from_millis(3500));
    assert!(a.probes() >= probes + 2, "{} probes", a.probes() - probes);
}

/// A reload keeps a backend's live sessions counted: `max_connections`
/// still holds after SIGHUP, and a backend the reload removed is no longer
/// probed while its sessions finish.
#[test]
fn a_reload_keeps_the_live_sessions_counted_and_stops_probing_what_it_removed() {
    let a = FakeBackend::start(true);
    let b = FakeBackend::start(true);
    let both = pool_config(
        &[
            (a.address, "max_connections = 1"),
            (b.address, "max_connections = 1\nweight = 0"),
        ],
        "check_interval = \"200ms\"",
    );
    let doorman = Doorman::start(&both, "127.0.0.1\n");
    let mut held = connect_as(&doorman, "203.0.113.1");
    assert_eq!(read_line(&mut held), BACKEND);
    let reload = |text: &str, count: usize| {
        std::fs::write(doorman.config_path(), text).unwrap();
        signal(doorman.child.id(), "HUP");
        doorman
            .log
            .wait_for_count("reloaded", count, Duration::from_secs(10));
    };
    reload(
        &both.replace("check_interval = \"200ms\"", "check_interval = \"300ms\""),
        1,
    );
    let mut refused = connect_as(&doorman, "203.0.113.2");
    assert_eq!(
        read_to_close(&mut refused),
        "421 4.3.2 All server ports are busy\r\n",
        "the session the old config started still counts"
    );
    // A reload that removes A: its session carries on, and nobody probes
    // it any more.
    reload(
        &pool_config(&[(b.address, "")], "check_interval = \"200ms\""),
        2,
    );
    std::thread::sleep(Duration::from_millis(500));
    let probes = a.probes();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(a.probes(), probes, "the removed backend is not probed");
    held.write_all(b"NOOP\r\n").unwrap();
    assert_eq!(read_line(&mut held), "250 2.0.0 ok\r\n");
    held.write_all(b"QUIT\r\n").unwrap();
    read_to_close(&mut held);
}
