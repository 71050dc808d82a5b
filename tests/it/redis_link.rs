//! The shared Redis link under bad replies and behind credentials, with
//! Debian's real redis-server and redis-sentinel: a wrong-typed record or an
//! out-of-memory Redis fails one request, never the link; passwords, ACL
//! users and TLS for Redis and for its Sentinels, and no password in a log
//! line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::sentinel::{first_visit, passes_old};
use crate::support::*;

/// Lines that say the link dropped or came back.
const DOWN: &str = "using the local memory cache";
const BACK: &str = "is back; sharing resumes";

/// A doorman whose `[cache]` is Redis with `cache` lines.
fn start(backend: &FakeBackend, cache: &str) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"mx.doorman.test ESMTP\"\nwait = \"300ms\"\n\
[cache]\nstore = \"redis\"\nredis_master_name = \"doorman\"\n{cache}\n"
    );
    Doorman::start(
        &config_with(backend.address, "v2", "", "5s", &sections),
        "127.0.0.1\n",
    )
}

/// Asserts that `doorman` never lost its link.
fn link_never_dropped(doorman: &Doorman) {
    assert!(
        doorman.log.matching(DOWN).is_empty(),
        "{:?}",
        doorman.log.lines()
    );
    assert!(
        doorman.log.matching(BACK).is_empty(),
        "{:?}",
        doorman.log.lines()
    );
}

#[test]
fn a_wrong_typed_record_fails_its_request_and_the_link_serves_on() {
    let Some(redis) = Redis::start() else { return };
    let backend = FakeBackend::start(true);
    let cache = format!("redis_url = \"{}\"\nredis_prefix = \"w:\"", redis.url());
    let (a, b) = (start(&backend, &cache), start(&backend, &cache));
    thread::sleep(Duration::from_millis(1000));
    // A list where the client's pass record goes.
    let list = ["RPUSH", "w:pass:203.0.113.40", "not", "a", "record"];
    assert_eq!(redis_command(redis.port, None, &list), ":3\r\n");
    first_visit(&a, "203.0.113.40");
    let line = a.log.wait_for(
        "a request failed (WRONGTYPE Operation against a key holding the wrong kind",
        Duration::from_secs(5),
    );
    assert!(line.contains("the link stays up"), "{line}");
    // The same link writes the next client's pass, and B reads it.
    first_visit(&a, "203.0.113.41");
    a.log
        .wait_for("PASS NEW [203.0.113.41]", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(200));
    assert!(passes_old(&b, "203.0.113.41"), "shared after the error");
    link_never_dropped(&a);
    link_never_dropped(&b);
}

#[test]
fn an_out_of_memory_redis_still_serves_reads_and_is_not_reconnected() {
    let Some(redis) = Redis::start() else { return };
    let backend = FakeBackend::start(true);
    let cache = format!("redis_url = \"{}\"\nredis_prefix = \"m:\"", redis.url());
    let (a, b) = (start(&backend, &cache), start(&backend, &cache));
    thread::sleep(Duration::from_millis(1000));
    first_visit(&a, "203.0.113.60");
    a.log
        .wait_for("PASS NEW [203.0.113.60]", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(200));
    for setting in [["maxmemory-policy", "noeviction"], ["maxmemory", "1"]] {
        let set = ["CONFIG", "SET", setting[0], setting[1]];
        assert_eq!(redis_command(redis.port, None, &set), "+OK\r\n");
    }
    // Writes now fail with OOM: each fails alone, logged once a minute.
    first_visit(&a, "203.0.113.61");
    first_visit(&a, "203.0.113.62");
    a.log.wait_for(
        "a request failed (OOM command not allowed",
        Duration::from_secs(5),
    );
    // Reads still work: B knows the pass A wrote before.
    assert!(passes_old(&b, "203.0.113.60"), "read under OOM");
    let exists = ["EXISTS", "m:pass:203.0.113.61"];
    assert_eq!(redis_command(redis.port, None, &exists), ":0\r\n");
    // Four liveness pings later, neither instance dropped or reconnected.
    thread::sleep(Duration::from_millis(2000));
    assert_eq!(a.log.matching("a request failed").len(), 1, "one line");
    link_never_dropped(&a);
    link_never_dropped(&b);
}

#[test]
fn a_slow_reply_fails_its_request_and_only_a_silent_redis_drops_the_link() {
    if !require_program("redis-server") {
        return;
    }
    let port = free_port();
    let _redis = redis_server(port, &["--enable-debug-command", "yes"]);
    let backend = FakeBackend::start(true);
    let a = start(
        &backend,
        &format!("redis_url = \"redis://127.0.0.1:{port}\"\nredis_prefix = \"z:\""),
    );
    thread::sleep(Duration::from_millis(1000));
    let stall = |seconds: &'static str| {
        thread::spawn(move || redis_command(port, None, &["DEBUG", "SLEEP", seconds]))
    };
    // Redis stalls for 500 ms: a lookup in that time gets no answer within
    // redis_timeout (50 ms) and is answered from memory; the link stays.
    let stalled = stall("0.5");
    thread::sleep(Duration::from_millis(50));
    first_visit(&a, "203.0.113.90");
    assert_eq!(stalled.join().unwrap(), "+OK\r\n");
    a.log.wait_for(
        "a request failed (no answer within 50ms); the link stays up",
        Duration::from_secs(5),
    );
    thread::sleep(Duration::from_millis(1500));
    link_never_dropped(&a);
    // Silent for 3 s: the liveness ping goes unanswered for a second, the
    // link drops, and comes back when Redis answers again.
    let stalled = stall("3");
    let line = a.log.wait_for(DOWN, Duration::from_secs(5));
    assert!(line.contains("no answer to a ping within 1s"), "{line}");
    assert_eq!(stalled.join().unwrap(), "+OK\r\n");
    a.log.wait_for(BACK, Duration::from_secs(10));
}

#[test]
fn passwords_and_acl_users_log_in_and_never_show() {
    if !require_program("redis-server") {
        return;
    }
    let port = free_port();
    let user = ["--user", "doorman", "on", ">pw-acl", "~*", "&*", "+@all"];
    let mut args = vec!["--requirepass", "pw-default"];
    args.extend(user);
    let _redis = redis_server(port, &args);
    let backend = FakeBackend::start(true);
    let url = |credentials: &str| {
        format!("redis_url = \"redis://{credentials}@127.0.0.1:{port}\"\nredis_prefix = \"p:\"")
    };
    let a = start(&backend, &url(":pw-default"));
    let b = start(&backend, &url("doorman:pw-acl"));
    let wrong = start(&backend, &url("doorman:pw-wrong"));
    thread::sleep(Duration::from_millis(1000));
    first_visit(&a, "203.0.113.70");
    a.log
        .wait_for("PASS NEW [203.0.113.70]", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(200));
    assert!(passes_old(&b, "203.0.113.70"), "the ACL user reads it");
    let exists = ["EXISTS", "p:pass:203.0.113.70"];
    assert_eq!(redis_command(port, Some("pw-default"), &exists), ":1\r\n");
    // A wrong password is refused: that instance serves from its memory.
    let line = wrong.log.wait_for(DOWN, Duration::from_secs(5));
    assert!(line.contains("redis://doorman:***@127.0.0.1"), "{line}");
    first_visit(&wrong, "203.0.113.70");
    for doorman in [&a, &b, &wrong] {
        assert!(
            doorman.log.matching("pw-").is_empty(),
            "a password in a log line: {:?}",
            doorman.log.lines()
        );
    }
    link_never_dropped(&a);
    link_never_dropped(&b);
}

/// Sentinel's config for a master on `master` that it logs in to with
/// `auth`, plus `extra` lines.
fn sentinel_conf(port_line: &str, master: u16, auth: &str, extra: &str) -> String {
    format!(
        "{port_line}\nbind 127.0.0.1\n\
sentinel monitor doorman 127.0.0.1 {master} 1\n{auth}\n\
sentinel down-after-milliseconds doorman 1000\n{extra}\n"
    )
}

#[test]
fn sentinels_and_their_master_behind_passwords() {
    if !require_program("redis-server") || !require_program("redis-sentinel") {
        return;
    }
    let (master_port, sentinel_port) = (free_port(), free_port());
    let user = ["--user", "doorman", "on", ">pw-acl", "~*", "&*", "+@all"];
    let mut args = vec!["--requirepass", "pw-master"];
    args.extend(user);
    let _master = redis_server(master_port, &args);
    let dir = tempfile::tempdir().unwrap();
    let _sentinel = redis_sentinel(
        dir.path(),
        sentinel_port,
        &sentinel_conf(
            &format!("port {sentinel_port}"),
            master_port,
            "sentinel auth-pass doorman pw-master",
            "requirepass pw-sentinel\nuser watcher on >pw-watch allchannels +@all",
        ),
    );
    let backend = FakeBackend::start(true);
    let a = start(
        &backend,
        &format!(
            "redis_sentinels = [\"127.0.0.1:{sentinel_port}\"]\nredis_prefix = \"s:\"\n\
redis_sentinel_password = \"pw-sentinel\"\nredis_master_password = \"pw-master\""
        ),
    );
    // The Sentinel's password in its address; an ACL user at the master.
    let b = start(
        &backend,
        &format!(
            "redis_sentinels = [\"redis://:pw-sentinel@127.0.0.1:{sentinel_port}\"]\n\
redis_prefix = \"s:\"\nredis_master_username = \"doorman\"\nredis_master_password = \"pw-acl\""
        ),
    );
    // An ACL user at the Sentinel.
    let c = start(
        &backend,
        &format!(
            "redis_sentinels = [\"127.0.0.1:{sentinel_port}\"]\nredis_prefix = \"s:\"\n\
redis_sentinel_username = \"watcher\"\nredis_sentinel_password = \"pw-watch\"\n\
redis_master_password = \"pw-master\""
        ),
    );
    let locked_out = start(
        &backend,
        &format!(
            "redis_sentinels = [\"127.0.0.1:{sentinel_port}\"]\nredis_prefix = \"s:\"\n\
redis_master_password = \"pw-master\""
        ),
    );
    thread::sleep(Duration::from_millis(1500));
    first_visit(&a, "203.0.113.80");
    a.log
        .wait_for("PASS NEW [203.0.113.80]", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(200));
    assert!(passes_old(&b, "203.0.113.80"), "shared through the master");
    assert!(
        passes_old(&c, "203.0.113.80"),
        "found as the Sentinel's user"
    );
    let exists = ["EXISTS", "s:pass:203.0.113.80"];
    assert_eq!(
        redis_command(master_port, Some("pw-master"), &exists),
        ":1\r\n"
    );
    // Without the Sentinel's password, no master is found.
    locked_out.log.wait_for(DOWN, Duration::from_secs(5));
    let shown = b.log.lines().join("\n");
    assert!(!shown.contains("pw-"), "a password in a log line: {shown}");
    for doorman in [&a, &b, &c] {
        link_never_dropped(doorman);
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, in `dir`: the CA's
/// PEM file, the leaf's and its key's.
fn loopback_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let file = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
    };
    std::fs::write(file("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            "req", "-x509", "-nodes", "-days", "3", "-newkey", "rsa:2048",
        ]
        .into_iter()
        .chain([
            "-subj",
            "/CN=doorman test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-subj",
            "/CN=127.0.0.1",
        ]
        .into_iter()
        .chain(["-keyout", "leaf.key", "-out", "leaf.csr"])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "3",
            "-CAcreateserial",
            "-in",
            "leaf.csr",
        ]
        .into_iter()
        .chain([
            "-CA", "ca.pem", "-CAkey", "ca.key", "-extfile", "ext", "-out", "leaf.pem",
        ])
        .collect::<Vec<_>>(),
    );
    (file("ca.pem"), file("leaf.pem"), file("leaf.key"))
}

#[test]
fn tls_to_redis_and_to_sentinel() {
    if !require_program("redis-server")
        || !require_program("redis-sentinel")
        || !require_program("openssl")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = loopback_certificate(dir.path());
    let (ca, leaf, key) = (
        ca.display().to_string(),
        leaf.display().to_string(),
        key.display().to_string(),
    );
    let tls = |port: u16| {
        vec![
            format!("tls-port {port}"),
            format!("tls-cert-file {leaf}"),
            format!("tls-key-file {key}"),
            format!("tls-ca-cert-file {ca}"),
            "tls-auth-clients no".to_string(),
            "tls-replication yes".to_string(),
        ]
    };
    let (master_port, sentinel_port) = (free_port(), free_port());
    let args: Vec<String> = tls(master_port)
        .iter()
        .flat_map(|line| {
            let (name, value) = line.split_once(' ').unwrap();
            [format!("--{name}"), value.to_string()]
        })
        .chain(["--requirepass".to_string(), "pw-master".to_string()])
        .collect();
    let mut all = vec!["--port", "0"];
    all.extend(args.iter().map(String::as_str));
    // The later --port 0 overrides redis_server's: TLS only.
    let _master = redis_server(master_port, &all);
    let _sentinel = redis_sentinel(
        dir.path(),
        sentinel_port,
        &sentinel_conf(
            &format!("port 0\n{}", tls(sentinel_port).join("\n")),
            master_port,
            "sentinel auth-pass doorman pw-master",
            "",
        ),
    );
    let backend = FakeBackend::start(true);
    let direct = start(
        &backend,
        &format!(
            "redis_url = \"rediss://:pw-master@127.0.0.1:{master_port}\"\nredis_prefix = \"t:\"\n\
redis_tls_ca = \"{ca}\""
        ),
    );
    let followed = start(
        &backend,
        &format!(
            "redis_sentinels = [\"rediss://127.0.0.1:{sentinel_port}\"]\nredis_prefix = \"t:\"\n\
redis_master_password = \"pw-master\"\nredis_tls_ca = \"{ca}\""
        ),
    );
    // Without the CA, the server's certificate is not trusted.
    let untrusting = start(
        &backend,
        &format!("redis_url = \"rediss://:pw-master@127.0.0.1:{master_port}\""),
    );
    thread::sleep(Duration::from_millis(1500));
    first_visit(&direct, "203.0.113.85");
    direct
        .log
        .wait_for("PASS NEW [203.0.113.85]", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(200));
    assert!(passes_old(&followed, "203.0.113.85"), "shared over TLS");
    untrusting.log.wait_for(DOWN, Duration::from_secs(5));
    link_never_dropped(&direct);
    link_never_dropped(&followed);
}
