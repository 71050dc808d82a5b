//! The shared store survives a master failure: Debian's redis-sentinel
//! watches a master and a replica on loopback; two doorman instances find
//! the master through it, share a pass, ride out the master's death on
//! their memory, follow the promotion, and share again.

use std::thread;
use std::time::Duration;

use crate::support::*;

const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

fn start(backend: &FakeBackend, sentinel: u16) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"mx.doorman.test ESMTP\"\nwait = \"300ms\"\n\
[cache]\nstore = \"redis\"\nredis_sentinels = [\"127.0.0.1:{sentinel}\"]\nredis_master_name = \"doorman\"\nredis_prefix = \"s:\"\n"
    );
    Doorman::start(
        &config_with(backend.address, "v2", "", "5s", &sections),
        "127.0.0.1\n",
    )
}

/// Whether `client` is a passed client for `doorman` (PASS OLD: straight
/// to the backend, no teaser).
pub(crate) fn passes_old(doorman: &Doorman, client: &str) -> bool {
    let mut stream = connect_as(doorman, client);
    read_line(&mut stream) == BACKEND
}

/// A new client's first visit: the teaser, then the backend.
pub(crate) fn first_visit(doorman: &Doorman, client: &str) {
    let mut stream = connect_as(doorman, client);
    assert_eq!(read_line(&mut stream), "220-mx.doorman.test ESMTP\r\n");
    assert_eq!(read_line(&mut stream), BACKEND);
}

#[test]
fn the_fleet_follows_a_sentinel_failover() {
    if !require_program("redis-server") || !require_program("redis-sentinel") {
        return;
    }
    let (master_port, replica_port, sentinel_port) = (free_port(), free_port(), free_port());
    let mut master = Some(redis_server(master_port, &[]));
    let _replica = redis_server(
        replica_port,
        &["--replicaof", "127.0.0.1", &master_port.to_string()],
    );
    let dir = tempfile::tempdir().unwrap();
    let _sentinel = redis_sentinel(
        dir.path(),
        sentinel_port,
        &format!(
            "port {sentinel_port}\nbind 127.0.0.1\n\
sentinel monitor doorman 127.0.0.1 {master_port} 1\n\
sentinel down-after-milliseconds doorman 1000\n\
sentinel failover-timeout doorman 5000\n"
        ),
    );

    let backend = FakeBackend::start(true);
    let a = start(&backend, sentinel_port);
    let b = start(&backend, sentinel_port);
    thread::sleep(Duration::from_millis(1500));
    first_visit(&a, "203.0.113.90");
    a.log
        .wait_for("PASS NEW [203.0.113.90]:40000", Duration::from_secs(5));
    assert!(passes_old(&b, "203.0.113.90"), "shared through the master");

    // The master dies: doorman serves from memory, Sentinel promotes the
    // replica, and doorman follows it.
    master.take();
    a.log.wait_for(
        "using the local memory cache until it is back",
        Duration::from_secs(10),
    );
    a.log
        .wait_for("is back; sharing resumes", Duration::from_secs(30));
    b.log
        .wait_for("is back; sharing resumes", Duration::from_secs(30));
    assert!(
        passes_old(&b, "203.0.113.90"),
        "the pass outlived the master (replicated, or written back)"
    );
    first_visit(&a, "203.0.113.91");
    a.log
        .wait_for("PASS NEW [203.0.113.91]:40000", Duration::from_secs(5));
    // One try only: a miss would screen the client and remember it.
    thread::sleep(Duration::from_millis(500));
    assert!(
        passes_old(&b, "203.0.113.91"),
        "shared again through the new master"
    );
}
