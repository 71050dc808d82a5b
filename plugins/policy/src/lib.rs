//! A client of Postfix's policy delegation protocol (SMTPD_POLICY_README)
//! at RCPT: the services operators already run (postgrey, policyd-spf,
//! policyd-rate-limit) judge doorman's clients as they judge smtpd's.
//!
//! For each RCPT of the clients it sees (`clients = "all"`, or only the
//! doubtful ones), the gate sends the attributes Postfix sends at RCPT that
//! doorman knows (see [`request`]) over TCP or a unix socket, reads the
//! `action=` reply, and acts as Postfix's access(5) does ([`protocol`]).
//! Connections are kept and reused, as Postfix's smtpd keeps them: each
//! for at most `request_limit` requests, `max_idle` between two requests
//! and `max_ttl` in all. A connection that fails before the first byte of
//! a reply (the service closed it, as many do after each answer) is tried
//! again on a new one, up to `try_limit` attempts in all. A service that
//! fails (no connection, no reply within `timeout`, garbage, a reply over
//! 4 KiB, a close mid-reply) gets one warning line, and `default_action`
//! answers.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod protocol;
pub mod request;
pub mod section;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use doorman_gate_api::{
    printable, smtpd_reject_line, Client, Command, EventCounter, Gate, GateFuture, Rejection,
    Reply, Stage, Verdict,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use protocol::{meaning, parse_reply, Action};
pub use section::PolicySection;

/// Which clients the service sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clients {
    /// Every client, which then talks to the built-in engine up to RCPT.
    All,
    /// Only clients whose summed score is at or above the threshold.
    Doubtful(i32),
}

/// Where the service listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `host:port`.
    Tcp(String),
    /// `unix:/path`.
    Unix(String),
}

impl Address {
    /// Reads `host:port` or `unix:/path`.
    pub fn parse(text: &str) -> Self {
        match text.strip_prefix("unix:") {
            Some(path) => Address::Unix(path.to_string()),
            None => Address::Tcp(text.to_string()),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(address) => f.write_str(address),
            Address::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

/// The gate's settings (`[policy]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The service.
    pub address: Address,
    /// Which clients it sees.
    pub clients: Clients,
    /// How long one request may take, connecting included.
    pub timeout: Duration,
    /// The action when the service fails.
    pub default_action: String,
    /// Requests per connection before a new one; 0: no limit.
    pub request_limit: u32,
    /// Attempts per request (at least 1): a connection that fails before
    /// the first byte of a reply is replaced by a new one until then.
    pub try_limit: u32,
    /// How long a kept connection may stay unused and still be reused.
    pub max_idle: Duration,
    /// How long after it was opened a connection may still be reused.
    pub max_ttl: Duration,
    /// The name doorman gives itself in `instance` values.
    pub hostname: String,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A kept connection, how many requests it carried, when it was opened
/// and when it was last used.
struct Connection {
    stream: Box<dyn Stream>,
    requests: u32,
    opened: Instant,
    used: Instant,
}

impl Connection {
    /// Whether it may carry another request at `now`.
    fn reusable(&self, settings: &Settings, now: Instant) -> bool {
        now.saturating_duration_since(self.used) <= settings.max_idle
            && now.saturating_duration_since(self.opened) <= settings.max_ttl
    }
}

/// Why one attempt at a request failed.
enum Failure {
    /// Before the first byte of a reply (no connection, a write error, a
    /// close or read error before any reply byte).
    BeforeReply {
        /// What happened.
        error: String,
        /// Whether a connection was open: a new one may do better.
        connected: bool,
    },
    /// After the reply began (garbage, a reply too long, a close
    /// mid-reply): never tried again.
    InReply(String),
}

/// The most idle connections kept.
const MAX_IDLE: usize = 16;

/// The policy service gate.
pub struct PolicyGate {
    settings: Settings,
    idle: Mutex<Vec<Connection>>,
    events: EventCounter,
}

impl PolicyGate {
    /// A gate asking the service in `settings`, counting its verdicts and
    /// errors with `events`.
    pub fn new(settings: Settings, events: EventCounter) -> Self {
        Self {
            settings,
            idle: Mutex::new(Vec::new()),
            events,
        }
    }

    fn in_scope(&self, score: Option<i32>) -> bool {
        match self.settings.clients {
            Clients::All => true,
            Clients::Doubtful(threshold) => score.is_some_and(|score| score >= threshold),
        }
    }

    /// Sends `request` and returns the `action=` value, trying again on a
    /// new connection when one fails before the first reply byte, as
    /// Postfix's `smtpd_policy_service_try_limit` does.
    async fn ask(&self, request: &str) -> Result<String, String> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self.attempt(request).await {
                Ok(action) => return Ok(action),
                Err(Failure::InReply(error)) => return Err(error),
                Err(Failure::BeforeReply { error, connected }) => {
                    if !connected {
                        return Err(error);
                    }
                    error
                }
            };
            if attempts >= self.settings.try_limit {
                return Err(error);
            }
            tracing::debug!(
                "policy {}: {}, trying a new connection",
                self.settings.address,
                printable(&error.to_string())
            );
        }
    }

    /// A kept connection still fit for use, dropping the stale ones.
    fn pooled(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some(connection) = idle.pop() {
            if connection.reusable(&self.settings, now) {
                return Some(connection);
            }
        }
        None
    }

    /// One attempt at `request`: on a kept connection, else a new one.
    async fn attempt(&self, request: &str) -> Result<String, Failure> {
        let mut connection = match self.pooled() {
            Some(connection) => connection,
            None => {
                let stream = self.connect().await.map_err(|error| Failure::BeforeReply {
                    error,
                    connected: false,
                })?;
                let now = Instant::now();
                Connection {
                    stream,
                    requests: 0,
                    opened: now,
                    used: now,
                }
            }
        };
        let before_reply = |error: String| Failure::BeforeReply {
            error,
            connected: true,
        };
        connection
            .stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| before_reply(e.to_string()))?;
        let mut buffer = Vec::with_capacity(256);
        let action = loop {
            match parse_reply(&buffer) {
                Ok(Some(action)) => break action,
                Ok(None) => {}
                Err(protocol::ReplyError::TooLong) => {
                    return Err(Failure::InReply("reply too long".into()))
                }
                Err(protocol::ReplyError::NoAction) => {
                    return Err(Failure::InReply("reply without action=".into()))
                }
            }
            let mut chunk = [0u8; 1024];
            let read = match connection.stream.read(&mut chunk).await {
                Ok(read) => read,
                Err(e) if buffer.is_empty() => return Err(before_reply(e.to_string())),
                Err(e) => return Err(Failure::InReply(e.to_string())),
            };
            if read == 0 {
                return Err(if buffer.is_empty() {
                    before_reply("connection closed before a reply".into())
                } else {
                    Failure::InReply("connection closed mid-reply".into())
                });
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        connection.requests += 1;
        connection.used = Instant::now();
        let limit = self.settings.request_limit;
        if limit == 0 || connection.requests < limit {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push(connection);
                }
            }
        }
        Ok(action)
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, String> {
        match &self.settings.address {
            Address::Tcp(address) => TcpStream::connect(address.as_str())
                .await
                .map(|stream| {
                    let _ = stream.set_nodelay(true);
                    Box::new(stream) as Box<dyn Stream>
                })
                .map_err(|e| e.to_string()),
            Address::Unix(path) => UnixStream::connect(path)
                .await
                .map(|stream| Box::new(stream) as Box<dyn Stream>)
                .map_err(|e| e.to_string()),
        }
    }

    /// The verdict of `action` for `recipient`.
    fn verdict(&self, action: &str, client: &Client, command: &Command<'_>) -> Verdict {
        match meaning(action) {
            Some(Action::Accept) => {
                (self.events)("ok");
                Verdict::Permit
            }
            Some(Action::Dunno) => {
                (self.events)("dunno");
                if !action.trim().eq_ignore_ascii_case("DUNNO") {
                    tracing::debug!(
                        "policy {}: {} ignored at RCPT",
                        self.settings.address,
                        printable(action)
                    );
                }
                Verdict::Dunno
            }
            Some(Action::Refuse { code, status, text }) => {
                (self.events)(if code >= 500 { "reject" } else { "defer" });
                let recipient = command.argument;
                let rejection = Rejection::with_reply(Reply::new(
                    code,
                    status,
                    format!("<{recipient}>: Recipient address rejected: {text}"),
                ));
                let reply = rejection.enforce_reply();
                tracing::info!(
                    "{}",
                    smtpd_reject_line(client, reply.trim_end(), command.envelope, recipient)
                );
                Verdict::Reject(rejection)
            }
            None => {
                (self.events)("unknown_action");
                tracing::warn!(
                    "warning: policy {}: unknown action \"{}\", taken as DUNNO",
                    self.settings.address,
                    printable(&action.chars().take(100).collect::<String>())
                );
                Verdict::Dunno
            }
        }
    }
}

impl Gate for PolicyGate {
    fn needs_dialogue(&self, score: Option<i32>) -> bool {
        self.in_scope(score)
    }

    fn explain_dialogue(&self, score: i32) -> Option<String> {
        let address = &self.settings.address;
        Some(match self.settings.clients {
            Clients::All => format!("{address} asked at every RCPT"),
            Clients::Doubtful(threshold) if score >= threshold => {
                format!("{address} asked at every RCPT (score {score} >= {threshold})")
            }
            Clients::Doubtful(threshold) => {
                format!("not asked (score {score} < {threshold})")
            }
        })
    }

    fn command<'a>(&'a self, client: &'a Client, command: Command<'a>) -> GateFuture<'a, Verdict> {
        Box::pin(async move {
            if command.stage != Stage::Rcpt || !self.in_scope(command.envelope.score) {
                return Verdict::Dunno;
            }
            // One value for every RCPT of a message transaction, as
            // Postfix's smtpd gives.
            let instance = format!(
                "{}.{:x}",
                self.settings.hostname, command.envelope.transaction
            );
            let request = request::rcpt(client, &command, &instance);
            let action = match timeout(self.settings.timeout, self.ask(&request)).await {
                Ok(Ok(action)) => action,
                Ok(Err(error)) => self.failed(&error),
                Err(_) => self.failed(&format!("no reply within {:?}", self.settings.timeout)),
            };
            self.verdict(&action, client, &command)
        })
    }
}

impl PolicyGate {
    /// Logs a failure and answers with the default action.
    fn failed(&self, error: &str) -> String {
        (self.events)("error");
        tracing::warn!(
            "warning: problem talking to server {}: {}",
            self.settings.address,
            printable(error)
        );
        self.settings.default_action.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_connections_age_as_postfix_s() {
        let settings = Settings {
            address: Address::parse("127.0.0.1:10023"),
            clients: Clients::All,
            timeout: Duration::from_secs(10),
            default_action: "DUNNO".into(),
            request_limit: 0,
            try_limit: 2,
            max_idle: Duration::from_secs(300),
            max_ttl: Duration::from_secs(1000),
            hostname: "mx.doorman.test".into(),
        };
        let (stream, _other) = tokio::io::duplex(64);
        let opened = Instant::now();
        let mut connection = Connection {
            stream: Box::new(stream),
            requests: 1,
            opened,
            used: opened,
        };
        let at = |seconds| opened + Duration::from_secs(seconds);
        assert!(connection.reusable(&settings, at(0)));
        assert!(connection.reusable(&settings, at(300)));
        assert!(!connection.reusable(&settings, at(301)), "idle too long");
        connection.used = at(900);
        assert!(connection.reusable(&settings, at(1000)));
        assert!(!connection.reusable(&settings, at(1001)), "too old");
    }
}
