//! Limits that count networks, not addresses: the per-client limit over an
//! IPv6 /64, a flood of distinct addresses from one /64 held to its
//! screening places while a clean client still gets one, and the
//! connection rate with smtpd's reply and log line.

use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

const TEASER: &str = "220-mx.doorman.test ESMTP\r\n";

fn doorman(limits: &str) -> (FakeBackend, Doorman) {
    let sections = format!(
        "[greet]\nbanner = \"mx.doorman.test ESMTP\"\nwait = \"5s\"\n[cache]\nstore = \"memory\"\n\
[access]\nfile = \"access\"\n[limits]\n{limits}\n"
    );
    let backend = FakeBackend::start(true);
    let config = config_with(backend.address, "v2", "", "5s", &sections);
    let doorman = Doorman::start_with_files(
        &config,
        &[
            ("haproxy_hosts", "127.0.0.1\n"),
            ("access", "198.51.100.1 permit\n"),
        ],
    );
    (backend, doorman)
}

/// Connects as `client` and returns the stream with its first line.
fn first_line(doorman: &Doorman, client: &str) -> (TcpStream, String) {
    let mut stream = connect_as(doorman, client);
    let line = read_line(&mut stream);
    (stream, line)
}

#[test]
fn one_ipv6_64_is_one_client() {
    let (_backend, doorman) = doorman("client_connections = 2");
    let (_a, a) = first_line(&doorman, "2001:db8:1:2::a");
    let (_b, b) = first_line(&doorman, "2001:db8:1:2:ffff::b");
    assert_eq!((a.as_str(), b.as_str()), (TEASER, TEASER));
    let (_c, c) = first_line(&doorman, "2001:db8:1:2::c");
    assert_eq!(c, "421 4.7.0 Error: too many connections\r\n");
    doorman.log.wait_for(
        "NOQUEUE: reject: CONNECT from [2001:db8:1:2::c]:40000: too many connections",
        Duration::from_secs(5),
    );
    let (_d, d) = first_line(&doorman, "2001:db8:1:3::d");
    assert_eq!(d, TEASER, "the next /64 is another client");
}

#[test]
fn a_flood_from_one_64_keeps_to_its_screening_places() {
    let (_backend, doorman) = doorman("screening = 50\nscreening_per_network = 3");
    let mut held = Vec::new();
    let mut refused = 0;
    for n in 1..=40 {
        let (stream, line) = first_line(&doorman, &format!("2001:db8:bad:1::{n:x}"));
        if line == TEASER {
            held.push(stream);
        } else {
            assert_eq!(line, "421 4.3.2 All screening ports are busy\r\n");
            refused += 1;
        }
    }
    assert_eq!((held.len(), refused), (3, 37));
    doorman.log.wait_for(
        "reject: connect from [2001:db8:bad:1::4]:40000: all screening ports busy for network 2001:db8:bad:1::/64",
        Duration::from_secs(5),
    );
    // A clean client from elsewhere still gets a place.
    let (_clean, line) = first_line(&doorman, "203.0.113.5");
    assert_eq!(line, TEASER);
    // Once the flood's clients go, their network's places are free again.
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let (_again, line) = first_line(&doorman, "2001:db8:bad:1::99");
    assert_eq!(line, TEASER);
}

#[test]
fn the_connection_rate_counts_per_network_with_smtpds_reply() {
    let (_backend, doorman) = doorman("ipv4_prefix = 24\nconnection_rate = 3");
    for n in 1..=3 {
        let (_stream, line) = first_line(&doorman, &format!("203.0.113.{n}"));
        assert_eq!(line, TEASER);
    }
    let (_fourth, line) = first_line(&doorman, "203.0.113.4");
    assert_eq!(
        line,
        "421 4.7.0 mx.doorman.test Error: too many connections from 203.0.113.4\r\n"
    );
    doorman.log.wait_for(
        "warning: Connection rate limit exceeded: 4 from unknown[203.0.113.4] for service smtp",
        Duration::from_secs(5),
    );
    // Another network, an allowlisted client and health checks are not
    // held to the rate.
    let (_other, line) = first_line(&doorman, "203.0.114.1");
    assert_eq!(line, TEASER);
    for _ in 0..5 {
        let (_allowed, line) = first_line(&doorman, "198.51.100.1");
        assert_eq!(line, "220 backend.test ESMTP fake\r\n");
    }
}

#[test]
fn cycling_through_the_64s_of_one_48_meets_the_wider_rate() {
    // connection_rate 1: each /64 may open one connection a minute, its
    // /48 sixteen (the documented factor).
    let (_backend, doorman) = doorman("connection_rate = 1");
    let mut held = Vec::new();
    for n in 0..16 {
        let (stream, line) = first_line(&doorman, &format!("2001:db8:48:{n:x}::1"));
        assert_eq!(line, TEASER, "/64 number {n}");
        held.push(stream);
    }
    let (_next, line) = first_line(&doorman, "2001:db8:48:ff::1");
    assert_eq!(
        line,
        "421 4.7.0 mx.doorman.test Error: too many connections from 2001:db8:48:ff::1\r\n"
    );
    doorman.log.wait_for(
        "warning: Connection rate limit exceeded: 17 from unknown[2001:db8:48:ff::1] for service smtp (network 2001:db8:48::/48)",
        Duration::from_secs(5),
    );
    let (_other, line) = first_line(&doorman, "2001:db8:49::1");
    assert_eq!(line, TEASER, "another /48");
}

#[test]
fn the_connection_rate_counts_clients_with_no_test_due() {
    // No teaser, no DNSBL, no deep test: nothing is due, and no client has
    // a record, so each is still counted.
    let backend = FakeBackend::start(true);
    let config = config_with(
        backend.address,
        "v2",
        "",
        "5s",
        "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[limits]\nipv4_prefix = 24\nconnection_rate = 2\n",
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    for n in 1..=2 {
        let (_stream, line) = first_line(&doorman, &format!("203.0.113.{n}"));
        assert_eq!(line, "220 backend.test ESMTP fake\r\n");
    }
    let (_third, line) = first_line(&doorman, "203.0.113.3");
    assert_eq!(
        line,
        "421 4.7.0 mx.doorman.test Error: too many connections from 203.0.113.3\r\n"
    );
    doorman.log.wait_for(
        "warning: Connection rate limit exceeded: 3 from unknown[203.0.113.3] for service smtp",
        Duration::from_secs(5),
    );
}

#[test]
fn a_flood_from_one_24_over_many_threads_takes_exactly_its_places() {
    // Four serving threads, each with its own listening socket, and eight
    // client threads connecting at once: the per-network places are one
    // count for the whole process, whichever thread accepts a client.
    let (_backend, doorman) = doorman(
        "ipv4_prefix = 24\nscreening = 500\nscreening_per_network = 5\n[runtime]\nmodel = \"per-core\"\nthreads = 4",
    );
    // The serving threads start right after the listening line.
    let serving_threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/task", doorman.child.id()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .filter(|name| name.starts_with("doorman-"))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while serving_threads().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        serving_threads().len(),
        3,
        "serving threads besides the main one: {:?}",
        serving_threads()
    );
    let start = std::sync::Barrier::new(8);
    let answered: Vec<(TcpStream, String)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|thread| {
                let (start, doorman) = (&start, &doorman);
                scope.spawn(move || {
                    start.wait();
                    (1..=25)
                        .map(|n| first_line(doorman, &format!("203.0.113.{}", thread * 25 + n)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|client| client.join().unwrap())
            .collect()
    });
    let held = answered.iter().filter(|(_, line)| line == TEASER).count();
    let refused = answered
        .iter()
        .filter(|(_, line)| line == "421 4.3.2 All screening ports are busy\r\n")
        .count();
    assert_eq!((held, refused), (5, 195));
    // The kernel spread the flood: several threads woke for it.
    let busy = std::fs::read_dir(format!("/proc/{}/task", doorman.child.id()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .filter(|status| status.contains("Name:\tdoorman"))
        .filter_map(|status| {
            let line = status
                .lines()
                .find(|l| l.starts_with("voluntary_ctxt_switches"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .filter(|&switches| switches >= 10)
        .count();
    assert!(busy >= 2, "only {busy} serving threads woke for the flood");
    // Another /24 still gets a place.
    let (_clean, line) = first_line(&doorman, "203.0.114.1");
    assert_eq!(line, TEASER);
}
