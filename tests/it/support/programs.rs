//! The real programs the tests run (Postfix, Redis, HAProxy's stats,
//! doorman's own commands), and the rule for a missing one.

use super::*;

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
        wait_for_port(self.port, "redis");
    }
}

/// Debian's redis-server on `port` (loopback, no persistence) with `extra`
/// arguments, once it accepts connections.
pub fn redis_server(port: u16, extra: &[&str]) -> Program {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra);
    let program = spawn(command, "redis");
    wait_for_port(port, "redis");
    program
}

/// A Redis Sentinel in `dir` with `conf` as its config file (it rewrites
/// the file), listening on `port`.
pub fn redis_sentinel(dir: &Path, port: u16, conf: &str) -> Program {
    let path = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(&path, conf).unwrap();
    let mut command = Command::new("redis-server");
    command.arg(&path).arg("--sentinel");
    let program = spawn(command, "sentinel");
    wait_for_port(port, "sentinel");
    program
}

/// Waits up to 10 s until `port` on loopback accepts connections.
fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one command to the plain-text Redis on `port` (after `AUTH` with
/// `password`, if given) and returns the first line of its reply.
pub fn redis_command(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut send = |args: &[&str]| {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    if let Some(password) = password {
        assert_eq!(send(&["AUTH", password]), "+OK\r\n");
    }
    send(args)
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
        Self::start_with(extra, smtpd_args, "", free_port())
    }

    /// As [`Postfix::start`], plus the services that accept a message into
    /// the queue (cleanup, qmgr, ...); queued mail is discarded.
    pub fn start_delivering(extra: &str) -> Option<Self> {
        Self::start_delivering_on(free_port(), extra)
    }

    /// As [`Postfix::start_delivering`], with its smtpd on `port`.
    pub fn start_delivering_on(port: u16, extra: &str) -> Option<Self> {
        Self::start_with(
            &format!("{extra}\ndefault_transport = discard\nrelay_transport = discard\n"),
            "",
            "cleanup unix n - n - 0 cleanup\nqmgr unix n - n 300 1 qmgr\n\
bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\ntrace unix - - n - 0 bounce\n\
discard unix - - n - - discard\ntlsmgr unix - - n 1000? 1 tlsmgr\n",
            port,
        )
    }

    fn start_with(extra: &str, smtpd_args: &str, services: &str, port: u16) -> Option<Self> {
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
