//! The `[greylist]` section: the delays, the network keys, the reply text
//! and the cap on records per network, checked when the config loads.

use std::sync::Arc;
use std::time::Duration;

use doorman_gate_api::schema::{at_most, HumanDuration, DAY, YEAR};
use doorman_gate_api::{BuildError, Gate, GateSection, Resources, SectionContext, SectionError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::GreylistGate;

/// The greylisting settings: the `[greylist]` section.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A summed score at or above it (and below `[score] threshold`) makes
    /// a client doubtful: greylisted at RCPT.
    #[serde(default = "default_threshold")]
    pub threshold: i32,
    /// A triplet passes when retried after `delay` (and within
    /// `retry_window`).
    #[serde(with = "humantime_serde", default = "default_delay")]
    #[schemars(with = "HumanDuration", transform = at_most(DAY))]
    pub delay: Duration,
    /// How long after the delay a retry is still taken.
    #[serde(with = "humantime_serde", default = "default_retry_window")]
    #[schemars(with = "HumanDuration", transform = at_most(YEAR))]
    pub retry_window: Duration,
    /// After this many successful retries a network skips greylisting for
    /// `max_age` (postgrey's `--auto-whitelist-clients`); 0: never.
    #[serde(default = "default_auto_allowlist")]
    pub auto_allowlist: u32,
    /// How long a passed triplet, and an allowlisted network, is kept.
    #[serde(with = "humantime_serde", default = "default_max_age")]
    #[schemars(with = "HumanDuration", transform = at_most(YEAR))]
    pub max_age: Duration,
    /// The IPv4 network a client is keyed by (postgrey's
    /// `--lookup-by-subnet`).
    #[serde(default = "default_ipv4_prefix")]
    #[schemars(range(max = 32))]
    pub ipv4_prefix: u8,
    /// The IPv6 network a client is keyed by.
    #[serde(default = "default_ipv6_prefix")]
    #[schemars(range(max = 128))]
    pub ipv6_prefix: u8,
    /// The most triplet records one network (keyed as above) may hold;
    /// past it a new triplet gets the 450 and makes no record.
    #[serde(default = "default_max_records_per_network")]
    #[schemars(range(min = 1, max = MAX_RECORDS_PER_NETWORK))]
    pub max_records_per_network: u32,
    /// The reply text after `Recipient address rejected: `; `%r` stands for
    /// the recipient's domain (postgrey's `--greylist-text`). One line.
    #[serde(default = "default_text")]
    pub text: String,
}

fn default_threshold() -> i32 {
    1
}

fn default_delay() -> Duration {
    Duration::from_secs(300)
}

fn default_retry_window() -> Duration {
    Duration::from_secs(2 * DAY_SECONDS)
}

fn default_auto_allowlist() -> u32 {
    5
}

fn default_max_age() -> Duration {
    Duration::from_secs(35 * DAY_SECONDS)
}

fn default_ipv4_prefix() -> u8 {
    24
}

fn default_ipv6_prefix() -> u8 {
    64
}

fn default_max_records_per_network() -> u32 {
    100
}

fn default_text() -> String {
    "Greylisted, see http://postgrey.schweikert.ch/help/%r.html".into()
}

/// Seconds in a day.
const DAY_SECONDS: u64 = 86400;

/// The most `max_records_per_network` may be.
const MAX_RECORDS_PER_NETWORK: u32 = 1_000_000;

impl GateSection for Settings {
    fn judges_commands(&self) -> bool {
        true
    }

    fn check(&mut self, _: &SectionContext) -> Result<(), SectionError> {
        SectionError::within("delay", self.delay, DAY)?;
        SectionError::within("retry_window", self.retry_window, YEAR)?;
        SectionError::within("max_age", self.max_age, YEAR)?;
        if self.ipv4_prefix > 32 {
            return Err(SectionError::key(
                "ipv4_prefix",
                "ipv4_prefix must be at most 32",
            ));
        }
        if self.ipv6_prefix > 128 {
            return Err(SectionError::key(
                "ipv6_prefix",
                "ipv6_prefix must be at most 128",
            ));
        }
        if !(1..=MAX_RECORDS_PER_NETWORK).contains(&self.max_records_per_network) {
            return Err(SectionError::key(
                "max_records_per_network",
                "max_records_per_network must be from 1 to 1000000",
            ));
        }
        if self.text.bytes().any(|b| b.is_ascii_control()) {
            return Err(SectionError::key("text", "text must be one line"));
        }
        Ok(())
    }

    fn build(
        &self,
        _: &SectionContext,
        resources: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError> {
        Ok(Some(Arc::new(GreylistGate::new(
            self.clone(),
            Arc::clone(&resources.record_store),
            resources.events("greylist"),
        ))))
    }
}
