//! A gate's own section of the config file.
//!
//! A gate crate defines its section as a serde type and implements
//! [`GateSection`] for it: the core finds the table named after the gate,
//! deserializes it (an absent table as an empty one, so serde's defaults
//! apply), lets the section check itself, and builds the gate from it when
//! doorman starts or reloads. The core turns a [`SectionError`] into
//! `FILE:LINE: message`, the line taken from the key's place in the file.
//!
//! Besides types, this module holds one helper: [`read_named_file`], the
//! bounded read every file the config names goes through.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::{DnsBudget, DnsLimits, EventCounter, Gate, GateFuture, RecordStore};

/// What a gate's section may use from the rest of the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionContext {
    /// The name doorman gives itself in replies (`hostname`).
    pub hostname: String,
    /// The folder relative paths are taken from: the config file's.
    pub base: PathBuf,
    /// How many answers a gate's cache may hold (`[cache] size`).
    pub cache_size: usize,
    /// The resolver settings every DNS gate shares.
    pub resolver: ResolverSettings,
    /// The summed score at or above which a client is doubtful
    /// (`[greylist] threshold`): the greylist gate and a policy service
    /// with `clients = "doubtful"` see such clients.
    pub doubtful: i32,
}

/// The resolver every DNS gate shares (written under `[dnsbl]`, where
/// postscreen's operators look for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Lower clamp of cached answers' TTL.
    pub min_ttl: Duration,
    /// Upper clamp of cached answers' TTL.
    pub max_ttl: Duration,
    /// How long one query may take.
    pub timeout: Duration,
    /// Name servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// The caps on queries in flight, which the core's [`DnsBudget`]
    /// (lent in [`Resources::dns`]) counts against.
    pub limits: DnsLimits,
}

/// What is wrong with a gate's section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectionError {
    /// A key of the section: `key` is its path inside the section, dotted
    /// (`threshold`, or `sites.2` for an array's third entry); empty for
    /// the section as a whole.
    Key {
        /// The key's path inside the section.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A line of a file the section names (a table, a list).
    File {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl SectionError {
    /// A problem with the key at `key` (a dotted path inside the section).
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Refuses `value` under `key` when it is above `bound`: every
    /// duration in the config has an upper bound, so that a typo such as
    /// `delay = "5d"` is refused instead of silently taking effect.
    pub fn within(key: &str, value: Duration, bound: Duration) -> Result<(), Self> {
        if value <= bound {
            return Ok(());
        }
        Err(Self::key(key, bound_message(key, value, bound)))
    }
}

/// The message for a duration above its bound, the same for every key.
pub fn bound_message(key: &str, value: Duration, bound: Duration) -> String {
    format!(
        "{key} = {:?}: at most {:?} (the configuration reference lists every bound)",
        humantime::format_duration(value).to_string(),
        humantime::format_duration(bound).to_string()
    )
}

impl fmt::Display for SectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key { message, .. } => f.write_str(message),
            Self::File {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
        }
    }
}

impl std::error::Error for SectionError {}

/// The largest file the config may name (a list, a table, the config).
pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// Reads a file the config names. Only regular files up to
/// [`MAX_FILE_SIZE`] are read, so a config that names `/dev/zero` or a
/// huge file fails instead of hanging.
pub fn read_named_file(path: &Path) -> std::io::Result<String> {
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_file() || metadata.len() > MAX_FILE_SIZE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file of at most {MAX_FILE_SIZE} bytes"),
        ));
    }
    std::fs::read_to_string(path)
}

/// Why a gate could not be built from a checked section (a resolver that
/// cannot be set up, say).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// A store of lookup answers shared by a fleet (Redis), asked before a
/// gate's own lookups. Implementations answer quickly (a short deadline)
/// and treat their own failures as no answer; a write never waits.
pub trait AnswerStore: Send + Sync + fmt::Debug {
    /// The stored value under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> GateFuture<'a, Option<String>>;
    /// Stores `value` under `key` for `ttl`, without waiting.
    fn put(&self, key: &str, value: &str, ttl: Duration);
}

/// Counts what gates do, for the core's metrics.
pub trait GateMetrics: Send + Sync {
    /// One of `gate`'s own events (`doorman_gate_events_total`).
    fn event(&self, gate: &'static str, event: &'static str);
    /// One DNS lookup in `zone`: how long it took, and whether it failed
    /// (a timeout, SERVFAIL, a list's error code).
    fn lookup(&self, zone: &str, took: Duration, failed: bool);
}

/// What the core lends a gate when it builds it.
#[derive(Clone)]
pub struct Resources {
    /// The fleet's store of lookup answers, if it has one (Redis).
    pub answer_store: Option<Arc<dyn AnswerStore>>,
    /// The store gates keep records in (Redis, or this process's).
    pub record_store: Arc<dyn RecordStore>,
    /// Where gates count what they do.
    pub metrics: Arc<dyn GateMetrics>,
    /// The DNS queries every DNS gate may have in flight, shared by them.
    pub dns: Arc<DnsBudget>,
}

impl Resources {
    /// A counter of `gate`'s own events.
    pub fn events(&self, gate: &'static str) -> EventCounter {
        let metrics = Arc::clone(&self.metrics);
        Arc::new(move |event| metrics.event(gate, event))
    }
}

/// A gate's section of the config file, which builds the gate. Its JSON
/// Schema (a doc comment on every field, see [`crate::schema`]) is the
/// section's part of the configuration reference.
pub trait GateSection:
    serde::de::DeserializeOwned + schemars::JsonSchema + fmt::Debug + Send + Sync + 'static
{
    /// Checks the section once it is read, and loads what it names (a file
    /// relative to `shared.base`). An absent section is read as an empty
    /// table first, so this sees the defaults.
    fn check(&mut self, shared: &SectionContext) -> Result<(), SectionError>;

    /// Builds the gate; `None` when the section leaves it nothing to do
    /// (a list with no entries, say).
    fn build(
        &self,
        shared: &SectionContext,
        resources: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError>;

    /// Whether the gate judges commands in the engine (its
    /// `Gate::has_command_hook`), asked before any gate is built: `doorman
    /// check` and the start-up say what that costs a config without
    /// `[tls]`.
    fn judges_commands(&self) -> bool {
        false
    }
}
