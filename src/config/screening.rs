//! The screening sections the core reads (the greet wait, the score, the
//! shared resolver), as serde reads them, with postscreen's defaults, and
//! each section's own check. The gates' sections live in their crates, the
//! deep tests' in `crate::deep`.

use std::net::SocketAddr;
use std::time::Duration;

use doorman_gate_api::{Action, DnsLimits, ResolverSettings, SectionError};

use super::bounds::{at_most, HumanDuration, FIVE_MINUTES, YEAR};
use schemars::JsonSchema;
use serde::Deserialize;

use super::*;

/// The `[greet]` section: the teaser and the pregreet test.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GreetSection {
    /// The teaser after `220-`; `""` turns the teaser and the pregreet
    /// test off. No control characters.
    #[schemars(extend("x-default" = "`\"<hostname> ESMTP\"`"))]
    pub banner: Option<String>,
    /// The greet wait: how long to wait for a pregreet and for DNS
    /// answers; above 0 unless `banner = ""`.
    #[serde(with = "humantime_serde", default = "default_greet_wait")]
    #[schemars(with = "HumanDuration", transform = at_most(FIVE_MINUTES))]
    pub wait: Duration,
    /// What to do with a pregreeter: `ignore`, `enforce` or `drop`.
    #[serde(default)]
    pub action: Action,
    /// How long a pregreet pass is remembered.
    #[serde(with = "humantime_serde", default = "default_greet_ttl")]
    #[schemars(with = "HumanDuration", transform = at_most(YEAR))]
    pub ttl: Duration,
}

impl GreetSection {
    /// Checks the teaser and the wait.
    pub fn check(&self) -> Result<(), SectionError> {
        if let Some(banner) = &self.banner {
            if banner.bytes().any(|b| b.is_ascii_control()) {
                return Err(SectionError::key(
                    "banner",
                    "banner must not hold control characters",
                ));
            }
        }
        if self.wait.is_zero() && self.banner.as_deref() != Some("") {
            return Err(SectionError::key(
                "wait",
                "greet wait must be above 0 (set banner = \"\" to turn the pregreet test off)",
            ));
        }
        SectionError::within("wait", self.wait, FIVE_MINUTES)?;
        SectionError::within("ttl", self.ttl, YEAR)
    }
}

impl Default for GreetSection {
    fn default() -> Self {
        Self {
            banner: None,
            wait: default_greet_wait(),
            action: Action::Ignore,
            ttl: default_greet_ttl(),
        }
    }
}

/// The `[score]` section: how the wait gates' summed score is judged, as
/// postscreen judges its DNSBL score (`postscreen_dnsbl_threshold`,
/// `postscreen_dnsbl_allowlist_threshold`, `postscreen_dnsbl_action`).
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScoreSection {
    /// A summed score (every wait gate's weights) at or above it fails;
    /// old name `[dnsbl] threshold`.
    #[serde(default = "default_threshold")]
    pub threshold: i32,
    /// A score at or below it (negative) passes every test; 0 is off; old
    /// name `[dnsbl] allowlist_threshold`.
    #[serde(default)]
    #[schemars(range(max = 0))]
    pub allowlist_threshold: i32,
    /// What to do with a client whose score fails: `ignore`, `enforce` or
    /// `drop`; old name `[dnsbl] action`.
    #[serde(default)]
    pub action: Action,
}

impl Default for ScoreSection {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            allowlist_threshold: 0,
            action: Action::Ignore,
        }
    }
}

impl ScoreSection {
    /// Checks the thresholds.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.allowlist_threshold > 0 {
            return Err(SectionError::key(
                "allowlist_threshold",
                "allowlist_threshold must be 0 (off) or negative",
            ));
        }
        Ok(())
    }
}

/// The keys the core reads out of the table of the gate the registry names
/// (`Registry::resolver`: `[dnsbl]`, where postscreen's operators look for
/// them): the resolver every DNS gate shares, and the old names of
/// `[score]`'s keys. The gate reads the rest of its table.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SharedKeys {
    /// The shortest time DNS answers, and the passes they give, are
    /// remembered: the lower clamp of their TTLs (the resolver every DNS
    /// gate shares); at most `max_ttl`.
    #[serde(with = "humantime_serde", default = "default_min_ttl")]
    #[schemars(with = "HumanDuration", transform = at_most(YEAR))]
    pub min_ttl: Duration,
    /// The longest time DNS answers, and the passes they give, are
    /// remembered: the upper clamp of their TTLs (every DNS gate).
    #[serde(with = "humantime_serde", default = "default_max_ttl")]
    #[schemars(with = "HumanDuration", transform = at_most(YEAR))]
    pub max_ttl: Duration,
    /// How long one DNS query may take (every DNS gate).
    #[serde(with = "humantime_serde", default = "default_dnsbl_timeout")]
    #[schemars(with = "HumanDuration", transform = at_most(FIVE_MINUTES))]
    pub timeout: Duration,
    /// Name servers, an `"ip:port"` list; empty: `/etc/resolv.conf`; with
    /// exactly one, doorman asks it directly over UDP (reused sockets),
    /// with several hickory-resolver's pool chooses (every DNS gate).
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// DNS queries in flight at once, every DNS gate's together; 0: no
    /// cap. A lookup over a cap is not sent and is no opinion, counted as
    /// `doorman_gate_events_total{event="dns_skipped"}` and logged at most
    /// once a minute.
    #[serde(default = "default_max_queries")]
    pub max_queries: usize,
    /// DNS queries in flight at once for the clients of one network (an
    /// IPv4 /24, an IPv6 /64); 0: no cap; over it as `max_queries`.
    #[serde(default = "default_max_queries_per_network")]
    pub max_queries_per_network: usize,
    /// Deprecated: the old name of `[score] threshold` (not both).
    pub threshold: Option<i32>,
    /// Deprecated: the old name of `[score] allowlist_threshold` (not
    /// both).
    pub allowlist_threshold: Option<i32>,
    /// Deprecated: the old name of `[score] action` (not both).
    pub action: Option<Action>,
}

impl SharedKeys {
    /// The keys this type reads out of the gate's table.
    pub const KEYS: [&'static str; 9] = [
        "min_ttl",
        "max_ttl",
        "timeout",
        "nameservers",
        "max_queries",
        "max_queries_per_network",
        "threshold",
        "allowlist_threshold",
        "action",
    ];

    /// Checks the resolver's settings.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.min_ttl > self.max_ttl {
            return Err(SectionError::key(
                "min_ttl",
                "dnsbl min_ttl is above max_ttl",
            ));
        }
        SectionError::within("min_ttl", self.min_ttl, YEAR)?;
        SectionError::within("max_ttl", self.max_ttl, YEAR)?;
        SectionError::within("timeout", self.timeout, FIVE_MINUTES)
    }

    /// The resolver settings gates get.
    pub fn resolver(&self) -> ResolverSettings {
        ResolverSettings {
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            timeout: self.timeout,
            nameservers: self.nameservers.clone(),
            limits: DnsLimits {
                total: self.max_queries,
                per_network: self.max_queries_per_network,
            },
        }
    }

    /// `[score]` with the old keys applied where `[score]` is silent, and
    /// a deprecation line for each old key used; an error names a key set
    /// in both places.
    pub fn score(
        &self,
        score: Option<ScoreSection>,
    ) -> Result<(ScoreSection, Vec<String>), SectionError> {
        let old = [
            ("threshold", self.threshold.is_some()),
            ("allowlist_threshold", self.allowlist_threshold.is_some()),
            ("action", self.action.is_some()),
        ];
        let used: Vec<&str> = old
            .iter()
            .filter(|(_, set)| *set)
            .map(|(key, _)| *key)
            .collect();
        let Some(first) = used.first() else {
            return Ok((score.unwrap_or_default(), Vec::new()));
        };
        if score.is_some() {
            return Err(SectionError::key(
                *first,
                format!("[dnsbl] {first} is the old name of [score] {first}: set the score in [score] only"),
            ));
        }
        let defaults = ScoreSection::default();
        let merged = ScoreSection {
            threshold: self.threshold.unwrap_or(defaults.threshold),
            allowlist_threshold: self
                .allowlist_threshold
                .unwrap_or(defaults.allowlist_threshold),
            action: self.action.unwrap_or(defaults.action),
        };
        let lines = used
            .iter()
            .map(|key| format!("[dnsbl] {key} is deprecated: it is [score] {key} now, which judges every gate's weights"))
            .collect();
        Ok((merged, lines))
    }
}

impl Default for SharedKeys {
    fn default() -> Self {
        Self {
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            timeout: default_dnsbl_timeout(),
            nameservers: Vec::new(),
            max_queries: default_max_queries(),
            max_queries_per_network: default_max_queries_per_network(),
            threshold: None,
            allowlist_threshold: None,
            action: None,
        }
    }
}
