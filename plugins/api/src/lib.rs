//! The gate API of doorman.
//!
//! A *gate* answers one question about a client: may it talk to the real
//! smtpd? Gates see a [`Client`] (the real address learned from the PROXY
//! header, never the proxy's) and answer with a [`Verdict`] through up to
//! three hooks of the [`Gate`] trait: at connect, during the greet wait
//! (lookups that run concurrently and are dropped at the deadline), and in
//! the built-in engine's dialogue (HELO, MAIL, RCPT). The core runs the
//! gates in the order the config lists them, as Haraka runs its plugins, and
//! combines their verdicts the way postscreen combines its tests: the
//! scores add up, and the thresholds and actions judge the sum.
//!
//! This crate is small on purpose: gates depend on it, and it changes rarely.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

pub mod dns_budget;
mod logline;
pub mod schema;
pub mod section;

pub use dns_budget::{DnsBudget, DnsLimits, DnsTicket, Skipped};
pub use logline::{printable, smtpd_reject_line};
pub use schemars;

pub use section::{
    AnswerStore, BuildError, GateMetrics, GateSection, ResolverSettings, Resources, SectionContext,
    SectionError,
};

/// One PROXY protocol v2 TLV as the proxy sent it (type and raw value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlv {
    /// The TLV type byte, e.g. `0x02` for AUTHORITY.
    pub kind: u8,
    /// The raw value bytes.
    pub value: Vec<u8>,
}

/// The client a gate looks at.
///
/// `address` is the *real* client: for a connection from a listed proxy it is
/// the source address of the PROXY header; otherwise it is the TCP peer.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are always given as IPv4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The real client address and port.
    pub address: SocketAddr,
    /// The address and port the client connected to (the proxy's frontend,
    /// as the header gave it, or doorman's own socket).
    pub destination: SocketAddr,
    /// The TLVs of a PROXY v2 header; empty for v1 and for direct clients.
    pub tlvs: Vec<Tlv>,
}

impl Client {
    /// The real client IP address.
    pub fn ip(&self) -> IpAddr {
        self.address.ip()
    }

    /// The client as postscreen's log lines name it: `[ip]:port`.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint(self.address)
    }
}

/// An address as postscreen's log lines write it: `[ip]:port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint(pub SocketAddr);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Made whole on the stack and written once: the log line's writer
        // escapes each write it gets, and an IPv4 address is ten of them.
        use fmt::Write as _;
        let mut text = StackText::default();
        match write!(text, "[{}]:{}", self.0.ip(), self.0.port()) {
            Ok(()) => f.write_str(text.as_str()),
            Err(_) => write!(f, "[{}]:{}", self.0.ip(), self.0.port()),
        }
    }
}

/// Room for the longest `[ip]:port`: an IPv6 address is written in at
/// most 39 characters (an IPv4-mapped one in 22; the scope is not written).
const ENDPOINT_ROOM: usize = 56;

/// A short text written on the stack.
struct StackText {
    bytes: [u8; ENDPOINT_ROOM],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        Self {
            bytes: [0; ENDPOINT_ROOM],
            len: 0,
        }
    }
}

impl StackText {
    /// What was written.
    fn as_str(&self) -> &str {
        // Only whole `&str`s are copied in, so the bytes are UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// What the core does with a client that failed a test, as postscreen's
/// `*_action` parameters say it (and the config writes it: `ignore`,
/// `enforce`, `drop`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Log the failure, let the other tests finish, and hand the client off
    /// as if it had passed (but do not remember a pass).
    #[default]
    Ignore,
    /// Let the other tests finish, then talk to the client with the built-in
    /// SMTP engine, which refuses every RCPT with the test's reply.
    Enforce,
    /// Send the test's 521 reply at once and close.
    Drop,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Ignore => "ignore",
            Action::Enforce => "enforce",
            Action::Drop => "drop",
        })
    }
}

/// A gate's answer about one client.
///
/// [`Verdict::Permit`], [`Verdict::Reject`] and [`Verdict::Dunno`] are
/// remembered by nobody; a [`Verdict::Score`] carries how long its check
/// may be remembered as passed (its [`Score::ttl`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The client is allowed: skip every further test and hand it off now.
    Permit,
    /// The client failed this gate.
    Reject(Rejection),
    /// What this gate found, as weights that add up with every other
    /// gate's into one score, judged against the thresholds as postscreen
    /// judges its DNSBL score.
    Score(Score),
    /// This gate has nothing to say; go on with the next one.
    Dunno,
}

impl Verdict {
    /// How long a pass of this gate may be remembered: a complete score's
    /// TTL; `None` for everything else.
    pub fn pass_ttl(&self) -> Option<Duration> {
        match self {
            Verdict::Score(score) if score.complete => score.ttl,
            _ => None,
        }
    }
}

/// One gate's contribution to the score.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// What matched, in the gate's order.
    pub findings: Vec<Finding>,
    /// How long the result may be remembered; `None`: not at all.
    pub ttl: Option<Duration>,
    /// Whether every answer the gate waited for is in: a partial score may
    /// refuse a client, but never allowlists and is never remembered.
    pub complete: bool,
}

impl Score {
    /// The sum of the findings' weights.
    pub fn points(&self) -> i32 {
        self.findings.iter().map(|f| f.weight).sum()
    }
}

/// One thing a gate found, and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The name a refusal shows (`blocked using <name>`).
    pub name: String,
    /// What it adds to the score; negative weights allowlist.
    pub weight: i32,
}

/// An SMTP reply, as RFC 5321 and RFC 3463 shape it: `550 5.7.1 text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code (`5.7.1`).
    pub status: String,
    /// The text after them.
    pub text: String,
}

impl Reply {
    /// A reply of `code`, `status` and `text`.
    pub fn new(code: u16, status: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            code,
            status: status.into(),
            text: text.into(),
        }
    }

    /// The reply line, with CRLF.
    pub fn line(&self) -> String {
        format!("{self}\r\n")
    }

    /// What follows the code: `5.7.1 text`.
    pub fn after_code(&self) -> String {
        format!("{} {}", self.status, self.text)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

/// Why a client failed a gate, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The action configured for this test.
    pub action: Action,
    /// The reply to each RCPT under [`Action::Enforce`]; under
    /// [`Action::Drop`] the same status and text go out at once as a 521.
    pub reply: Reply,
}

impl Rejection {
    /// A refusal with postscreen's codes: 550 to each RCPT under
    /// [`Action::Enforce`], 521 at once under [`Action::Drop`].
    pub fn new(action: Action, status: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            action,
            reply: Reply::new(550, status, text),
        }
    }

    /// A refusal under [`Action::Enforce`] with a reply of the gate's own
    /// (a 450 to greylist, a policy service's 4NN).
    pub fn with_reply(reply: Reply) -> Self {
        Self {
            action: Action::Enforce,
            reply,
        }
    }

    /// The reply to each RCPT under [`Action::Enforce`], with CRLF.
    pub fn enforce_reply(&self) -> String {
        self.reply.line()
    }

    /// The reply before closing under [`Action::Drop`], with CRLF.
    pub fn drop_reply(&self) -> String {
        Reply {
            code: 521,
            ..self.reply.clone()
        }
        .line()
    }
}

/// The dialogue so far, for the engine hook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The HELO or EHLO name, once given.
    pub helo: Option<String>,
    /// Whether the client greeted with EHLO (`proto=ESMTP`).
    pub esmtp: bool,
    /// The MAIL FROM address (without brackets), once given.
    pub sender: Option<String>,
    /// The recipients accepted so far in this transaction.
    pub recipients: Vec<String>,
    /// The wait gates' summed score, when the client was scored in this
    /// connection (`None`: its passes were cached).
    pub score: Option<i32>,
    /// The client's names, when a wait gate learned them.
    pub names: ClientNames,
    /// The TLS session the dialogue runs in, if the client started one.
    pub encryption: Option<Encryption>,
    /// Which message transaction this is: a number unique in the process,
    /// the same for every command from one accepted MAIL to the end of its
    /// message or RSET (Postfix's policy `instance`); 0 before any MAIL.
    pub transaction: u64,
}

/// A client's TLS session, in the words of Postfix's policy protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encryption {
    /// The protocol (`TLSv1.3`): `encryption_protocol`.
    pub protocol: String,
    /// The cipher, as OpenSSL names it: `encryption_cipher`.
    pub cipher: String,
    /// The cipher's key size in bits: `encryption_keysize`.
    pub keysize: u16,
}

/// The client's host names, as Postfix's smtpd knows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientNames {
    /// A name whose forward lookup gives the client address back
    /// (smtpd's `client_name`).
    pub verified: Option<String>,
    /// The first PTR name, confirmed or not (`reverse_client_name`).
    pub reverse: Option<String>,
}

impl ClientNames {
    /// smtpd's `client_name`: the verified name, or `unknown`.
    pub fn client_name(&self) -> &str {
        self.verified.as_deref().unwrap_or("unknown")
    }

    /// smtpd's `reverse_client_name`: the PTR name, or `unknown`.
    pub fn reverse_client_name(&self) -> &str {
        self.reverse.as_deref().unwrap_or("unknown")
    }
}

/// A command of the built-in engine's dialogue that gates are asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// HELO or EHLO, with its name.
    Helo,
    /// MAIL FROM, with its address.
    Mail,
    /// RCPT TO, with its address.
    Rcpt,
}

/// One engine command, as a gate sees it.
#[derive(Clone, Copy, Debug)]
pub struct Command<'a> {
    /// Which command.
    pub stage: Stage,
    /// Its argument: the HELO name, the sender or the recipient.
    pub argument: &'a str,
    /// The dialogue before this command.
    pub envelope: &'a Envelope,
}

impl Envelope {
    /// The protocol name smtpd logs: `ESMTP` after EHLO, else `SMTP`.
    pub fn proto(&self) -> &'static str {
        if self.esmtp {
            "ESMTP"
        } else {
            "SMTP"
        }
    }
}

/// A small store of records with expiry that gates keep state in: the
/// configured cache store, so a fleet sharing Redis shares the records.
/// `Err` when the store cannot answer now (Redis down): the gate decides
/// how to fail.
pub trait RecordStore: Send + Sync {
    /// The record under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> GateFuture<'a, Result<Option<String>, StoreDown>>;
    /// Stores `value` under `key` for `ttl`.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> GateFuture<'a, Result<(), StoreDown>>;
}

/// The record store cannot answer now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreDown;

/// Counts one of a gate's events; the core exports the counts as
/// `doorman_gate_events_total{gate, event}`.
pub type EventCounter = std::sync::Arc<dyn Fn(&'static str) + Send + Sync>;

/// A future a gate returns; boxed, so gates are objects.
pub type GateFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A gate: one check on a client, through the hooks it needs. Every hook
/// has a default that does nothing, so a gate implements only its own.
pub trait Gate: Send + Sync {
    /// **At connect**: an instant verdict from what is known already (an
    /// access list, a static table). [`Verdict::Permit`] skips every other
    /// test; a [`Verdict::Reject`] is applied with its action.
    fn connect(&self, _client: &Client) -> Verdict {
        Verdict::Dunno
    }

    /// Whether [`Gate::wait`] has lookups to start: the core asks before
    /// it takes a screening place, and starts them only once it has one.
    fn has_wait_hook(&self) -> bool {
        false
    }

    /// **During the greet wait**: starts the gate's lookups when the wait
    /// starts. They run concurrently with every other gate's and with the
    /// pregreet watch; the core drops them at the deadline. `None`: nothing
    /// to look up for this client.
    fn wait(&self, _client: &Client) -> Option<Box<dyn Waiting>> {
        None
    }

    /// Whether a client that failed no test must talk to the built-in
    /// engine up to its RCPTs, so that this gate sees its envelope, instead
    /// of going straight to a backend; it is replayed into the backend once
    /// a recipient is accepted. `score` is the wait gates' summed score,
    /// `None` for a client that was not scored (its passes were cached).
    fn needs_dialogue(&self, _score: Option<i32>) -> bool {
        false
    }

    /// Whether [`Gate::command`] judges commands: the core then reads the
    /// conversation of every client that met the engine to its end, so
    /// that every MAIL and RCPT of every transaction meets the gate. It
    /// fails closed: a gate answers `false` only when it has no command
    /// hook (a gate that forgot would otherwise lose every transaction
    /// after the first).
    fn has_command_hook(&self) -> bool {
        true
    }

    /// **In the built-in engine's dialogue**: the verdict on HELO/EHLO,
    /// MAIL or RCPT, with the envelope so far. Asked only of clients the
    /// engine talks to.
    fn command<'a>(
        &'a self,
        _client: &'a Client,
        _command: Command<'a>,
    ) -> GateFuture<'a, Verdict> {
        Box::pin(std::future::ready(Verdict::Dunno))
    }

    /// Rebuilds the gate's caches in fresh memory after a flood, so the
    /// memory the flood scattered can go back to the system.
    fn compact(&self) {}

    /// For `doorman explain`: what the connect hook finds about `client`,
    /// one line; `None` when the gate has no connect hook.
    fn explain_connect(&self, _client: &Client) -> Option<String> {
        None
    }

    /// For `doorman explain`: what the gate would do in the built-in
    /// engine's dialogue with a client whose wait gates scored `score` and
    /// that no test refused, one line; `None` when it takes no part in the
    /// dialogue.
    fn explain_dialogue(&self, _score: i32) -> Option<String> {
        None
    }
}

/// A gate's lookups under way during the greet wait.
pub trait Waiting: Send {
    /// Waits until more is known; returns at once when everything is.
    /// Must be cancel-safe: nothing is lost if the wait is dropped.
    fn progress(&mut self) -> GateFuture<'_, ()>;

    /// Whether every answer is in (or failed).
    fn is_complete(&self) -> bool;

    /// What is known now: a [`Verdict::Score`] marked incomplete while
    /// answers are still out.
    fn verdict(&self) -> Verdict;

    /// The client's host names, if this gate looked them up.
    fn names(&self) -> ClientNames {
        ClientNames::default()
    }

    /// For `doorman explain`: what is known now, a finding a line (each
    /// starting with the gate's own word for it); `wait` is how long the
    /// answers had. Empty: the core describes the verdict alone.
    fn explain(&self, _wait: Duration) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn an_endpoint_is_written_whole_at_every_length() {
        for (address, text) in [
            ("192.0.2.7:25", "[192.0.2.7]:25"),
            ("255.255.255.255:65535", "[255.255.255.255]:65535"),
            ("[2001:db8::1]:25", "[2001:db8::1]:25"),
            (
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
            (
                "[::ffff:255.255.255.255]:65535",
                "[::ffff:255.255.255.255]:65535",
            ),
            (
                "[fe80:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4]:65535",
                "[fe80:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        ] {
            let address: std::net::SocketAddr = address.parse().unwrap();
            assert_eq!(Endpoint(address).to_string(), text);
            assert_eq!(format!("<{}>", Endpoint(address)), format!("<{text}>"));
        }
    }
}
