//! Helpers for the black-box tests: doorman as a child process with a temp
//! config, a log watcher over its stderr, a fake backend that records what
//! it receives, and clients bound to chosen loopback addresses.

pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The doorman binary under test.
pub fn doorman_bin() -> &'static str {
    env!("CARGO_BIN_EXE_doorman")
}

/// Lines a child process wrote to stderr, as they arrive.
#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Log {
    /// Starts collecting `stream`'s lines in a thread.
    pub fn collect(stream: impl Read + Send + 'static, echo: &'static str) -> Self {
        let log = Log::default();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_ECHO").is_some() {
                    eprintln!("[{echo}] {line}");
                }
                let (lines, ready) = &*sink.inner;
                lines.lock().unwrap().push(line);
                ready.notify_all();
            }
        });
        log
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().clone()
    }

    /// The lines so far that contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits up to `within` until `count` lines contain `needle` (lines
    /// reach the log a little after the replies they go with).
    pub fn wait_for_count(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.matching(needle).len() < count {
            assert!(
                Instant::now() < deadline,
                "fewer than {count} lines with {needle:?} within {within:?}; log:\n{}",
                self.lines().join("\n")
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `within` for a line containing `needle`, and returns it.
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let (lines, ready) = &*self.inner;
        let mut guard = lines.lock().unwrap();
        loop {
            if let Some(line) = guard.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "no log line with {needle:?} within {within:?}; log:\n{}",
                    guard.join("\n")
                );
            }
            guard = ready.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }
}

/// A running doorman with its temp folder.
pub struct Doorman {
    pub child: Child,
    pub log: Log,
    pub address: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
}

impl Doorman {
    /// Starts doorman with `config` (its listener must use port 0) and the
    /// given `haproxy_hosts` text, and waits until it listens.
    pub fn start(config: &str, hosts: &str) -> Self {
        Self::start_with_files(config, &[("haproxy_hosts", hosts)])
    }

    /// Starts doorman with `config` and the given files beside it.
    pub fn start_with_files(config: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(dir.path().join("doorman.toml"), config).unwrap();
        Self::start_in(Arc::new(dir))
    }

    /// Starts doorman with the `doorman.toml` already in `dir` (a restart).
    pub fn start_in(dir: Arc<tempfile::TempDir>) -> Self {
        let mut child = Command::new(doorman_bin())
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("doorman.toml"))
            .env(
                "DOORMAN_LOG",
                "debug,hickory_proto=warn,hickory_resolver=warn,hickory_net=warn",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::collect(child.stderr.take().unwrap(), "doorman");
        let line = log.wait_for("listening on", Duration::from_secs(20));
        let address = parse_endpoint(&line);
        Doorman {
            child,
            log,
            address,
            dir,
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Stops with SIGTERM, waits for the exit, and hands back the folder.
    pub fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "doorman did not stop");
            thread::sleep(Duration::from_millis(20));
        }
        Arc::clone(&self.dir)
    }

    /// Kills with SIGKILL (no flush) and hands back the folder.
    pub fn kill9(mut self) -> Arc<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Arc::clone(&self.dir)
    }

    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("doorman.toml")
    }
}

impl Drop for Doorman {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Parses the last `[ip]:port` of a log line.
pub fn parse_endpoint(line: &str) -> SocketAddr {
    let start = line.rfind('[').expect("endpoint in line");
    let text = &line[start..];
    let end = text.find(|c: char| c.is_whitespace()).unwrap_or(text.len());
    let (ip, port) = text[1..end].split_once("]:").expect("[ip]:port");
    let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
    SocketAddr::new(ip.parse().expect("ip"), digits.parse().expect("port"))
}

/// A config with one listener on port 0, the given `[proxy]` timeout and
/// listener mode, and one backend, with every screening test off (no
/// teaser), so clients go straight to the backend.
pub fn config(
    backend: SocketAddr,
    send_proxy: &str,
    extra_listener: &str,
    proxy_timeout: &str,
) -> String {
    config_with(
        backend,
        send_proxy,
        extra_listener,
        proxy_timeout,
        "[greet]\nbanner = \"\"\n",
    )
}

/// As [`config`], with `sections` (TOML tables) appended instead of the
/// default `[greet] banner = ""`.
pub fn config_with(
    backend: SocketAddr,
    send_proxy: &str,
    extra_listener: &str,
    proxy_timeout: &str,
    sections: &str,
) -> String {
    format!(
        "hostname = \"mx.doorman.test\"\nshutdown_grace = \"3s\"\n[proxy]\nhosts_file = \"haproxy_hosts\"\ntimeout = \"{proxy_timeout}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n{extra_listener}\n[[backend]]\naddress = \"{backend}\"\nsend_proxy = \"{send_proxy}\"\nconnect_timeout = \"2s\"\n{sections}"
    )
}

/// doorman with `sections` (see [`config_with`]), in front of a fresh
/// [`FakeBackend`] that expects PROXY v2, with 127.0.0.1 as its proxy.
pub fn behind_fake_backend(sections: &str) -> (FakeBackend, Doorman) {
    let backend = FakeBackend::start(true);
    let config = config_with(backend.address, "v2", "", "5s", sections);
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    (backend, doorman)
}

/// What a fake backend received on one connection.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub bytes: Vec<u8>,
    pub closed: bool,
    /// `Some(true)` for doorman's own health probes (a v2 LOCAL header, a
    /// v1 line from 127.0.0.1, or doorman's own EHLO), `Some(false)` for clients,
    /// `None` until the first bytes tell.
    pub probe: Option<bool>,
}

impl Received {
    fn classify(&mut self) {
        if self.probe.is_some() {
            return;
        }
        let bytes = &self.bytes;
        self.probe = match doorman::proxy::parse(bytes) {
            Ok(doorman::proxy::Parsed::Complete {
                header: doorman::proxy::Header::Local,
                ..
            }) => Some(true),
            Ok(doorman::proxy::Parsed::Complete {
                header: doorman::proxy::Header::Proxied { source, .. },
                ..
            }) => Some(bytes[0] == b'P' && source.ip() == std::net::IpAddr::from([127, 0, 0, 1])),
            Ok(doorman::proxy::Parsed::Incomplete) if bytes.is_empty() => None,
            Ok(doorman::proxy::Parsed::Incomplete) => None,
            Err(_) if bytes.len() >= 6 => Some(
                bytes.starts_with(b"QUIT\r\n") || bytes.starts_with(b"EHLO mx.doorman.test\r\n"),
            ),
            Err(_) => None,
        };
    }
}

/// A backend that reads an optional PROXY header, greets, answers every
/// command with 250 (354 to DATA, 221 to QUIT) and records every byte.
pub struct FakeBackend {
    pub address: SocketAddr,
    pub connections: Arc<Mutex<Vec<Arc<Mutex<Received>>>>>,
    pub stopped: Arc<std::sync::atomic::AtomicBool>,
    pub acceptor: Mutex<Option<thread::JoinHandle<()>>>,
}

impl FakeBackend {
    pub fn start(expects_proxy: bool) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), expects_proxy)
    }

    /// Starts on a given address (e.g. one a test kept reserved).
    pub fn start_on(address: SocketAddr, expects_proxy: bool) -> Self {
        let listener = TcpListener::bind(address).unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Received>>>>> = Arc::default();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let all = connections.clone();
        let stop = stopped.clone();
        let acceptor = thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let record = Arc::new(Mutex::new(Received::default()));
                        all.lock().unwrap().push(record.clone());
                        thread::spawn(move || serve_fake(stream, record, expects_proxy));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeBackend {
            address,
            connections,
            stopped,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// Closes the listening socket: new connections are refused.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.lock().unwrap().take() {
            acceptor.join().unwrap();
        }
    }

    /// Waits for the `n`th client connection (0-based; health probes are
    /// not counted) and returns its record.
    pub fn connection(&self, n: usize) -> Arc<Mutex<Received>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut clients = 0;
            for c in self.connections.lock().unwrap().iter() {
                let kind = c.lock().unwrap().probe;
                match kind {
                    Some(false) if clients == n => return c.clone(),
                    Some(false) => clients += 1,
                    Some(true) => {}
                    None => break,
                }
            }
            assert!(
                Instant::now() < deadline,
                "backend got no client connection {n}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many client connections (not health probes) it got so far.
    pub fn count(&self) -> usize {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.lock().unwrap().probe == Some(false))
            .count()
    }

    /// How many of doorman's health probes it got so far.
    pub fn probes(&self) -> usize {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.lock().unwrap().probe == Some(true))
            .count()
    }

    /// Waits until connection `n` has received at least `len` bytes.
    pub fn wait_bytes(&self, n: usize, len: usize) -> Vec<u8> {
        let record = self.connection(n);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = record.lock().unwrap().bytes.clone();
            if got.len() >= len {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "backend got only {:?}",
                String::from_utf8_lossy(&got)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until connection `n` saw EOF.
    pub fn wait_closed(&self, n: usize) -> Vec<u8> {
        let record = self.connection(n);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = record.lock().unwrap().clone();
            if got.closed {
                return got.bytes;
            }
            assert!(
                Instant::now() < deadline,
                "backend connection {n} not closed"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve_fake(mut stream: TcpStream, record: Arc<Mutex<Received>>, expects_proxy: bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut greeted = false;
    let mut in_data = false;
    loop {
        if !greeted {
            let header_done = !expects_proxy
                || matches!(
                    doorman::proxy::parse(&pending),
                    Ok(doorman::proxy::Parsed::Complete { .. })
                );
            if header_done {
                if let Ok(doorman::proxy::Parsed::Complete { length, .. }) =
                    doorman::proxy::parse(&pending)
                {
                    if expects_proxy {
                        pending.drain(..length);
                    }
                }
                let _ = stream.write_all(b"220 backend.test ESMTP fake\r\n");
                greeted = true;
            }
        }
        while let Some(newline) = pending.iter().position(|&b| greeted && b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            let text = String::from_utf8_lossy(&line).to_ascii_uppercase();
            let reply: &[u8] = if in_data {
                if text == ".\r\n" {
                    in_data = false;
                    b"250 2.0.0 queued\r\n"
                } else {
                    b""
                }
            } else if text.starts_with("DATA") {
                in_data = true;
                b"354 go ahead\r\n"
            } else if text.starts_with("QUIT") {
                let _ = stream.write_all(b"221 2.0.0 bye\r\n");
                let mut record = record.lock().unwrap();
                record.classify();
                record.probe.get_or_insert(false);
                record.closed = true;
                return;
            } else if text.starts_with("EHLO") {
                b"250-backend.test\r\n250 PIPELINING\r\n"
            } else {
                b"250 2.0.0 ok\r\n"
            };
            let _ = stream.write_all(reply);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let mut record = record.lock().unwrap();
                record.classify();
                record.probe.get_or_insert(false);
                record.closed = true;
                return;
            }
            Ok(n) => {
                let mut record = record.lock().unwrap();
                record.bytes.extend_from_slice(&chunk[..n]);
                record.classify();
                pending.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// The first port after Linux's ephemeral range below (32768-60999 by
/// default) that `free_port` hands out: ports under it are never taken by an
/// outgoing connection's local port between the test's choice and the bind.
const FIXED_PORTS: std::ops::Range<u32> = 10_000..32_768;

/// A port free on 127.0.0.1 for TCP and UDP, below the ephemeral range and
/// never handed out twice by one test binary. (A port the kernel picked for
/// `:0` and released could be reused at once by a connection's local port,
/// and a daemon told to listen on it then fails with "Address already in
/// use".)
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = FIXED_PORTS.end - FIXED_PORTS.start;
    let start = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIXED_PORTS.start + (start + step) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// Connects to `to` from the loopback address `from`.
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(from.into(), 0).into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
}

/// Reads one CRLF-terminated line (multi-line replies come line by line).
pub fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            Err(e) => panic!(
                "read failed after {:?}: {e}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Reads until the peer closes; returns everything read.
pub fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("read_to_end: {e}; got {:?}", String::from_utf8_lossy(&all)),
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Whether an external program is on PATH. Under CI=true a missing program
/// fails the test; elsewhere the test is skipped with a message.
pub fn require_program(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(name).exists();
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is required under CI=true but is not installed");
        }
        eprintln!("skipping: {name} is not installed");
        record_skip(name);
    }
    found
}

/// Where skipped tests are listed, one a line, for `scripts/test`'s
/// summary.
pub const SKIPPED_LIST: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests");

/// Adds the running test (libtest names its thread after it) to
/// [`SKIPPED_LIST`].
fn record_skip(program: &str) {
    let test = thread::current().name().unwrap_or("?").to_string();
    if let Ok(mut list) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIPPED_LIST)
    {
        let _ = writeln!(list, "{test} (needs {program})");
    }
}

/// A running child process with its stderr log (killed on drop).
pub struct Program {
    pub child: Child,
    pub log: Log,
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` with stderr (and stdout) collected into one log.
pub fn spawn(mut command: Command, name: &'static str) -> Program {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let log = Log::collect(child.stderr.take().unwrap(), name);
    let out = child.stdout.take().unwrap();
    let copy = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let (lines, ready) = &*copy.inner;
            lines.lock().unwrap().push(line);
            ready.notify_all();
        }
    });
    Program { child, log }
}

/// `doorman sink --proxy` on a free port; returns it and its address.
pub fn start_sink(require_proxy: bool) -> (Program, SocketAddr) {
    let mut command = Command::new(doorman_bin());
    command.args(["sink", "--listen", "127.0.0.1:0"]);
    if require_proxy {
        command.arg("--proxy");
    }
    let sink = spawn(command, "sink");
    let line = sink
        .log
        .wait_for("sink: listening on", Duration::from_secs(10));
    let address = parse_endpoint(&line);
    (sink, address)
}

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

/// Debian's redis-server on a loopback port, without persistence.
pub struct Redis {
    pub program: Option<Program>,
    pub port: u16,
}

impl Redis {
    /// Starts it; `None` (the test skips) when redis-server is missing outside CI.
    pub fn start() -> Option<Self> {
        if !require_program("redis-server") {
            return None;
        }
        let mut redis = Redis {
            program: None,
            port: free_port(),
        };
        redis.restart();
        Some(redis)
    }

    /// The URL doorman's config takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (the port goes dead).
    pub fn stop(&mut self) {
        self.program = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "redis did not stop");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        self.program = Some(spawn(command, "redis"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An address on 127.0.0.1 where nothing listens, kept reserved (bound,
/// not listening) while the returned socket lives, so no other test or
/// program takes the port.
pub fn dead_address() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, address)
}

/// A real Postfix instance in a private folder: master, an smtpd on a
/// loopback port and the services it needs, logging to its own file.
/// Started with `postfix -c DIR start` (which needs root).
pub struct Postfix {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Postfix {
    /// Starts it with `extra` lines in main.cf and `smtpd_args` (`-o ...`)
    /// on the smtpd service; `None` (the test skips) when Postfix is missing
    /// or this is not root, outside CI.
    pub fn start(extra: &str, smtpd_args: &str) -> Option<Self> {
        Self::start_with(extra, smtpd_args, "")
    }

    /// As [`Postfix::start`], plus the services that accept a message into
    /// the queue (cleanup, qmgr, ...); queued mail is discarded.
    pub fn start_delivering(extra: &str) -> Option<Self> {
        Self::start_with(
            &format!("{extra}\ndefault_transport = discard\nrelay_transport = discard\n"),
            "",
            "cleanup unix n - n - 0 cleanup\nqmgr unix n - n 300 1 qmgr\n\
bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\ntrace unix - - n - 0 bounce\n\
discard unix - - n - - discard\ntlsmgr unix - - n 1000? 1 tlsmgr\n",
        )
    }

    fn start_with(extra: &str, smtpd_args: &str, services: &str) -> Option<Self> {
        if !require_program("postfix") {
            return None;
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !root {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "Postfix tests need root under CI"
            );
            eprintln!("skipping: starting Postfix needs root");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("postfix")
            .tempdir()
            .unwrap();
        let base = dir.path();
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir_all(base.join(sub)).unwrap();
        }
        let mut permissions = std::fs::metadata(base).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(base, permissions).unwrap();
        let postfix_user = Command::new("id").args(["-u", "postfix"]).output().unwrap();
        let uid: u32 = String::from_utf8_lossy(&postfix_user.stdout)
            .trim()
            .parse()
            .unwrap();
        std::os::unix::fs::chown(base.join("data"), Some(uid), None).unwrap();
        let port = free_port();
        let b = base.display();
        std::fs::write(
            base.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {b}/queue\ndata_directory = {b}/data\n\
mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = backend.postfix.test\n\
mydomain = postfix.test\nmydestination =\nlocal_recipient_maps =\ninet_interfaces = 127.0.0.1\n\
inet_protocols = ipv4\nmynetworks = 127.0.0.0/8\nmaillog_file = {b}/maillog\n\
maillog_file_prefixes = {b}\nsmtpd_client_connection_count_limit = 0\n\
smtpd_client_connection_rate_limit = 0\nsmtpd_relay_restrictions = reject_unauth_destination\n\
{extra}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            base.join("etc/master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd {smtpd_args}\n\
postlog unix-dgram n - n - 1 postlogd\nproxymap unix - - n - - proxymap\n\
anvil unix - - n - 1 anvil\nrewrite unix - - n - - trivial-rewrite\n{services}"
            ),
        )
        .unwrap();
        let started = Command::new("timeout")
            .args(["30", "postfix", "-c"])
            .arg(base.join("etc"))
            .arg("start")
            .output()
            .unwrap();
        assert!(started.status.success(), "postfix start: {started:?}");
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "postfix smtpd did not listen");
            thread::sleep(Duration::from_millis(50));
        }
        Some(Postfix { dir, port })
    }

    /// The smtpd's address.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits up to `within` for a line of Postfix's log containing `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no Postfix log line with {needle:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["20", "postfix", "-c"])
            .arg(self.dir.path().join("etc"))
            .arg("stop")
            .output();
    }
}

/// Connects from the listed proxy 127.0.0.1 and sends a PROXY v1 header
/// naming `client` (port 40000) and the destination 198.51.100.25:25
/// (or 2001:db8::25 for an IPv6 client).
pub fn connect_as(doorman: &Doorman, client: &str) -> TcpStream {
    let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 1), doorman.address);
    let (family, server) = if client.contains(':') {
        ("TCP6", "2001:db8::25")
    } else {
        ("TCP4", "198.51.100.25")
    };
    stream
        .write_all(format!("PROXY {family} {client} {server} 40000 25\r\n").as_bytes())
        .unwrap();
    stream
}

/// Says HELO and MAIL to doorman's built-in engine (hostname
/// `mx.doorman.test`) and checks both replies.
pub fn helo_and_mail(stream: &mut TcpStream, sender: &str) {
    stream.write_all(b"HELO client.test\r\n").unwrap();
    assert_eq!(read_line(stream), "250 mx.doorman.test\r\n");
    stream
        .write_all(format!("MAIL FROM:<{sender}>\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_line(stream), "250 2.1.0 Ok\r\n");
}

/// A column (`status`, `weight`, `scur`, ...) of backend server `doormen/d1` in
/// `show stat` of the HAProxy whose stats socket is `haproxy.sock` in
/// `dir`.
pub fn haproxy_stat(dir: &Path, column: &str) -> String {
    haproxy_server_stat(dir, "d1", column)
}

/// As [`haproxy_stat`], for backend server `doormen/<server>`.
pub fn haproxy_server_stat(dir: &Path, server: &str, column: &str) -> String {
    let Ok(mut socket) = std::os::unix::net::UnixStream::connect(dir.join("haproxy.sock")) else {
        return "no socket".into();
    };
    let _ = socket.write_all(b"show stat\n");
    let mut out = String::new();
    let _ = socket.read_to_string(&mut out);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let Some(index) = header.iter().position(|h| *h == column) else {
        return "no such column".into();
    };
    let prefix = format!("doormen,{server},");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split(',').nth(index))
        .unwrap_or("missing")
        .to_string()
}

/// `doorman explain` of `ip` with the config of `doorman`.
pub fn explain(doorman: &Doorman, ip: &str) -> String {
    stdout_of(
        Command::new(doorman_bin())
            .args(["explain", "--config"])
            .arg(doorman.config_path())
            .arg(ip),
    )
}

/// Runs `command`, asserts that it succeeded (showing its stderr if not),
/// and returns its stdout.
pub fn stdout_of(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The client a backend's bytes begin with (a PROXY header naming it),
/// and the header's length.
pub fn proxied_client(got: &[u8]) -> (SocketAddr, usize) {
    match doorman::proxy::parse(got) {
        Ok(doorman::proxy::Parsed::Complete {
            header: doorman::proxy::Header::Proxied { source, .. },
            length,
        }) => (source, length),
        other => panic!("no PROXY header naming a client ({other:?}): {got:?}"),
    }
}

/// Reads a PROXY v2 header off `reader`; whether it was a LOCAL one
/// (`None`: the peer closed first).
pub fn read_v2_header(reader: &mut impl Read) -> Option<bool> {
    let mut header = [0u8; 16];
    reader.read_exact(&mut header).ok()?;
    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([header[14], header[15]]))];
    let _ = reader.read_exact(&mut rest);
    Some(header[12] == 0x20)
}

/// A backend on loopback that speaks from a script: for each connection it
/// reads the PROXY v2 header, greets with `greeting(check)` (`check`: the
/// header was a v2 LOCAL health check; `None`: close without a greeting, as
/// an smtpd that dies on start does), then answers each line with
/// `reply(line)` until QUIT.
pub fn scripted_backend(
    greeting: fn(bool) -> Option<&'static [u8]>,
    reply: fn(&str) -> &'static [u8],
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let Some(local) = read_v2_header(&mut reader) else {
                    return;
                };
                let Some(banner) = greeting(local) else {
                    return;
                };
                let _ = writer.write_all(banner);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let _ = writer.write_all(reply(&line));
                    if line.to_ascii_uppercase().starts_with("QUIT") {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    address
}
