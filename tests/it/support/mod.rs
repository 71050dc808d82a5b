//! Helpers for the black-box tests: doorman as a child process with a temp
//! config, a log watcher over its stderr, a fake backend that records what
//! it receives, and clients bound to chosen loopback addresses.

pub mod backend;
pub mod dns;
pub mod net;
pub mod programs;
pub mod tls;

pub use backend::*;
pub use dns::*;
pub use net::*;
pub use programs::*;

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

/// How long a line doorman logged takes to reach a [`Log`], at most: its
/// batch's 50 ms, and the machine's scheduling.
const LOG_SETTLES: Duration = Duration::from_millis(150);

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

    /// The lines that contain `needle`, of those logged before the call:
    /// doorman writes its lines in batches, up to 50 ms after they happen
    /// (`src/logbuffer.rs`), so this lets them arrive first.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        thread::sleep(LOG_SETTLES);
        self.matching_now(needle)
    }

    /// The lines so far that contain `needle`.
    fn matching_now(&self, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Waits up to `within` until `count` lines contain `needle` (lines
    /// reach the log a little after the replies they go with).
    pub fn wait_for_count(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.matching_now(needle).len() < count {
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

    /// Starts doorman with `config` and the given files beside it; a file
    /// named `*token*` is readable by its owner only, as doorman requires.
    pub fn start_with_files(config: &str, files: &[(&str, &str)]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            if name.contains("token") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        std::fs::write(dir.path().join("doorman.toml"), config).unwrap();
        Self::start_in(Arc::new(dir))
    }

    /// Starts doorman with the `doorman.toml` already in `dir` (a restart).
    pub fn start_in(dir: Arc<tempfile::TempDir>) -> Self {
        Self::start_in_with_env(dir, &[])
    }

    /// As [`Doorman::start_in`], with more variables in its environment.
    pub fn start_in_with_env(dir: Arc<tempfile::TempDir>, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(doorman_bin())
            .envs(env.iter().copied())
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

/// The text of `/metrics` (the whole HTTP response) from the admin
/// listener at `admin`.
pub fn metrics(admin: impl std::net::ToSocketAddrs) -> String {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: doorman\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
