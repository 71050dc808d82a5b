//! The `[limits]` section: connection limits per client, per network and
//! in total, and the per-minute connection rate at two network levels.

use doorman_gate_api::SectionError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::defaults::*;

/// How many times `connection_rate` a wider network (`ipv4_aggregate_prefix`,
/// `ipv6_aggregate_prefix`) may open per minute.
pub const AGGREGATE_FACTOR: usize = 16;

/// The `[limits]` section; 0 turns a limit off.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Concurrent connections per client
    /// (`postscreen_client_connection_count_limit`); 0: off.
    #[serde(default = "default_client_connections")]
    pub client_connections: usize,
    /// Clients being screened at once (`postscreen_pre_queue_limit`); 0:
    /// off.
    #[serde(default = "default_screening")]
    pub screening: usize,
    /// Client connections in total; 0: off.
    #[serde(default = "default_total")]
    pub total: usize,
    /// What one client is for the per-client limits: its IPv4 address
    /// within this prefix (32: the address itself).
    #[serde(default = "default_ipv4_prefix")]
    #[schemars(range(max = 32))]
    pub ipv4_prefix: u8,
    /// The same for IPv6 (64: a customer's usual /64 is one client).
    #[serde(default = "default_ipv6_prefix")]
    #[schemars(range(max = 128))]
    pub ipv6_prefix: u8,
    /// The most screening places one client network may hold; over it
    /// `421 4.3.2 All screening ports are busy`; 0: off.
    #[serde(default)]
    pub screening_per_network: usize,
    /// New connections per client network per minute (Postfix's anvil);
    /// over it `421 4.7.0 <hostname> Error: too many connections from
    /// <ip>`; allowlisted and cached clients are never counted; 0: off.
    #[serde(default)]
    pub connection_rate: usize,
    /// The wider IPv4 network whose connection rate is counted too,
    /// limited at 16 times `connection_rate` (`AGGREGATE_FACTOR`), so
    /// cycling through small networks is counted (equal to `ipv4_prefix`:
    /// one level only).
    #[serde(default = "default_ipv4_aggregate_prefix")]
    #[schemars(range(max = 32))]
    pub ipv4_aggregate_prefix: u8,
    /// The same for IPv6 (48: a site's usual allocation; equal to
    /// `ipv6_prefix`: one level only).
    #[serde(default = "default_ipv6_aggregate_prefix")]
    #[schemars(range(max = 128))]
    pub ipv6_aggregate_prefix: u8,
}

impl LimitsSection {
    /// Checks the network prefixes.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.ipv4_prefix > 32 || self.ipv6_prefix > 128 {
            return Err(SectionError::key(
                "",
                "ipv4_prefix must be at most 32 and ipv6_prefix at most 128",
            ));
        }
        if self.ipv4_aggregate_prefix > 32 || self.ipv6_aggregate_prefix > 128 {
            return Err(SectionError::key(
                "",
                "ipv4_aggregate_prefix must be at most 32 and ipv6_aggregate_prefix at most 128",
            ));
        }
        Ok(())
    }
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
            ipv4_aggregate_prefix: default_ipv4_aggregate_prefix(),
            ipv6_aggregate_prefix: default_ipv6_aggregate_prefix(),
        }
    }
}
