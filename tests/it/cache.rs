//! The pass cache across restarts (embedded redb store) and across a fleet
//! (Redis, with Debian's real redis-server), merged DNSBL lookups counted
//! in rbldnsd's query log, cleanup, and the `doorman cache` commands.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

const TEASER: &str = "220-mx.doorman.test ESMTP\r\n";
const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

/// Connects as `client` and returns its greeting lines up to the backend's.
fn greeting(doorman: &Doorman, client: &str) -> String {
    let mut stream = connect_as(doorman, client);
    let mut seen = String::new();
    loop {
        let line = read_line(&mut stream);
        seen.push_str(&line);
        if line.is_empty() || line.starts_with("220 ") {
            return seen;
        }
    }
}

fn cache_config(backend: &FakeBackend, cache: &str, dnsbl: &str) -> String {
    config_with(
        backend.address,
        "v2",
        "",
        "5s",
        &format!("[greet]\nwait = \"1s\"\n[cache]\n{cache}\n{dnsbl}"),
    )
}

fn doorman_cache(doorman: &Doorman, args: &[&str]) -> String {
    stdout_of(
        Command::new(doorman_bin())
            .arg("cache")
            .arg(args[0])
            .arg("--config")
            .arg(doorman.config_path())
            .args(&args[1..]),
    )
}

#[test]
fn embedded_store_survives_sigterm_and_kill9() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(
        &cache_config(
            &backend,
            "store = \"embedded\"\nflush_interval = \"200ms\"",
            "",
        ),
        "127.0.0.1\n",
    );
    assert_eq!(
        greeting(&doorman, "203.0.113.50"),
        format!("{TEASER}{BACKEND}")
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.50]", Duration::from_secs(5));
    // A clean stop right away loses nothing, even within the flush interval.
    let dir = doorman.stop();
    let doorman = Doorman::start_in(dir);
    assert_eq!(greeting(&doorman, "203.0.113.50"), BACKEND);
    doorman
        .log
        .wait_for("PASS OLD [203.0.113.50]", Duration::from_secs(5));

    // kill -9 after the flush interval: the entry is there, the file opens.
    assert_eq!(
        greeting(&doorman, "203.0.113.51"),
        format!("{TEASER}{BACKEND}")
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.51]", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(700));
    let dir = doorman.kill9();
    let doorman = Doorman::start_in(dir);
    assert_eq!(greeting(&doorman, "203.0.113.51"), BACKEND);
    assert_eq!(greeting(&doorman, "203.0.113.50"), BACKEND);
    doorman
        .log
        .wait_for("PASS OLD [203.0.113.51]", Duration::from_secs(5));
}

#[test]
fn cache_commands_on_a_running_embedded_store() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(
        &cache_config(&backend, "flush_interval = \"100ms\"", ""),
        "127.0.0.1\n",
    );
    assert_eq!(
        greeting(&doorman, "203.0.113.60"),
        format!("{TEASER}{BACKEND}")
    );
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.60]", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(400));
    let got = doorman_cache(&doorman, &["get", "203.0.113.60"]);
    assert!(
        got.starts_with("203.0.113.60: pregreet passed until 20"),
        "{got}"
    );
    assert!(got.contains("dnsbl passed never"), "{got}");
    let stats = doorman_cache(&doorman, &["stats"]);
    assert!(
        stats.contains("store: embedded:") && stats.contains("entries: 1"),
        "{stats}"
    );
    let deleted = doorman_cache(&doorman, &["delete", "203.0.113.60"]);
    assert!(deleted.starts_with("203.0.113.60: deleted"), "{deleted}");
    // The running doorman tests the address again.
    assert_eq!(
        greeting(&doorman, "203.0.113.60"),
        format!("{TEASER}{BACKEND}")
    );
    let missing = doorman_cache(&doorman, &["get", "203.0.113.99"]);
    assert!(missing.contains("not in the cache"), "{missing}");
}

#[test]
fn cleanup_drops_only_entries_past_retention() {
    let (_backend, doorman) = behind_fake_backend("[greet]\nwait = \"500ms\"\nttl = \"1s\"\n[cache]\nflush_interval = \"100ms\"\ncleanup_interval = \"2s\"\nretention_time = \"1s\"\n");
    greeting(&doorman, "203.0.113.70");
    doorman
        .log
        .wait_for("PASS NEW [203.0.113.70]", Duration::from_secs(5));
    // The pass expires after 1s and is kept 1s more; the first cleanup at
    // 2s may still retain it, a later one drops it.
    let line = doorman
        .log
        .wait_for("dropped=1 entries", Duration::from_secs(10));
    assert!(line.contains("cache embedded:"), "{line}");
    assert!(
        line.contains("full cleanup: retained=0 dropped=1 entries"),
        "{line}"
    );
}

const SITES: &str = "[dnsbl]\nsites = [\"bl.test=127.0.0.[2..11]*2\", \"bl2.test*1\"]\nthreshold = 2\ntimeout = \"2s\"\n";

#[test]
fn merged_lookups_one_query_per_site() {
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(
        &cache_config(
            &backend,
            "store = \"memory\"",
            &format!("{SITES}nameservers = [\"{}\"]\n", dns.address),
        ),
        "127.0.0.1\n",
    );
    let mut clients: Vec<_> = (0..10)
        .map(|_| connect_as(&doorman, "203.0.113.9"))
        .collect();
    for client in &mut clients {
        assert_eq!(read_line(client), TEASER);
    }
    doorman
        .log
        .wait_for("DNSBL rank 3 for [203.0.113.9]", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(dns.queries("9.113.0.203.bl.test"), 1);
    assert_eq!(dns.queries("9.113.0.203.bl2.test"), 1);
}

fn redis_config(backend: &FakeBackend, redis: &Redis, dns: &Rbldnsd) -> String {
    cache_config(
        backend,
        &format!(
            "store = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"t:\"",
            redis.url()
        ),
        &format!("{SITES}nameservers = [\"{}\"]\n", dns.address),
    )
}

#[test]
fn redis_shares_passes_and_dns_answers_between_instances() {
    let Some(dns) = Rbldnsd::start() else { return };
    let Some(redis) = Redis::start() else { return };
    let backend = FakeBackend::start(true);
    let a = Doorman::start(&redis_config(&backend, &redis, &dns), "127.0.0.1\n");
    let b = Doorman::start(&redis_config(&backend, &redis, &dns), "127.0.0.1\n");

    assert_eq!(greeting(&a, "203.0.113.80"), format!("{TEASER}{BACKEND}"));
    a.log
        .wait_for("PASS NEW [203.0.113.80]", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(greeting(&b, "203.0.113.80"), BACKEND);
    b.log
        .wait_for("PASS OLD [203.0.113.80]", Duration::from_secs(5));

    // A listed client is never cached as passed, so B screens it again, but
    // takes the DNS answers A fetched from Redis.
    assert_eq!(greeting(&a, "203.0.113.7"), format!("{TEASER}{BACKEND}"));
    a.log
        .wait_for("DNSBL rank 3 for [203.0.113.7]", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(greeting(&b, "203.0.113.7"), format!("{TEASER}{BACKEND}"));
    b.log
        .wait_for("DNSBL rank 3 for [203.0.113.7]", Duration::from_secs(5));
    assert_eq!(
        dns.queries("7.113.0.203.bl.test"),
        1,
        "B asked Redis, not DNS"
    );
    assert_eq!(dns.queries("7.113.0.203.bl2.test"), 1);

    let stats = doorman_cache(&a, &["stats"]);
    assert!(
        stats.contains(&format!("store: redis:{}", redis.url())),
        "{stats}"
    );
    assert!(stats.contains("entries: 1"), "{stats}");
    let got = doorman_cache(&b, &["get", "203.0.113.80"]);
    assert!(got.contains("pregreet passed until"), "{got}");
    assert!(doorman_cache(&b, &["delete", "203.0.113.80"]).contains("deleted"));
    assert_eq!(
        greeting(&a, "203.0.113.80"),
        format!("{TEASER}{BACKEND}"),
        "tested again"
    );
}

#[test]
fn redis_outage_falls_back_and_recovers() {
    let Some(dns) = Rbldnsd::start() else { return };
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let backend = FakeBackend::start(true);
    let a = Doorman::start(&redis_config(&backend, &redis, &dns), "127.0.0.1\n");
    let b = Doorman::start(&redis_config(&backend, &redis, &dns), "127.0.0.1\n");
    redis.stop();
    for n in 0..3 {
        let started = Instant::now();
        assert_eq!(
            greeting(&a, &format!("203.0.113.{}", 90 + n)),
            format!("{TEASER}{BACKEND}")
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "served within the greet wait: {:?}",
            started.elapsed()
        );
    }
    a.log
        .wait_for("using the local memory cache", Duration::from_secs(5));
    assert_eq!(
        a.log.matching("using the local memory cache").len(),
        1,
        "logged once"
    );
    // A's own memory still knows the client it passed during the outage.
    assert_eq!(greeting(&a, "203.0.113.90"), BACKEND);

    // Redis comes back empty (no persistence): A writes back the three
    // passes it made meanwhile, so B, which never saw those clients, knows
    // them too.
    redis.restart();
    a.log.wait_for(
        "is back; sharing resumes (3 passes it lacked written back)",
        Duration::from_secs(10),
    );
    b.log
        .wait_for("is back; sharing resumes", Duration::from_secs(10));
    assert_eq!(greeting(&b, "203.0.113.91"), BACKEND);
    b.log
        .wait_for("PASS OLD [203.0.113.91]", Duration::from_secs(5));
    assert_eq!(greeting(&a, "203.0.113.95"), format!("{TEASER}{BACKEND}"));
    a.log
        .wait_for("PASS NEW [203.0.113.95]", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(greeting(&b, "203.0.113.95"), BACKEND);
}
