//! The `[policy]` section: where the service listens, which clients it
//! sees, and what answers when it fails. The gate runs when `policy` is
//! in `gates`.

use std::sync::Arc;
use std::time::Duration;

use doorman_gate_api::schema::{at_most, HumanDuration, DAY, FIVE_MINUTES};
use doorman_gate_api::{BuildError, Gate, GateSection, Resources, SectionContext, SectionError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::protocol::meaning;
use crate::{Address, Clients, PolicyGate, Settings};

/// The `[policy]` section.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// A Postfix policy service: `"host:port"` or `"unix:/path"`;
    /// required when `policy` is in `gates`.
    pub address: Option<String>,
    /// Which clients the service sees: `doubtful` (a score at or above
    /// `[greylist] threshold`) or `all`.
    #[serde(default)]
    pub clients: ClientsName,
    /// How long one request may take; above 0.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    #[schemars(with = "HumanDuration", transform = at_most(FIVE_MINUTES))]
    pub timeout: Duration,
    /// The action when the service fails, an access(5) action (Postfix's
    /// `smtpd_policy_service_default_action`).
    #[serde(default = "default_action")]
    pub default_action: String,
    /// Requests per connection before a new one; 0: no limit.
    #[serde(default)]
    pub request_limit: u32,
    /// Attempts per policy request: a connection that fails before the
    /// first reply byte (the service closed a kept one) is replaced by a
    /// new one, as Postfix's `smtpd_policy_service_try_limit`; 1: no
    /// second attempt.
    #[serde(default = "default_try_limit")]
    #[schemars(range(min = 1))]
    pub try_limit: u32,
    /// A kept policy connection unused longer than this is closed instead
    /// of reused, as Postfix's `smtpd_policy_service_max_idle`; above 0.
    #[serde(with = "humantime_serde", default = "default_max_idle")]
    #[schemars(with = "HumanDuration", transform = at_most(MAX_CONNECTION_TIME))]
    pub max_idle: Duration,
    /// A kept policy connection opened longer ago than this is closed
    /// instead of reused, as Postfix's `smtpd_policy_service_max_ttl`
    /// (`request_limit` still counts requests); above 0.
    #[serde(with = "humantime_serde", default = "default_max_ttl")]
    #[schemars(with = "HumanDuration", transform = at_most(MAX_CONNECTION_TIME))]
    pub max_ttl: Duration,
}

/// Which clients the service sees, as the config names them.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientsName {
    /// Only doubtful clients.
    #[default]
    Doubtful,
    /// Every client (each then talks to the built-in engine up to RCPT).
    All,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_try_limit() -> u32 {
    2
}

fn default_max_idle() -> Duration {
    Duration::from_secs(300)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(1000)
}

/// The bound of `max_idle` and `max_ttl`.
const MAX_CONNECTION_TIME: Duration = DAY;

fn default_action() -> String {
    "451 4.3.5 Server configuration problem".into()
}

impl GateSection for PolicySection {
    fn judges_commands(&self) -> bool {
        true
    }

    fn check(&mut self, _: &SectionContext) -> Result<(), SectionError> {
        if self.address.is_none() {
            return Err(SectionError::key(
                "",
                "the policy gate needs [policy] address (\"host:port\" or \"unix:/path\")",
            ));
        }
        if meaning(&self.default_action).is_none() {
            return Err(SectionError::key(
                "default_action",
                format!(
                    "policy default_action {:?} is no access(5) action",
                    self.default_action
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(SectionError::key(
                "timeout",
                "policy timeout must be above 0",
            ));
        }
        SectionError::within("timeout", self.timeout, FIVE_MINUTES)?;
        if self.try_limit == 0 {
            return Err(SectionError::key(
                "try_limit",
                "policy try_limit must be at least 1 (1: no second attempt)",
            ));
        }
        for (key, value) in [("max_idle", self.max_idle), ("max_ttl", self.max_ttl)] {
            if value.is_zero() {
                return Err(SectionError::key(
                    key,
                    format!("policy {key} must be above 0"),
                ));
            }
            SectionError::within(key, value, MAX_CONNECTION_TIME)?;
        }
        Ok(())
    }

    fn build(
        &self,
        shared: &SectionContext,
        resources: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError> {
        let Some(address) = &self.address else {
            return Ok(None);
        };
        let settings = Settings {
            address: Address::parse(address),
            clients: match self.clients {
                ClientsName::All => Clients::All,
                ClientsName::Doubtful => Clients::Doubtful(shared.doubtful),
            },
            timeout: self.timeout,
            default_action: self.default_action.clone(),
            request_limit: self.request_limit,
            try_limit: self.try_limit,
            max_idle: self.max_idle,
            max_ttl: self.max_ttl,
            hostname: shared.hostname.clone(),
        };
        Ok(Some(Arc::new(PolicyGate::new(
            settings,
            resources.events("policy"),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use doorman_gate_api::ResolverSettings;
    use serde::de::value::{Error, MapDeserializer};

    /// The section from string keys (durations), with an address.
    fn section(pairs: &[(&'static str, &'static str)]) -> Result<PolicySection, Error> {
        let pairs = pairs.iter().copied();
        let mut section = PolicySection::deserialize(MapDeserializer::<_, Error>::new(pairs))?;
        section.address = Some("127.0.0.1:10023".into());
        Ok(section)
    }

    fn context() -> SectionContext {
        SectionContext {
            hostname: "mx.doorman.test".into(),
            base: ".".into(),
            cache_size: 10,
            resolver: ResolverSettings {
                min_ttl: Duration::from_secs(60),
                max_ttl: Duration::from_secs(3600),
                timeout: Duration::from_secs(10),
                nameservers: Vec::new(),
                limits: doorman_gate_api::DnsLimits {
                    total: 0,
                    per_network: 0,
                },
            },
            doubtful: 1,
        }
    }

    fn error_key(pairs: &[(&'static str, &'static str)]) -> Option<String> {
        match section(pairs).unwrap().check(&context()) {
            Ok(()) => None,
            Err(SectionError::Key { key, .. }) => Some(key),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn defaults_are_postfix_s() {
        let mut section = section(&[]).unwrap();
        assert_eq!(section.try_limit, 2);
        assert_eq!(section.max_idle, Duration::from_secs(300));
        assert_eq!(section.max_ttl, Duration::from_secs(1000));
        assert_eq!(section.request_limit, 0);
        assert_eq!(section.check(&context()), Ok(()));
    }

    #[test]
    fn connection_keys_are_read_and_checked() {
        let read = section(&[("max_idle", "10s"), ("max_ttl", "1h")]).unwrap();
        assert_eq!(read.max_idle, Duration::from_secs(10));
        assert_eq!(read.max_ttl, Duration::from_secs(3600));
        assert!(section(&[("max_idle", "soon")]).is_err());
        assert_eq!(
            error_key(&[("max_idle", "0s")]).as_deref(),
            Some("max_idle")
        );
        assert_eq!(error_key(&[("max_ttl", "0s")]).as_deref(), Some("max_ttl"));
        assert_eq!(
            error_key(&[("max_idle", "2d")]).as_deref(),
            Some("max_idle")
        );
        assert_eq!(error_key(&[("max_ttl", "25h")]).as_deref(), Some("max_ttl"));
        assert_eq!(error_key(&[("max_ttl", "24h")]), None);
    }

    #[test]
    fn try_limit_is_at_least_one() {
        let mut one = section(&[]).unwrap();
        one.try_limit = 1;
        assert_eq!(one.check(&context()), Ok(()));
        let mut zero = section(&[]).unwrap();
        zero.try_limit = 0;
        match zero.check(&context()) {
            Err(SectionError::Key { key, message }) => {
                assert_eq!(key, "try_limit");
                assert!(message.contains("at least 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
