//! A slow disk under the embedded store, under a flood of new clients:
//! every fsync of doorman's process takes [`SYNC_DELAY_MS`] (a preloaded
//! shim that sleeps before the real `fsync`/`fdatasync`), so each commit
//! of the redb file lags by at least that much. The serving threads never
//! wait for it: every client gets its teaser and its backend's banner
//! within a bound well below one commit, while `/metrics` shows how long
//! the writes waited.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// How long each fsync of doorman's process takes.
const SYNC_DELAY_MS: u64 = 1500;
/// Clients connecting at once, each a new address every session.
const CLIENTS: usize = 30;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(5);
/// The greet wait every new client sits through.
const WAIT_MS: u64 = 200;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
static void slow(void) {
    const char *ms = getenv("SLOW_SYNC_MS");
    long n = ms ? atol(ms) : 0;
    struct timespec t = { n / 1000, (n % 1000) * 1000000L };
    nanosleep(&t, NULL);
}
int fdatasync(int fd) {
    slow();
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
int fsync(int fd) {
    slow();
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
"#;

/// Builds the shim in `dir`; `None` (the test skips) without a C compiler,
/// outside CI.
fn build_shim(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    if !require_program("cc") {
        return None;
    }
    let source = dir.join("slowsync.c");
    let library = dir.join("slowsync.so");
    std::fs::write(&source, SHIM).unwrap();
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(built.success(), "the shim did not build");
    Some(library)
}

/// A gauge's value on `/metrics` of the admin listener.
fn gauge(admin: SocketAddr, name: &str) -> f64 {
    let text = crate::support::metrics(admin);
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The `q` quantile of `samples` (sorted in place).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    let at = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[at]
}

#[test]
fn a_slow_disk_never_holds_up_the_serving_threads() {
    let shim_dir = tempfile::tempdir().unwrap();
    let Some(shim) = build_shim(shim_dir.path()) else {
        return;
    };
    let backend = FakeBackend::start(true);
    let sections = format!(
        "[greet]\nwait = \"{WAIT_MS}ms\"\n[cache]\nstore = \"embedded\"\n\
flush_interval = \"100ms\"\n[admin]\naddress = \"127.0.0.1:0\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    std::fs::write(
        dir.path().join("doorman.toml"),
        config_with(backend.address, "v2", "", "5s", &sections),
    )
    .unwrap();
    let delay = SYNC_DELAY_MS.to_string();
    let doorman = Doorman::start_in_with_env(
        Arc::new(dir),
        &[
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("SLOW_SYNC_MS", delay.as_str()),
        ],
    );
    let admin = parse_endpoint(
        &doorman
            .log
            .wait_for("admin listening on", Duration::from_secs(10)),
    );
    let stop = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let teasers = Mutex::new(Vec::<Duration>::new());
    let banners = Mutex::new(Vec::<Duration>::new());
    let broken = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let client = format!("10.{}.{}.{}", n / 65536 % 256, n / 256 % 256, n % 256);
                    let started = Instant::now();
                    let mut stream = connect_as(&doorman, &client);
                    let teaser = read_line(&mut stream);
                    let teased = started.elapsed();
                    let banner = read_line(&mut stream);
                    let greeted = started.elapsed();
                    stream.write_all(b"QUIT\r\n").unwrap();
                    let bye = read_line(&mut stream);
                    if teaser != "220-mx.doorman.test ESMTP\r\n"
                        || banner != "220 backend.test ESMTP fake\r\n"
                        || bye != "221 2.0.0 bye\r\n"
                    {
                        broken
                            .lock()
                            .unwrap()
                            .push(format!("{client}: {teaser:?} {banner:?} {bye:?}"));
                    }
                    teasers.lock().unwrap().push(teased);
                    banners.lock().unwrap().push(greeted);
                }
            });
        }
        std::thread::sleep(FLOOD);
        stop.store(true, Ordering::SeqCst);
    });
    let broken = broken.into_inner().unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    let (mut teasers, mut banners) = (teasers.into_inner().unwrap(), banners.into_inner().unwrap());
    let sessions = teasers.len();
    // Let the last commit land, then read what the writes went through.
    std::thread::sleep(Duration::from_millis(3 * SYNC_DELAY_MS + 500));
    let commit = gauge(admin, "doorman_cache_commit_seconds");
    let lag = gauge(admin, "doorman_cache_write_lag_max_seconds");
    let teaser_p99 = quantile(&mut teasers, 0.99);
    let teaser_max = quantile(&mut teasers, 1.0);
    let banner_p99 = quantile(&mut banners, 0.99);
    let banner_max = quantile(&mut banners, 1.0);
    let measured = format!(
        "{sessions} sessions of {CLIENTS} clients in {FLOOD:?}, fsync {SYNC_DELAY_MS} ms: \
         last commit {commit:.3} s, longest write lag {lag:.3} s; \
         teaser p99 {teaser_p99:?} max {teaser_max:?}, \
         backend banner p99 {banner_p99:?} max {banner_max:?} (greet wait {WAIT_MS} ms)"
    );
    eprintln!("slow store: {measured}");
    let sync = Duration::from_millis(SYNC_DELAY_MS).as_secs_f64();
    assert!(commit >= sync, "the writes were not slow: {measured}");
    assert!(lag >= sync, "the writes did not lag: {measured}");
    assert!(sessions >= 100, "too few sessions: {measured}");
    // The serving threads answer within a bound well below one commit.
    let bound = Duration::from_millis(SYNC_DELAY_MS / 2);
    assert!(teaser_max < bound, "a teaser waited: {measured}");
    assert!(
        banner_max < bound + Duration::from_millis(WAIT_MS),
        "a banner waited: {measured}"
    );
    let panics = doorman.log.matching("panicked");
    assert!(panics.is_empty(), "{panics:?}");
}
