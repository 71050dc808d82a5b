//! The `[relay]` section: relay mode, for backends that cannot be told
//! the client by a PROXY header or XCLIENT (`send_proxy = "received"`):
//! doorman reads each message, checks its header block and writes its own
//! `Received:` header above it, as Postfix's before-queue proxy does.

use std::time::Duration;

use doorman_gate_api::SectionError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::bounds::{at_most, HumanDuration, HOUR};
use super::{BackendConfig, ClusterSection, SendProxy};

/// The `[relay]` section.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Relay mode (`send_proxy = "received"`): the most `Received:`
    /// headers a message may carry (Postfix's `hopcount_limit`); more is a
    /// mail loop, refused with `554 5.4.0 Error: too many hops`.
    #[serde(default = "default_max_hops")]
    #[schemars(range(min = 1))]
    pub max_hops: usize,
    /// Relay mode: the largest header block in bytes; larger is refused
    /// with `552 5.3.4` (Postfix's `header_size_limit` is where its cleanup
    /// starts dropping header text).
    #[serde(default = "default_max_header_size")]
    #[schemars(range(min = MIN_HEADER_SIZE, max = MAX_HEADER_SIZE))]
    pub max_header_size: usize,
    /// Relay mode: how long the backend may be silent over each step; then
    /// the client gets `451 4.3.0 Error: queue file write error` (Postfix's
    /// `smtpd_proxy_timeout`); above 0.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    #[schemars(with = "HumanDuration", transform = at_most(HOUR))]
    pub timeout: Duration,
}

/// The smallest `max_header_size` taken.
const MIN_HEADER_SIZE: usize = 1024;

/// The largest `max_header_size` taken.
const MAX_HEADER_SIZE: usize = 16 * 1024 * 1024;

fn default_max_hops() -> usize {
    50
}

fn default_max_header_size() -> usize {
    100 * 1024
}

fn default_timeout() -> Duration {
    Duration::from_secs(100)
}

impl RelaySection {
    /// Checks the limits.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.max_hops == 0 {
            return Err(SectionError::key("max_hops", "max_hops must be above 0"));
        }
        if !(MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&self.max_header_size) {
            return Err(SectionError::key(
                "max_header_size",
                "max_header_size must be from 1024 to 16777216 bytes",
            ));
        }
        if self.timeout.is_zero() {
            return Err(SectionError::key("timeout", "timeout must be above 0"));
        }
        SectionError::within("timeout", self.timeout, HOUR)
    }
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            max_hops: default_max_hops(),
            max_header_size: default_max_header_size(),
            timeout: default_timeout(),
        }
    }
}

/// The first backend whose cluster mixes relay mode with other kinds, and
/// why that is refused: relay mode changes what every client of a cluster
/// meets (the engine, doorman's EHLO keywords), so a cluster is all relay
/// mode or none of it.
pub(super) fn mixed_cluster(backends: &[BackendConfig]) -> Option<(usize, String)> {
    let relays = |backend: &BackendConfig| backend.send_proxy == SendProxy::Received;
    backends.iter().enumerate().find_map(|(index, backend)| {
        backends
            .iter()
            .any(|other| other.cluster == backend.cluster && relays(other) != relays(backend))
            .then(|| {
                let message = format!(
                    "cluster {:?} mixes send_proxy = \"received\" with other kinds: \
                     give relay-mode backends a cluster of their own",
                    backend.cluster
                );
                (index, message)
            })
    })
}

/// The first relay-mode cluster that is balanced by recipient, which relay
/// mode does not do (its backend is picked at the first RCPT, before a
/// user's is known to be the transaction's).
pub(super) fn relay_by_recipient<'a>(
    backends: &[BackendConfig],
    clusters: &'a std::collections::BTreeMap<String, ClusterSection>,
) -> Option<&'a str> {
    clusters
        .iter()
        .filter(|(_, section)| section.by_recipient())
        .map(|(name, _)| name.as_str())
        .find(|name| {
            backends
                .iter()
                .any(|b| b.cluster == *name && b.send_proxy == SendProxy::Received)
        })
}
