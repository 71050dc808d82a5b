//! The `[cluster.NAME]` sections: how one backend cluster balances, and, for
//! a cluster balanced by recipient, what a user is and how long its
//! backend is remembered (after Dovecot's director). Sans-IO; it imports
//! nothing from the runtime.

use std::time::Duration;

use doorman_gate_api::SectionError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bounds::{at_most, HumanDuration, DAY};
use super::Balance;

/// What identifies a user for a cluster balanced by recipient.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecipientKey {
    /// The address, lowercased, with a `+extension` dropped.
    #[default]
    Address,
    /// The domain alone, lowercased.
    Domain,
}

/// One `[cluster.NAME]` section.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// How a backend of this cluster is picked: `[pool] balance`'s values,
    /// and also `recipient` (see `docs/fleet.md`, Routing by recipient).
    #[schemars(extend("x-default" = "`[pool] balance`"))]
    pub balance: Option<Balance>,
    /// With `recipient`: the user is the `address` (lowercased,
    /// `+extension` dropped) or the `domain`.
    #[serde(default)]
    pub key: RecipientKey,
    /// With `recipient`: how long a user's backend is remembered after its
    /// last use (Dovecot's `director_user_expire`); above 0.
    #[serde(with = "humantime_serde", default = "default_user_expire")]
    #[schemars(with = "HumanDuration", transform = at_most(DAY))]
    pub user_expire: Duration,
}

fn default_user_expire() -> Duration {
    Duration::from_secs(15 * 60)
}

impl ClusterSection {
    /// Checks the section.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.user_expire.is_zero() {
            return Err(SectionError::key(
                "user_expire",
                "user_expire must be above 0",
            ));
        }
        SectionError::within("user_expire", self.user_expire, DAY)
    }

    /// Whether this cluster picks a backend by each transaction's
    /// recipient.
    pub fn by_recipient(&self) -> bool {
        self.balance == Some(Balance::Recipient)
    }
}

/// The longest key kept: an address is at most 254 octets in practice
/// (RFC 5321's path limit is 256 with the brackets).
const MAX_KEY: usize = 256;

impl RecipientKey {
    /// The user that `address` (a RCPT's, without brackets) belongs to:
    /// bounded, lowercased (ASCII), `+extension` dropped for `address`,
    /// the domain alone for `domain`. An empty or odd address is a key
    /// like any other.
    pub fn of(self, address: &str) -> String {
        let (local, domain) = match address.rsplit_once('@') {
            Some((local, domain)) => (local, Some(domain)),
            None => (address, None),
        };
        let key = match (self, domain) {
            (RecipientKey::Domain, Some(domain)) => domain.to_string(),
            (RecipientKey::Domain, None) => String::new(),
            (RecipientKey::Address, _) => {
                let unquoted = !local.starts_with('"');
                let base = match local.split_once('+') {
                    Some((base, _)) if unquoted && !base.is_empty() => base,
                    _ => local,
                };
                match domain {
                    Some(domain) => format!("{base}@{domain}"),
                    None => base.to_string(),
                }
            }
        };
        let mut key = key.to_ascii_lowercase();
        if key.len() > MAX_KEY {
            let mut end = MAX_KEY;
            while !key.is_char_boundary(end) {
                end -= 1;
            }
            key.truncate(end);
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fold_case_and_extensions_and_stay_bounded() {
        let address = RecipientKey::Address;
        assert_eq!(address.of("Alice+Lists@Example.ORG"), "alice@example.org");
        assert_eq!(address.of("alice@example.org"), "alice@example.org");
        assert_eq!(address.of("+x@example.org"), "+x@example.org");
        assert_eq!(address.of("\"a+b\"@example.org"), "\"a+b\"@example.org");
        assert_eq!(address.of(""), "");
        assert_eq!(address.of("postmaster"), "postmaster");
        assert_eq!(
            RecipientKey::Domain.of("Bob@Mail.Example.ORG"),
            "mail.example.org"
        );
        let long = format!("{}@example.org", "ü".repeat(400));
        assert!(address.of(&long).len() <= MAX_KEY);
        assert_eq!(
            address.of("Ünïcode@Example.org"),
            "Ünïcode@example.org".replace("Example", "example")
        );
    }
}
