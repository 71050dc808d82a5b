//! Scoring: what the zones answered, summed as postscreen sums it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::site::Site;

/// What one zone said about one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A records, error codes already removed.
    Listed {
        /// The A values.
        addresses: Vec<Ipv4Addr>,
        /// Their smallest TTL.
        ttl: Duration,
    },
    /// NXDOMAIN or no A record.
    NotListed {
        /// The negative-caching TTL (from the SOA), if the server gave one.
        ttl: Duration,
    },
    /// The lookup failed, timed out, or only returned error codes.
    Failed {
        /// Why.
        error: String,
    },
}

/// Spamhaus answers queries from public or unregistered resolvers with
/// `127.255.255.x`: an error code, never a listing.
pub fn is_error_code(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    (a, b, c) == (127, 255, 255)
}

impl Answer {
    /// Whether the lookup failed (no opinion).
    pub fn is_failed(&self) -> bool {
        matches!(self, Answer::Failed { .. })
    }

    /// Classifies A records: error codes are dropped, and an answer with
    /// nothing but error codes is a failure.
    pub fn from_addresses(addresses: Vec<Ipv4Addr>, ttl: Duration) -> Self {
        let (errors, listings): (Vec<_>, Vec<_>) =
            addresses.into_iter().partition(|a| is_error_code(*a));
        match (listings.is_empty(), errors.first()) {
            (false, _) => Answer::Listed {
                addresses: listings,
                ttl,
            },
            (true, Some(code)) => Answer::Failed {
                error: format!("error code {code} (not a listing)"),
            },
            (true, None) => Answer::NotListed { ttl },
        }
    }

    /// The answer as one line of text, for a shared store:
    /// `L <ttl> <a>,<a>`, `N <ttl>` or `F <error>`.
    pub fn encode(&self) -> String {
        match self {
            Answer::Listed { addresses, ttl } => format!(
                "L {} {}",
                ttl.as_secs(),
                addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Answer::NotListed { ttl } => format!("N {}", ttl.as_secs()),
            Answer::Failed { error } => format!("F {error}"),
        }
    }

    /// Reads what [`Answer::encode`] wrote; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_once(' ')?;
        match kind {
            "L" => {
                let (ttl, addresses) = rest.split_once(' ')?;
                Some(Answer::Listed {
                    addresses: addresses
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .ok()?,
                    ttl: Duration::from_secs(ttl.parse().ok()?),
                })
            }
            "N" => Some(Answer::NotListed {
                ttl: Duration::from_secs(rest.parse().ok()?),
            }),
            "F" => Some(Answer::Failed {
                error: rest.to_string(),
            }),
            _ => None,
        }
    }

    fn ttl(&self) -> Option<Duration> {
        match self {
            Answer::Listed { ttl, .. } | Answer::NotListed { ttl } => Some(*ttl),
            Answer::Failed { .. } => None,
        }
    }
}

/// The combined result for one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Score {
    /// The sum of the weights of the matching sites.
    pub rank: i32,
    /// The matching site with the largest positive weight (the first on
    /// ties): the one a reply names.
    pub top_site: Option<String>,
    /// How long this result may be remembered: the smallest TTL of the
    /// answers, clamped to `[min_ttl, max_ttl]`; `min_ttl` when no zone
    /// answered.
    pub ttl: Duration,
    /// Whether every zone answered in time (a failed lookup is no answer).
    pub complete: bool,
}

/// Scores the answers in hand. A zone without an answer counts as not
/// listed: slow lists fail open.
pub fn score(
    sites: &[Site],
    answers: &HashMap<String, Answer>,
    zones: usize,
    min_ttl: Duration,
    max_ttl: Duration,
) -> Score {
    let mut rank = 0;
    let mut top: Option<&Site> = None;
    for site in sites {
        if let Some(Answer::Listed { addresses, .. }) = answers.get(&site.domain) {
            if site.matches(addresses) {
                rank += site.weight;
                if site.weight > 0 && top.is_none_or(|t| site.weight > t.weight) {
                    top = Some(site);
                }
            }
        }
    }
    let ttl = answers
        .values()
        .filter_map(Answer::ttl)
        .min()
        .unwrap_or(min_ttl)
        .clamp(min_ttl, max_ttl.max(min_ttl));
    Score {
        rank,
        top_site: top.map(|s| s.domain.clone()),
        ttl,
        // A failed lookup is no answer: the score may still refuse, but is
        // never remembered and never allowlists.
        complete: answers.len() >= zones
            && !answers
                .values()
                .any(|answer| matches!(answer, Answer::Failed { .. })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(values: &[&str], ttl: u64) -> Answer {
        Answer::from_addresses(
            values.iter().map(|v| v.parse().unwrap()).collect(),
            Duration::from_secs(ttl),
        )
    }

    #[test]
    fn weights_filters_and_top_site() {
        let sites = Site::parse_list(
            "zen.test=127.0.0.[2..11]*3 zen.test=127.0.0.4*1 bl.test*2 other.test*5 wl.test=127.0.[0..255].[1..3]*-2",
        )
        .unwrap();
        let answers = HashMap::from([
            (
                "zen.test".to_string(),
                listed(&["127.0.0.4", "127.0.0.10"], 300),
            ),
            ("bl.test".to_string(), listed(&["127.0.0.2"], 30)),
            (
                "other.test".to_string(),
                Answer::NotListed {
                    ttl: Duration::from_secs(900),
                },
            ),
        ]);
        let s = score(
            &sites,
            &answers,
            4,
            Duration::from_secs(60),
            Duration::from_secs(3600),
        );
        // zen counts 3 (once, despite two A records) + 1, bl 2.
        assert_eq!(s.rank, 6);
        assert_eq!(s.top_site.as_deref(), Some("zen.test"));
        assert_eq!(s.ttl, Duration::from_secs(60), "30s clamped up to min_ttl");
        assert!(!s.complete);

        let allow = HashMap::from([("wl.test".to_string(), listed(&["127.0.10.3"], 7200))]);
        let s = score(
            &sites,
            &allow,
            4,
            Duration::from_secs(60),
            Duration::from_secs(3600),
        );
        assert_eq!((s.rank, s.top_site), (-2, None));
        assert_eq!(s.ttl, Duration::from_secs(3600), "clamped down to max_ttl");
    }

    #[test]
    fn encode_decode_round_trip() {
        for answer in [
            listed(&["127.0.0.2", "127.0.0.4"], 300),
            Answer::NotListed {
                ttl: Duration::from_secs(120),
            },
            Answer::Failed {
                error: "timeout after 2s".into(),
            },
        ] {
            assert_eq!(Answer::decode(&answer.encode()), Some(answer));
        }
        assert_eq!(Answer::decode("L x 1.2.3.4"), None);
        assert_eq!(Answer::decode("garbage"), None);
    }

    #[test]
    fn spamhaus_error_codes_are_not_listings() {
        assert!(matches!(
            listed(&["127.255.255.254"], 60),
            Answer::Failed { .. }
        ));
        assert_eq!(
            listed(&["127.255.255.252", "127.0.0.2"], 60),
            listed(&["127.0.0.2"], 60)
        );
        let sites = Site::parse_list("zen.test").unwrap();
        let answers = HashMap::from([("zen.test".to_string(), listed(&["127.255.255.254"], 60))]);
        let s = score(
            &sites,
            &answers,
            1,
            Duration::from_secs(60),
            Duration::from_secs(3600),
        );
        assert_eq!(s.rank, 0);
    }
}
