//! DNS servers on loopback: rbldnsd with the fixture zones, dnsmasq with
//! given records, and a server that answers late.

use super::*;

/// Debian's rbldnsd serving the zones in `fixtures/dnsbl/` on a loopback
/// port (bl.test, bl2.test, wl.test as ip4set; v6.test as ip6trie).
pub struct Rbldnsd {
    /// The server, killed when this is dropped.
    _program: Program,
    pub address: SocketAddr,
    /// rbldnsd's query log (one line per query answered).
    pub query_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rbldnsd {
    /// Starts it; `None` (the test skips) when rbldnsd is missing outside CI.
    pub fn start() -> Option<Self> {
        if !require_program("rbldnsd") {
            return None;
        }
        let port = free_port();
        let zones = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/dnsbl");
        let dir = tempfile::tempdir().unwrap();
        let query_log = dir.path().join("queries.log");
        let mut permissions = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o777);
        std::fs::set_permissions(dir.path(), permissions).unwrap();
        let mut command = Command::new("rbldnsd");
        command
            .args(["-n", "-w", zones])
            .arg("-l")
            .arg(format!("+{}", query_log.display()))
            .arg("-b")
            .arg(format!("127.0.0.1/{port}"))
            .args([
                "bl.test:ip4set:bl.test",
                "bl2.test:ip4set:bl2.test",
                "wl.test:ip4set:wl.test",
                "v6.test:ip6trie:v6.test",
            ]);
        let program = spawn(command, "rbldnsd");
        program.log.wait_for("rbldnsd", Duration::from_secs(10));
        // rbldnsd answers once its zones are loaded.
        let address = answering_on(port, "rbldnsd");
        Some(Self {
            _program: program,
            address,
            query_log,
            _dir: dir,
        })
    }

    /// How many queries so far asked for a name containing `needle`.
    pub fn queries(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.query_log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }
}

/// Debian's dnsmasq serving PTR, A and AAAA records on a loopback port,
/// authoritative (NXDOMAIN for anything else) for `*.test` and the
/// reverse zones of 203.0.113.0/24 and 2001:db8::/32.
pub struct Dnsmasq {
    /// The server, killed when this is dropped.
    _program: Program,
    pub address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts it with `records` (dnsmasq options such as
    /// `host-record=mail.good.test,203.0.113.30`, one a line); `None` (the
    /// test skips) when dnsmasq is missing outside CI. dnsmasq listens on
    /// UDP and TCP: a port another test's connection took meanwhile makes
    /// it exit, and it is started again on another.
    pub fn start(records: &str) -> Option<Self> {
        if !require_program("dnsmasq") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("dnsmasq.conf");
            std::fs::write(
                &conf,
                format!(
                    "no-resolv\nno-hosts\nno-poll\nport={port}\nlisten-address=127.0.0.1\nbind-interfaces\n\
local=/113.0.203.in-addr.arpa/\nlocal=/test/\nlocal=/8.b.d.0.1.0.0.2.ip6.arpa/\n{records}\n"
                ),
            )
            .unwrap();
            let mut command = Command::new("dnsmasq");
            command
                .arg(format!("--conf-file={}", conf.display()))
                .args([
                    "--keep-in-foreground",
                    "--pid-file=",
                    "--user=root",
                    "--log-facility=-",
                ]);
            let mut program = spawn(command, "dnsmasq");
            let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if dns_answers(address) {
                    return Some(Self {
                        _program: program,
                        address,
                        _dir: dir,
                    });
                }
                if program.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "dnsmasq on port {port} did not answer: {:?}",
                program.log.lines()
            );
        }
        panic!("dnsmasq did not answer on any port");
    }
}

/// A DNS forwarder in front of a real server (rbldnsd) that holds back the
/// answers for names in one zone: a DNS list that answers late. Each query
/// is forwarded on its own socket; answers for `slow_zone` wait `delay`.
pub struct DelayingDns {
    pub address: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl DelayingDns {
    /// Forwards to `upstream`, holding back `slow_zone`'s answers.
    pub fn start(upstream: SocketAddr, slow_zone: &str, delay: Duration) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let slow = dns_wire_name(slow_zone);
        thread::spawn(move || {
            let mut query = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, client)) = socket.recv_from(&mut query) else {
                    continue;
                };
                let query = query[..len].to_vec();
                let reply_socket = socket.try_clone().unwrap();
                let held = contains(&query, &slow);
                thread::spawn(move || {
                    let out = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    out.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    out.send_to(&query, upstream).unwrap();
                    let mut answer = [0u8; 4096];
                    let Ok(len) = out.recv(&mut answer) else {
                        return;
                    };
                    if held {
                        thread::sleep(delay);
                    }
                    let _ = reply_socket.send_to(&answer[..len], client);
                });
            }
        });
        Self { address, stop }
    }
}

impl Drop for DelayingDns {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `zone` in DNS wire form, without the root label (`\x02bl\x04test`).
fn dns_wire_name(zone: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    for label in zone.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.to_ascii_lowercase().as_bytes());
    }
    wire
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let lower = haystack.to_ascii_lowercase();
    lower.windows(needle.len()).any(|window| window == needle)
}

/// Waits until the DNS server `name` answers on `port` of 127.0.0.1.
fn answering_on(port: u16, name: &str) -> SocketAddr {
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dns_answers(address) {
        assert!(Instant::now() < deadline, "{name} did not answer");
        thread::sleep(Duration::from_millis(50));
    }
    address
}

/// Whether a DNS server at `address` answers a query for 2.0.0.127.bl.test/A.
fn dns_answers(address: SocketAddr) -> bool {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["2", "0", "0", "127", "bl", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    if socket.send_to(&query, address).is_err() {
        return false;
    }
    let mut answer = [0u8; 512];
    socket.recv(&mut answer).is_ok()
}
