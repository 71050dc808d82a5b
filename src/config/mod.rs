//! doorman's configuration: the TOML file and the files it names.
//!
//! The file is read into serde types that refuse unknown keys, then checked
//! as a whole. Every error names the file and the line, as
//! `FILE:LINE: what is wrong`. Paths in the file are relative to the folder
//! the config file is in. A loaded [`Config`] is an immutable snapshot: a
//! connection takes an `Arc` of it once.

mod hosts;

use crate::gates::{Registry, BUILT_IN, DEFAULT_ORDER};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use doorman_access::AccessList;
use doorman_dnsbl::Site;
use doorman_gate_api::Action;
use serde::Deserialize;

pub use hosts::ProxyHosts;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read at all.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file was read but something in it is wrong.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Whether a listener takes PROXY headers, and from whom.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// Listed hosts must send a PROXY header; other hosts speak SMTP directly
    /// (Haraka's rule).
    #[default]
    Optional,
    /// Only listed hosts may connect at all; others are closed at once.
    Required,
}

/// What doorman sends a backend before the client's bytes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SendProxy {
    /// A PROXY protocol v2 (binary) header.
    #[default]
    V2,
    /// A PROXY protocol v1 (text) line.
    V1,
    /// Postfix's XCLIENT command after the backend's greeting.
    Xclient,
    /// Nothing: the backend sees doorman as the client.
    None,
}

/// How the pool picks a backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Weighted rotation.
    #[default]
    Roundrobin,
    /// Fewest active connections per unit of weight.
    Leastconn,
    /// A rendezvous hash of the client address.
    Source,
}

/// The `[pool]` section: balancing and active health checks.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// How a backend is picked.
    #[serde(default)]
    pub balance: Balance,
    /// Time between two health checks of a backend.
    #[serde(with = "humantime_serde", default = "default_check_interval")]
    pub check_interval: Duration,
    /// Successful checks that bring a down backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failed checks (or connects) that take an up backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl Default for PoolSection {
    fn default() -> Self {
        Self {
            balance: Balance::default(),
            check_interval: default_check_interval(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

/// The `[proxy]` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// The `haproxy_hosts` file, relative to the config file's folder.
    pub hosts_file: Option<PathBuf>,
    /// How long a listed host may take to send its whole header.
    #[serde(with = "humantime_serde", default = "default_proxy_timeout")]
    pub timeout: Duration,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            hosts_file: None,
            timeout: default_proxy_timeout(),
        }
    }
}

/// One `[[listener]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address to listen on; port 0 picks a free port.
    pub address: SocketAddr,
    /// Who may (or must) send a PROXY header here.
    #[serde(default)]
    pub proxy: ProxyMode,
}

/// One `[[backend]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The smtpd to hand clients to.
    pub address: SocketAddr,
    /// How the backend learns the real client.
    #[serde(default)]
    pub send_proxy: SendProxy,
    /// How long a connection attempt may take.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Its share of clients relative to the other backends.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The most clients it takes at once; 0 is no limit.
    #[serde(default)]
    pub max_connections: usize,
}

/// A test's action, as written in the config.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    /// See [`Action::Ignore`].
    #[default]
    Ignore,
    /// See [`Action::Enforce`].
    Enforce,
    /// See [`Action::Drop`].
    Drop,
}

impl From<ActionName> for Action {
    fn from(name: ActionName) -> Self {
        match name {
            ActionName::Ignore => Action::Ignore,
            ActionName::Enforce => Action::Enforce,
            ActionName::Drop => Action::Drop,
        }
    }
}

/// The `[access]` section: the permanent access list.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    /// A Postfix cidr table, relative to the config file's folder.
    pub file: Option<PathBuf>,
    /// What to do with `reject` entries.
    #[serde(default)]
    pub action: ActionName,
}

/// The `[greet]` section: the teaser and the pregreet test.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GreetSection {
    /// The teaser text after `220-`; unset: `<hostname> ESMTP`; empty: no
    /// teaser and no pregreet test.
    pub banner: Option<String>,
    /// How long to wait for a pregreet and for DNSBL answers.
    #[serde(with = "humantime_serde", default = "default_greet_wait")]
    pub wait: Duration,
    /// What to do with a pregreeter.
    #[serde(default)]
    pub action: ActionName,
    /// How long a pregreet pass is remembered.
    #[serde(with = "humantime_serde", default = "default_greet_ttl")]
    pub ttl: Duration,
}

impl Default for GreetSection {
    fn default() -> Self {
        Self {
            banner: None,
            wait: default_greet_wait(),
            action: ActionName::Ignore,
            ttl: default_greet_ttl(),
        }
    }
}

/// The `[rdns]` section: what each reverse-DNS finding weighs. The gate
/// runs when `rdns` is in `gates`, with the `[dnsbl]` resolver settings.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RdnsSection {
    /// The client has no PTR name.
    #[serde(default = "default_no_ptr")]
    pub no_ptr: i32,
    /// No PTR name resolves back to the client address.
    #[serde(default = "default_one")]
    pub not_confirmed: i32,
    /// The confirmed name looks generic (it embeds the address, or a pool
    /// word such as `dsl` or `dynamic`).
    #[serde(default = "default_one")]
    pub generic: i32,
}

impl Default for RdnsSection {
    fn default() -> Self {
        Self {
            no_ptr: default_no_ptr(),
            not_confirmed: default_one(),
            generic: default_one(),
        }
    }
}

fn default_no_ptr() -> i32 {
    2
}

fn default_one() -> i32 {
    1
}

/// The `[greylist]` section: selective greylisting of doubtful clients.
/// The gate runs when `greylist` is in `gates`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GreylistSection {
    /// A summed score at or above this (and below `[dnsbl] threshold`) is
    /// doubtful.
    #[serde(default = "default_one")]
    pub threshold: i32,
    /// How long a triplet must wait after its first attempt.
    #[serde(with = "humantime_serde", default = "default_greylist_delay")]
    pub delay: Duration,
    /// How long after the delay a retry is still taken.
    #[serde(with = "humantime_serde", default = "default_retry_window")]
    pub retry_window: Duration,
    /// Successful retries after which a network skips greylisting.
    #[serde(default = "default_auto_allowlist")]
    pub auto_allowlist: u32,
    /// How long a passed triplet and an allowlisted network are kept.
    #[serde(with = "humantime_serde", default = "default_max_age")]
    pub max_age: Duration,
    /// The IPv4 network a client is keyed by.
    #[serde(default = "default_greylist_ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// The IPv6 network a client is keyed by.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// The reply text; `%r` is the recipient's domain.
    #[serde(default = "default_greylist_text")]
    pub text: String,
}

impl Default for GreylistSection {
    fn default() -> Self {
        Self {
            threshold: default_one(),
            delay: default_greylist_delay(),
            retry_window: default_retry_window(),
            auto_allowlist: default_auto_allowlist(),
            max_age: default_max_age(),
            ipv4_prefix: default_greylist_ipv4_prefix(),
            ipv6_prefix: default_ipv6_prefix(),
            text: default_greylist_text(),
        }
    }
}

fn default_greylist_delay() -> Duration {
    Duration::from_secs(300)
}

fn default_retry_window() -> Duration {
    Duration::from_secs(2 * 86400)
}

fn default_auto_allowlist() -> u32 {
    5
}

fn default_max_age() -> Duration {
    Duration::from_secs(35 * 86400)
}

fn default_greylist_ipv4_prefix() -> u8 {
    24
}

fn default_greylist_text() -> String {
    "Greylisted, see http://postgrey.schweikert.ch/help/%r.html".into()
}

/// The `[policy]` section: a Postfix policy service asked at RCPT. The
/// gate runs when `policy` is in `gates`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// `host:port`, or `unix:/path`.
    pub address: Option<String>,
    /// `doubtful` (a score at or above `[greylist] threshold`) or `all`.
    #[serde(default)]
    pub clients: PolicyClients,
    /// How long one request may take.
    #[serde(with = "humantime_serde", default = "default_policy_timeout")]
    pub timeout: Duration,
    /// The action when the service fails (Postfix's
    /// `smtpd_policy_service_default_action`).
    #[serde(default = "default_policy_action")]
    pub default_action: String,
    /// Requests per connection before a new one; 0: no limit.
    #[serde(default)]
    pub request_limit: u32,
}

/// Which clients the policy service sees.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicyClients {
    /// Only doubtful clients.
    #[default]
    Doubtful,
    /// Every client (each then talks to the built-in engine up to RCPT).
    All,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            address: None,
            clients: PolicyClients::default(),
            timeout: default_policy_timeout(),
            default_action: default_policy_action(),
            request_limit: 0,
        }
    }
}

fn default_policy_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_policy_action() -> String {
    "451 4.3.5 Server configuration problem".into()
}

/// The `[dnsbl]` section: weighted DNSBL/DNSWL sites.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsblSection {
    /// Sites in postscreen's `domain[=filter][*weight]` syntax.
    #[serde(default)]
    pub sites: Vec<String>,
    /// Inclusive lower bound of a blocking score.
    #[serde(default = "default_threshold")]
    pub threshold: i32,
    /// Inclusive upper bound (negative) of an allowlisting score; 0 disables.
    #[serde(default)]
    pub allowlist_threshold: i32,
    /// What to do with a listed client.
    #[serde(default)]
    pub action: ActionName,
    /// Lower clamp of answer TTLs.
    #[serde(with = "humantime_serde", default = "default_min_ttl")]
    pub min_ttl: Duration,
    /// Upper clamp of answer TTLs.
    #[serde(with = "humantime_serde", default = "default_max_ttl")]
    pub max_ttl: Duration,
    /// How long one DNS query may take.
    #[serde(with = "humantime_serde", default = "default_dnsbl_timeout")]
    pub timeout: Duration,
    /// Name servers (`ip:port`); empty: the system resolver.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// Site domain -> the name shown to clients.
    #[serde(default)]
    pub reply_map: HashMap<String, String>,
}

impl Default for DnsblSection {
    fn default() -> Self {
        Self {
            sites: Vec::new(),
            threshold: default_threshold(),
            allowlist_threshold: 0,
            action: ActionName::Ignore,
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            timeout: default_dnsbl_timeout(),
            nameservers: Vec::new(),
            reply_map: HashMap::new(),
        }
    }
}

/// Where the pass cache keeps its entries.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheStore {
    /// A redb file on this machine; survives restarts.
    #[default]
    Embedded,
    /// A Redis server shared by several instances.
    Redis,
    /// Memory only; lost on restart.
    Memory,
}

/// The `[cache]` section: clients that passed.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Where entries live.
    #[serde(default)]
    pub store: CacheStore,
    /// The redb file of the embedded store, relative to the config file's
    /// folder.
    #[serde(default = "default_cache_path")]
    pub path: PathBuf,
    /// How often pending writes are committed to the file.
    #[serde(with = "humantime_serde", default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// The Redis server of the redis store.
    #[serde(default = "default_redis_url")]
    pub redis_url: String,
    /// The prefix of every Redis key.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// The deadline of every Redis call.
    #[serde(with = "humantime_serde", default = "default_redis_timeout")]
    pub redis_timeout: Duration,
    /// How often expired entries are cleaned up; 0 turns cleanup off.
    #[serde(with = "humantime_serde", default = "default_cleanup_interval")]
    pub cleanup_interval: Duration,
    /// How long an entry is kept after its last pass expired.
    #[serde(with = "humantime_serde", default = "default_retention_time")]
    pub retention_time: Duration,
    /// How many client addresses the in-memory cache holds.
    #[serde(default = "default_cache_size")]
    pub size: usize,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            store: CacheStore::default(),
            path: default_cache_path(),
            flush_interval: default_flush_interval(),
            redis_url: default_redis_url(),
            redis_prefix: default_redis_prefix(),
            redis_timeout: default_redis_timeout(),
            cleanup_interval: default_cleanup_interval(),
            retention_time: default_retention_time(),
            size: default_cache_size(),
        }
    }
}

/// The `[engine]` section: limits of the built-in SMTP engine.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Commands per session (QUIT excepted).
    #[serde(default = "default_command_limit")]
    pub command_limit: usize,
    /// The longest command line, CRLF included.
    #[serde(default = "default_line_length")]
    pub line_length: usize,
    /// How long one whole command line may take to arrive.
    #[serde(with = "humantime_serde", default = "default_command_time")]
    pub command_time: Duration,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            command_limit: default_command_limit(),
            line_length: default_line_length(),
            command_time: default_command_time(),
        }
    }
}

/// The `[limits]` section; 0 turns a limit off.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Concurrent connections per client address
    /// (postscreen_client_connection_count_limit).
    #[serde(default = "default_client_connections")]
    pub client_connections: usize,
    /// Clients being screened at once (postscreen_pre_queue_limit).
    #[serde(default = "default_screening")]
    pub screening: usize,
    /// Client connections in total.
    #[serde(default = "default_total")]
    pub total: usize,
    /// What one client is for the per-client limits: its IPv4 address
    /// within this prefix (32: the address itself).
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// The same for IPv6 (64: a customer's usual /64 is one client).
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// The most screening places one network may hold; 0: off.
    #[serde(default)]
    pub screening_per_network: usize,
    /// New connections per network per minute; 0: off.
    #[serde(default)]
    pub connection_rate: usize,
}

fn default_ipv4_prefix() -> u8 {
    32
}

fn default_ipv6_prefix() -> u8 {
    64
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            client_connections: default_client_connections(),
            screening: default_screening(),
            total: default_total(),
            ipv4_prefix: default_ipv4_prefix(),
            ipv6_prefix: default_ipv6_prefix(),
            screening_per_network: 0,
            connection_rate: 0,
        }
    }
}

/// What happens when a client passed the deep tests at its first RCPT.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AfterPass {
    /// Replay the dialogue into a backend and relay: the client never
    /// notices.
    #[default]
    Replay,
    /// postscreen's way: 450 to every RCPT, remember the pass, and let the
    /// client come back.
    Reconnect,
}

/// One deep test's settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeepTestConfig {
    /// Whether the test runs.
    #[serde(default)]
    pub enable: bool,
    /// What to do on a violation; unset: postscreen's default for the test.
    pub action: Option<ActionName>,
    /// How long a pass is remembered; unset: 30 days.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

impl DeepTestConfig {
    /// The action, or `default` when unset.
    pub fn action_or(&self, default: ActionName) -> ActionName {
        self.action.unwrap_or(default)
    }

    /// The pass TTL (30 days when unset).
    pub fn ttl(&self) -> Duration {
        self.ttl.unwrap_or(Duration::from_secs(30 * 86400))
    }
}

/// The `[deep_tests]` section: postscreen's tests after the 220 greeting.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeepTestsSection {
    /// What a pass leads to.
    #[serde(default)]
    pub after_pass: AfterPass,
    /// Commands sent before the previous reply (default action enforce).
    #[serde(default)]
    pub pipelining: DeepTestConfig,
    /// Forbidden commands and header-like lines (default action drop).
    #[serde(default)]
    pub non_smtp_command: DeepTestConfig,
    /// Lines ending in LF without CR (default action ignore).
    #[serde(default)]
    pub bare_newline: DeepTestConfig,
    /// The non-SMTP command verbs.
    #[serde(default = "default_forbidden_commands")]
    pub forbidden_commands: Vec<String>,
}

impl Default for DeepTestsSection {
    fn default() -> Self {
        Self {
            after_pass: AfterPass::default(),
            pipelining: DeepTestConfig::default(),
            non_smtp_command: DeepTestConfig::default(),
            bare_newline: DeepTestConfig::default(),
            forbidden_commands: default_forbidden_commands(),
        }
    }
}

/// The `[admin]` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Where `/metrics` and `/healthz` are served; none: not at all.
    pub address: Option<SocketAddr>,
}

/// The layout of log lines.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Syslog mail-log lines, as postscreen's.
    #[default]
    Postscreen,
    /// One JSON object per event.
    Json,
}

/// The `[log]` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// The layout.
    #[serde(default)]
    pub format: LogFormat,
    /// Send lines to the local syslog socket instead of stderr.
    #[serde(default)]
    pub syslog: bool,
    /// The program name in each line.
    #[serde(default = "default_syslog_tag")]
    pub syslog_tag: String,
    /// The syslog socket.
    #[serde(default = "default_syslog_socket")]
    pub syslog_socket: PathBuf,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            syslog: false,
            syslog_tag: default_syslog_tag(),
            syslog_socket: default_syslog_socket(),
        }
    }
}

/// The config file as written.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    hostname: String,
    #[serde(default = "default_gates")]
    gates: Vec<String>,
    #[serde(with = "humantime_serde", default = "default_shutdown_grace")]
    shutdown_grace: Duration,
    #[serde(default)]
    proxy: ProxySection,
    #[serde(default, rename = "listener")]
    listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "backend")]
    backends: Vec<BackendConfig>,
    #[serde(default)]
    access: AccessSection,
    #[serde(default)]
    greet: GreetSection,
    #[serde(default)]
    dnsbl: DnsblSection,
    #[serde(default)]
    rdns: RdnsSection,
    #[serde(default)]
    greylist: GreylistSection,
    #[serde(default)]
    policy: PolicySection,
    #[serde(default)]
    cache: CacheSection,
    #[serde(default)]
    engine: EngineSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    pool: PoolSection,
    #[serde(default)]
    admin: AdminSection,
    #[serde(default)]
    deep_tests: DeepTestsSection,
}

/// A loaded, checked configuration with the files it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The config file this came from.
    pub path: PathBuf,
    /// The name doorman uses in its own replies.
    pub hostname: String,
    /// The gates, in the order they run (names a [`Registry`] knows).
    pub gates: Vec<String>,
    /// How long live sessions may go on after SIGTERM.
    pub shutdown_grace: Duration,
    /// The `[proxy]` section.
    pub proxy: ProxySection,
    /// The parsed `haproxy_hosts` list (empty when no file is named).
    pub proxy_hosts: ProxyHosts,
    /// The listeners, at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The backends, at least one, in the order they are tried.
    pub backends: Vec<BackendConfig>,
    /// The `[access]` section.
    pub access: AccessSection,
    /// The parsed access list, when `[access] file` names one.
    pub access_list: Option<AccessList>,
    /// The `[greet]` section.
    pub greet: GreetSection,
    /// The `[dnsbl]` section.
    pub dnsbl: DnsblSection,
    /// The `[rdns]` section.
    pub rdns: RdnsSection,
    /// The `[greylist]` section.
    pub greylist: GreylistSection,
    /// The `[policy]` section.
    pub policy: PolicySection,
    /// The parsed DNSBL sites.
    pub dnsbl_sites: Vec<Site>,
    /// The `[cache]` section.
    pub cache: CacheSection,
    /// The `[engine]` section.
    pub engine: EngineSection,
    /// The `[log]` section.
    pub log: LogSection,
    /// The `[limits]` section.
    pub limits: LimitsSection,
    /// The `[pool]` section.
    pub pool: PoolSection,
    /// The `[admin]` section.
    pub admin: AdminSection,
    /// The `[deep_tests]` section.
    pub deep_tests: DeepTestsSection,
}

impl Config {
    /// The teaser text: `[greet] banner`, or `<hostname> ESMTP` when unset.
    /// Empty means no teaser and no pregreet test.
    pub fn greet_banner(&self) -> String {
        self.greet
            .banner
            .clone()
            .unwrap_or_else(|| format!("{} ESMTP", self.hostname))
    }

    /// The shortest TTL of any test, enabled or not (postscreen's
    /// `psc_min_ttl`): how long an ignored deep-test failure counts as a
    /// pass, so the test comes back when something else expires.
    pub fn shortest_ttl(&self) -> Duration {
        let deep = &self.deep_tests;
        [
            self.greet.ttl,
            self.dnsbl.min_ttl,
            deep.pipelining.ttl(),
            deep.non_smtp_command.ttl(),
            deep.bare_newline.ttl(),
        ]
        .into_iter()
        .min()
        .unwrap_or_default()
    }
}

impl Config {
    /// Reads, parses and checks the config file at `path` and every file it
    /// names, with the gates doorman ships.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &Registry::standard())
    }

    /// As [`Config::load`], with the gates `registry` knows.
    pub fn load_with(path: &Path, registry: &Registry) -> Result<Self, ConfigError> {
        Self::parse_with(&read_file(path)?, path, registry)
    }

    /// Parses and checks config text; `path` names the file in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with(text, path, &Registry::standard())
    }

    /// As [`Config::parse`], with the gates `registry` knows.
    pub fn parse_with(text: &str, path: &Path, registry: &Registry) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: error
                .span()
                .map(|span| line_of(text, span.start))
                .unwrap_or(1),
            message: error.message().to_string(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of_key(text, key),
            message,
        };
        if file.hostname.is_empty()
            || !file
                .hostname
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']')
        {
            return Err(invalid(
                "hostname",
                format!(
                    "hostname {:?} must be one word of printable ASCII",
                    file.hostname
                ),
            ));
        }
        check_gates(&file.gates, registry).map_err(|message| invalid("gates", message))?;
        if file.proxy.timeout.is_zero() {
            return Err(invalid("timeout", "proxy timeout must be above 0".into()));
        }
        if file.listeners.is_empty() {
            return Err(invalid(
                "[[listener]]",
                "at least one [[listener]] is needed".into(),
            ));
        }
        if file.backends.is_empty() {
            return Err(invalid(
                "[[backend]]",
                "at least one [[backend]] is needed".into(),
            ));
        }
        if let Some(backend) = file.backends.iter().find(|b| b.connect_timeout.is_zero()) {
            return Err(invalid(
                "connect_timeout",
                format!(
                    "backend {}: connect_timeout must be above 0",
                    backend.address
                ),
            ));
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut proxy = file.proxy;
        let proxy_hosts = match &proxy.hosts_file {
            Some(hosts_file) => {
                let resolved = base.join(hosts_file);
                let hosts = ProxyHosts::load(&resolved)?;
                proxy.hosts_file = Some(resolved);
                hosts
            }
            None => ProxyHosts::default(),
        };
        if proxy_hosts.is_empty()
            && file
                .listeners
                .iter()
                .any(|l| l.proxy == ProxyMode::Required)
        {
            return Err(invalid(
                "required",
                "a listener with proxy = \"required\" needs a non-empty hosts_file".into(),
            ));
        }
        if let Some(banner) = &file.greet.banner {
            if banner.bytes().any(|b| b.is_ascii_control()) {
                return Err(invalid(
                    "banner",
                    "banner must not hold control characters".into(),
                ));
            }
        }
        if file.greet.wait.is_zero() && file.greet.banner.as_deref() != Some("") {
            return Err(invalid(
                "wait",
                "greet wait must be above 0 (set banner = \"\" to turn the pregreet test off)"
                    .into(),
            ));
        }
        if file.limits.ipv4_prefix > 32 || file.limits.ipv6_prefix > 128 {
            return Err(invalid(
                "[limits]",
                "ipv4_prefix must be at most 32 and ipv6_prefix at most 128".into(),
            ));
        }
        if file.greylist.ipv4_prefix > 32
            || file.greylist.ipv6_prefix > 128
            || file.greylist.text.bytes().any(|b| b.is_ascii_control())
        {
            return Err(invalid(
                "[greylist]",
                "ipv4_prefix must be at most 32, ipv6_prefix at most 128, and text one line".into(),
            ));
        }
        if file.gates.iter().any(|gate| gate == "policy") && file.policy.address.is_none() {
            return Err(invalid(
                "[policy]",
                "the policy gate needs [policy] address (\"host:port\" or \"unix:/path\")".into(),
            ));
        }
        if doorman_policy::protocol::meaning(&file.policy.default_action).is_none()
            || file.policy.timeout.is_zero()
        {
            return Err(invalid(
                "default_action",
                format!(
                    "policy default_action {:?} is no access(5) action, or timeout is 0",
                    file.policy.default_action
                ),
            ));
        }
        if file.engine.command_limit == 0 || file.engine.line_length < 16 {
            return Err(invalid(
                "[engine]",
                "command_limit must be above 0 and line_length at least 16".into(),
            ));
        }
        if file.pool.check_interval.is_zero() || file.pool.rise == 0 || file.pool.fall == 0 {
            return Err(invalid(
                "[pool]",
                "check_interval, rise and fall must be above 0".into(),
            ));
        }
        if file.dnsbl.min_ttl > file.dnsbl.max_ttl {
            return Err(invalid("min_ttl", "dnsbl min_ttl is above max_ttl".into()));
        }
        if file.dnsbl.allowlist_threshold > 0 {
            return Err(invalid(
                "allowlist_threshold",
                "allowlist_threshold must be 0 (off) or negative".into(),
            ));
        }
        let mut dnsbl_sites = Vec::new();
        for entry in &file.dnsbl.sites {
            let site = Site::parse(entry).map_err(|error| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of_key(text, entry),
                message: error.to_string(),
            })?;
            dnsbl_sites.push(site);
        }
        if file.cache.flush_interval.is_zero() || file.cache.redis_timeout.is_zero() {
            return Err(invalid(
                "[cache]",
                "flush_interval and redis_timeout must be above 0".into(),
            ));
        }
        let mut cache = file.cache;
        cache.path = base.join(&cache.path);
        let mut access = file.access;
        let access_list = match &access.file {
            Some(table) => {
                let resolved = base.join(table);
                let text = read_file(&resolved)?;
                let list = AccessList::parse(&text, &resolved, access.action.into()).map_err(
                    |doorman_access::AccessError::Syntax {
                         path,
                         line,
                         message,
                     }| ConfigError::Invalid {
                        path,
                        line,
                        message,
                    },
                )?;
                access.file = Some(resolved);
                Some(list)
            }
            None => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            hostname: file.hostname,
            gates: file.gates,
            shutdown_grace: file.shutdown_grace,
            proxy,
            proxy_hosts,
            listeners: file.listeners,
            backends: file.backends,
            access,
            access_list,
            greet: file.greet,
            dnsbl: file.dnsbl,
            rdns: file.rdns,
            greylist: file.greylist,
            policy: file.policy,
            dnsbl_sites,
            cache,
            engine: file.engine,
            log: file.log,
            limits: file.limits,
            pool: file.pool,
            admin: file.admin,
            deep_tests: file.deep_tests,
        })
    }
}

fn default_gates() -> Vec<String> {
    DEFAULT_ORDER.iter().map(ToString::to_string).collect()
}

/// Every name in `gates` must be known, and listed once.
fn check_gates(gates: &[String], registry: &Registry) -> Result<(), String> {
    for (index, name) in gates.iter().enumerate() {
        if !registry.knows(name) {
            return Err(format!(
                "unknown gate {name:?} (known: {registry:?} and {BUILT_IN:?})"
            ));
        }
        if gates[..index].contains(name) {
            return Err(format!("gate {name:?} is listed twice"));
        }
    }
    Ok(())
}

/// The largest file a config may name (a list, a table, the config).
const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// Reads a file named by the config, or says which one could not be read.
/// Only regular files up to [`MAX_FILE_SIZE`] are read, so a config that
/// names `/dev/zero` or a huge file fails instead of hanging.
fn read_file(path: &Path) -> Result<String, ConfigError> {
    let fail = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(fail)?;
    if !metadata.is_file() || metadata.len() > MAX_FILE_SIZE {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file of at most {MAX_FILE_SIZE} bytes"),
        )));
    }
    std::fs::read_to_string(path).map_err(fail)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The first line that mentions `key`, for checks that run after parsing.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| line.split('#').next().unwrap_or_default().contains(key))
        .map_or(1, |index| index + 1)
}

fn default_proxy_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_greet_wait() -> Duration {
    Duration::from_secs(6)
}

fn default_greet_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_threshold() -> i32 {
    1
}

fn default_min_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_dnsbl_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_cache_size() -> usize {
    100_000
}

fn default_forbidden_commands() -> Vec<String> {
    vec!["CONNECT".into(), "GET".into(), "POST".into()]
}

fn default_weight() -> u32 {
    1
}

fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_rise() -> u32 {
    2
}

fn default_fall() -> u32 {
    3
}

fn default_client_connections() -> usize {
    50
}

fn default_screening() -> usize {
    100
}

fn default_total() -> usize {
    10_000
}

fn default_syslog_tag() -> String {
    "postfix/postscreen".to_string()
}

fn default_syslog_socket() -> PathBuf {
    PathBuf::from("/dev/log")
}

fn default_cache_path() -> PathBuf {
    PathBuf::from("doorman-cache.redb")
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".to_string()
}

fn default_redis_prefix() -> String {
    "doorman:".to_string()
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_cleanup_interval() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_retention_time() -> Duration {
    Duration::from_secs(7 * 86400)
}

fn default_command_limit() -> usize {
    20
}

fn default_line_length() -> usize {
    2048
}

fn default_command_time() -> Duration {
    Duration::from_secs(300)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:10026\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(MINIMAL, Path::new("/etc/doorman/doorman.toml")).expect("ok");
        assert_eq!(config.proxy.timeout, Duration::from_secs(30));
        assert_eq!(config.backends[0].send_proxy, SendProxy::V2);
        assert_eq!(config.backends[0].connect_timeout, Duration::from_secs(5));
        assert_eq!(config.listeners[0].proxy, ProxyMode::Optional);
        assert!(config.proxy_hosts.is_empty());
        assert_eq!(config.greet_banner(), "mx.test ESMTP");
        assert_eq!(config.greet.wait, Duration::from_secs(6));
        assert_eq!(config.greet.ttl, Duration::from_secs(86400));
        assert_eq!(config.dnsbl.threshold, 1);
        assert_eq!(config.dnsbl.min_ttl, Duration::from_secs(60));
        assert_eq!(config.dnsbl.max_ttl, Duration::from_secs(3600));
        assert_eq!(config.cache.size, 100_000);
        assert_eq!(config.engine.command_limit, 20);
        assert_eq!(config.engine.line_length, 2048);
        assert!(config.access_list.is_none() && config.dnsbl_sites.is_empty());
    }

    #[test]
    fn gating_sections() {
        let text = format!(
            "{MINIMAL}[greet]\nbanner = \"\"\naction = \"drop\"\n[dnsbl]\nsites = [\"zen.test=127.0.0.[2..11]*3\", \"wl.test*-2\"]\nallowlist_threshold = -1\nnameservers = [\"127.0.0.1:5300\"]\nreply_map = {{ \"zen.test\" = \"zen.example\" }}\n"
        );
        let config = Config::parse(&text, Path::new("d.toml")).expect("ok");
        assert_eq!(config.greet_banner(), "");
        assert_eq!(config.greet.action, ActionName::Drop);
        assert_eq!(config.dnsbl_sites.len(), 2);
        assert_eq!(config.dnsbl_sites[1].weight, -2);
        assert_eq!(config.dnsbl.reply_map["zen.test"], "zen.example");
        let bad = text.replace("*-2", "*two");
        let shown = Config::parse(&bad, Path::new("d.toml"))
            .expect_err("bad site")
            .to_string();
        assert!(
            shown.starts_with("d.toml:10: bad DNSBL weight factor"),
            "{shown}"
        );
    }

    #[test]
    fn errors_carry_file_and_line() {
        let text = format!("{MINIMAL}send_proxy = \"v3\"\n");
        let error = Config::parse(&text, Path::new("d.toml")).expect_err("bad value");
        let shown = error.to_string();
        assert!(shown.starts_with("d.toml:6: "), "{shown}");
        assert!(shown.contains("v3"), "{shown}");

        let text = MINIMAL.replace("[[backend]]", "bogus = 1\n[[backend]]");
        let shown = Config::parse(&text, Path::new("d.toml"))
            .expect_err("unknown key")
            .to_string();
        assert!(shown.starts_with("d.toml:4: "), "{shown}");
        assert!(shown.contains("bogus"), "{shown}");

        let text = MINIMAL.replace("\"mx.test\"", "\"mx test\"");
        let shown = Config::parse(&text, Path::new("d.toml"))
            .expect_err("bad hostname")
            .to_string();
        assert!(shown.starts_with("d.toml:1: "), "{shown}");
    }

    #[test]
    fn durations_and_modes() {
        let text = "hostname = \"h\"\n[proxy]\ntimeout = \"1500ms\"\n[[listener]]\naddress = \"[::1]:2525\"\nproxy = \"optional\"\n[[backend]]\naddress = \"127.0.0.1:1\"\nsend_proxy = \"none\"\nconnect_timeout = \"2s\"\n";
        let config = Config::parse(text, Path::new("x.toml")).expect("ok");
        assert_eq!(config.proxy.timeout, Duration::from_millis(1500));
        assert_eq!(config.backends[0].send_proxy, SendProxy::None);
        assert_eq!(config.listeners[0].address, "[::1]:2525".parse().unwrap());
    }

    #[test]
    fn required_mode_needs_hosts() {
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:0\"",
            "address = \"127.0.0.1:0\"\nproxy = \"required\"",
        );
        let shown = Config::parse(&text, Path::new("d.toml"))
            .expect_err("needs hosts")
            .to_string();
        assert!(shown.contains("hosts_file"), "{shown}");
    }
}
