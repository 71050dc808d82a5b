//! Weighted DNSBL/DNSWL scoring, as postscreen's `postscreen_dnsbl_*`.
//!
//! - [`site`]: the `domain[=filter][*weight]` syntax and reply filters.
//! - [`query`]: query names (reversed octets, reversed nibbles for IPv6).
//! - [`score`]: answers, error codes, the sum of weights and the TTL.
//! - [`lookup`]: the resolver, the answer cache and concurrent queries.
//! - [`Policy`]: the threshold and allowlist threshold that turn a score
//!   into an [`Outcome`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod lookup;
pub mod query;
pub mod score;
pub mod site;

use std::collections::HashMap;
use std::net::IpAddr;

pub use lookup::{AnswerStore, Dnsbl, Observer, Pending, ResolverError, Settings};
pub use score::{Answer, Score};
pub use site::{Site, SiteError};

/// What a score means for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `rank >= threshold`: the client failed the DNSBL test.
    Listed {
        /// The score.
        rank: i32,
        /// The reply text after the code (postscreen's).
        reply_text: String,
    },
    /// `rank <= allowlist_threshold` (a negative value): the client skips the
    /// remaining tests.
    Allowlisted {
        /// The score.
        rank: i32,
    },
    /// Neither.
    Clean {
        /// The score.
        rank: i32,
    },
}

/// Thresholds and the names shown to clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Inclusive lower bound of a blocking score.
    pub threshold: i32,
    /// Inclusive upper bound of an allowlisting score; 0 disables.
    pub allowlist_threshold: i32,
    /// Site domain -> name shown in replies (hides keyed zone names).
    pub reply_map: HashMap<String, String>,
}

impl Policy {
    /// What `score` means for `ip`.
    pub fn outcome(&self, score: &Score, ip: IpAddr) -> Outcome {
        if score.rank >= self.threshold {
            let site = score.top_site.clone().unwrap_or_default();
            let shown = self.reply_map.get(&site).cloned().unwrap_or(site);
            Outcome::Listed {
                rank: score.rank,
                reply_text: format!(
                    "5.7.1 Service unavailable; client [{}] blocked using {shown}",
                    ip.to_canonical()
                ),
            }
        } else if self.allowlist_threshold < 0 && score.rank <= self.allowlist_threshold {
            Outcome::Allowlisted { rank: score.rank }
        } else {
            Outcome::Clean { rank: score.rank }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn score(rank: i32, top: Option<&str>) -> Score {
        Score {
            rank,
            top_site: top.map(str::to_string),
            ttl: Duration::from_secs(60),
            complete: true,
        }
    }

    #[test]
    fn thresholds_and_reply_map() {
        let policy = Policy {
            threshold: 2,
            allowlist_threshold: -1,
            reply_map: HashMap::from([("secret.zen.dq.test".into(), "zen.spamhaus.org".into())]),
        };
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            policy.outcome(&score(2, Some("secret.zen.dq.test")), ip),
            Outcome::Listed {
                rank: 2,
                reply_text:
                    "5.7.1 Service unavailable; client [192.0.2.7] blocked using zen.spamhaus.org"
                        .into()
            }
        );
        assert_eq!(
            policy.outcome(&score(1, Some("x")), ip),
            Outcome::Clean { rank: 1 }
        );
        assert_eq!(
            policy.outcome(&score(-1, None), ip),
            Outcome::Allowlisted { rank: -1 }
        );
        let disabled = Policy {
            threshold: 1,
            ..Policy::default()
        };
        assert_eq!(
            disabled.outcome(&score(-5, None), ip),
            Outcome::Clean { rank: -5 }
        );
    }
}
