//! The screening sections of the config file (the access list, the
//! greet wait, the gates, the deep tests), as serde reads them, with
//! postscreen's defaults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use doorman_gate_api::Action;
use serde::Deserialize;

use super::*;

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

pub(super) fn default_no_ptr() -> i32 {
    2
}

pub(super) fn default_one() -> i32 {
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

pub(super) fn default_greylist_delay() -> Duration {
    Duration::from_secs(300)
}

pub(super) fn default_retry_window() -> Duration {
    Duration::from_secs(2 * 86400)
}

pub(super) fn default_auto_allowlist() -> u32 {
    5
}

pub(super) fn default_max_age() -> Duration {
    Duration::from_secs(35 * 86400)
}

pub(super) fn default_greylist_ipv4_prefix() -> u8 {
    24
}

pub(super) fn default_greylist_text() -> String {
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

pub(super) fn default_policy_timeout() -> Duration {
    Duration::from_secs(10)
}

pub(super) fn default_policy_action() -> String {
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
