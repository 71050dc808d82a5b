//! DNS lookups are bounded and fair: a hit-and-run flood from addresses
//! whose DNS never answers leaves doorman's descriptors and memory bounded,
//! no lookup outlives the clients that asked, and a clean client screened
//! meanwhile still gets its verdict on time.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

/// The clean client, and the reversed form of its address in queries.
const CLEAN: &str = "192.0.2.77";
const CLEAN_REVERSED: &[u8] = b"\x0277\x012\x010\x03192";

/// A name server that answers NXDOMAIN for the clean client's names and
/// never answers anything else; and the count of the queries it got.
struct MostlySilentDns {
    address: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl MostlySilentDns {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, stopped) = (Arc::clone(&queries), Arc::clone(&stop));
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let query = &buf[..len];
                let clean = query
                    .windows(CLEAN_REVERSED.len())
                    .any(|window| window == CLEAN_REVERSED);
                if !clean || len < 12 {
                    continue;
                }
                // The query itself, turned into an NXDOMAIN response.
                let mut reply = query.to_vec();
                reply[2] |= 0x80;
                reply[3] = (reply[3] & 0xf0) | 3;
                let _ = socket.send_to(&reply, from);
            }
        });
        Self {
            address,
            queries,
            stop,
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for MostlySilentDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// doorman's open descriptors and resident memory (KiB).
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

#[test]
fn a_hit_and_run_flood_against_a_silent_name_server_stays_bounded() {
    let dns = MostlySilentDns::start();
    let backend = FakeBackend::start(true);
    // Two lists and reverse DNS, a long query timeout, and room for every
    // client of the flood to be screened at once: only the DNS bounds
    // stand between the flood and doorman's descriptors.
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"3s\"\n[cache]\nstore = \"memory\"\n\
[limits]\nscreening = 5000\n[score]\nthreshold = 3\n\
[dnsbl]\nsites = [\"bl.test*3\", \"bl2.test*3\"]\ntimeout = \"10s\"\nnameservers = [\"{}\"]\n\
[rdns]\nno_ptr = 0\n",
        dns.address
    );
    let config = format!(
        "gates = [\"access\", \"dnsbl\", \"rdns\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let pid = doorman.child.id();
    thread::sleep(Duration::from_millis(300));
    let (fds_before, rss_before) = usage(pid);

    let flooding = Arc::new(AtomicBool::new(true));
    let peak = {
        let flooding = Arc::clone(&flooding);
        thread::spawn(move || {
            let (mut fds, mut rss) = (0, 0);
            while flooding.load(Ordering::Relaxed) {
                let (now_fds, now_rss) = usage(pid);
                (fds, rss) = (fds.max(now_fds), rss.max(now_rss));
                thread::sleep(Duration::from_millis(20));
            }
            (fds, rss)
        })
    };
    let address = doorman.address;
    let flood = thread::spawn(move || {
        let started = Instant::now();
        for i in 0..2000u32 {
            let due = started + Duration::from_millis(u64::from(i));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let client = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            let mut stream = connect_from(std::net::Ipv4Addr::LOCALHOST, address);
            let header = format!("PROXY TCP4 {client} 198.51.100.25 40000 25\r\n");
            let _ = std::io::Write::write_all(&mut stream, header.as_bytes());
        }
        started.elapsed()
    });

    // A clean client in the middle of the flood: its lookups are answered,
    // so it is judged as soon as they are, not at the end of the wait.
    thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let mut clean = connect_as(&doorman, CLEAN);
    assert_eq!(read_line(&mut clean), BACKEND);
    let verdict = started.elapsed();
    let flooded = flood.join().unwrap();
    // The flood's clients are gone; give doorman a moment to see it.
    thread::sleep(Duration::from_millis(500));
    flooding.store(false, Ordering::Relaxed);
    let (fds_peak, rss_peak) = peak.join().unwrap();
    let queries_after_flood = dns.queries();
    thread::sleep(Duration::from_millis(2500));
    let (fds_after, rss_after) = usage(pid);
    eprintln!(
        "flood of 2000 clients in {flooded:?}: clean verdict in {verdict:?}; \
descriptors {fds_before} before, {fds_peak} at peak, {fds_after} after; \
RSS {rss_before} KiB before, {rss_peak} KiB at peak, {rss_after} KiB after; \
{queries_after_flood} queries sent, {} after",
        dns.queries()
    );
    doorman
        .log
        .wait_for(&format!("PASS NEW [{CLEAN}]:40000"), Duration::from_secs(1));
    assert!(flooded < Duration::from_secs(3), "{flooded:?}");
    assert!(verdict < Duration::from_millis(1500), "{verdict:?}");
    // No lookup outlives its clients: a lookup still alive would send its
    // query again every second (until its 10 s timeout).
    assert_eq!(
        dns.queries(),
        queries_after_flood,
        "queries went on after the clients left"
    );
    // Before these bounds, each lookup lived on for its timeout with a
    // socket of its own: about 10,000 descriptors and 70 MiB more.
    assert!(
        fds_peak < fds_before + 300,
        "{fds_peak} descriptors at peak"
    );
    assert!(
        fds_after <= fds_before + 70,
        "{fds_after} descriptors after"
    );
    assert!(
        rss_peak < rss_before + 32 * 1024,
        "{rss_peak} KiB at peak from {rss_before} KiB"
    );
}

#[test]
fn queries_over_the_cap_are_skipped_logged_once_and_counted() {
    let dns = MostlySilentDns::start();
    let backend = FakeBackend::start(true);
    let admin = free_port();
    // One query in flight at most: the first client's lookup takes it, and
    // the lookups of the clients after it are skipped (no opinion).
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"800ms\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nsites = [\"bl.test\"]\ntimeout = \"5s\"\nnameservers = [\"{}\"]\n\
max_queries = 1\n[admin]\naddress = \"127.0.0.1:{admin}\"\n",
        dns.address
    );
    let config = format!(
        "gates = [\"access\", \"dnsbl\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    let mut holding = connect_as(&doorman, "198.18.0.1");
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut skipped: Vec<_> = (2..5)
        .map(|n| connect_as(&doorman, &format!("198.18.1.{n}")))
        .collect();
    // A skipped lookup is no opinion, known at once: no wait for it.
    for stream in &mut skipped {
        assert_eq!(read_line(stream), BACKEND);
    }
    assert!(started.elapsed() < Duration::from_millis(600));
    assert_eq!(read_line(&mut holding), BACKEND);
    let logged = doorman.log.matching("DNS lookup(s) skipped");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("skipped: too many DNS queries in flight"),
        "{logged:?}"
    );
    let text = crate::support::metrics(("127.0.0.1", admin));
    assert!(
        text.contains("doorman_gate_events_total{gate=\"dnsbl\",event=\"dns_skipped\"} 3"),
        "{text}"
    );
    // The one query was dropped with its client, before its resend.
    assert_eq!(dns.queries(), 1);
}
