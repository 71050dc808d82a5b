//! The `[policy]` section: where the service listens, which clients it
//! sees, and what answers when it fails. The gate runs when `policy` is
//! in `gates`.

use std::sync::Arc;
use std::time::Duration;

use doorman_gate_api::{BuildError, Gate, GateSection, Resources, SectionContext, SectionError};
use serde::Deserialize;

use crate::protocol::meaning;
use crate::{Address, Clients, PolicyGate, Settings};

/// The `[policy]` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// `host:port`, or `unix:/path`.
    pub address: Option<String>,
    /// `doubtful` (a score at or above `[greylist] threshold`) or `all`.
    #[serde(default)]
    pub clients: ClientsName,
    /// How long one request may take.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// The action when the service fails (Postfix's
    /// `smtpd_policy_service_default_action`).
    #[serde(default = "default_action")]
    pub default_action: String,
    /// Requests per connection before a new one; 0: no limit.
    #[serde(default)]
    pub request_limit: u32,
}

/// Which clients the service sees, as the config names them.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
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
        SectionError::within("timeout", self.timeout, Duration::from_secs(5 * 60))
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
            hostname: shared.hostname.clone(),
        };
        Ok(Some(Arc::new(PolicyGate::new(
            settings,
            resources.events("policy"),
        ))))
    }
}
