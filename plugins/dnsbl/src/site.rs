//! `postscreen_dnsbl_sites` syntax: `domain[=filter][*weight]`.
//!
//! A filter is `d.d.d.d`, where each `d` is a number or a bracketed set of
//! `;`-separated numbers and `n..m` ranges (`127.0.0.[2..11]`,
//! `127.0.[0..255].[1;3]`). A set covers one octet and a field is either a
//! number or a set, never both. The weight is an integer (default 1);
//! negative weights allowlist.

use std::fmt;
use std::net::Ipv4Addr;

/// Why a site entry is not valid (postscreen's messages).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// The domain part is empty or not a DNS name.
    #[error("bad DNSBL domain name {domain:?} in {entry:?}")]
    Domain {
        /// The domain as written.
        domain: String,
        /// The whole entry.
        entry: String,
    },
    /// The filter does not follow the grammar.
    #[error("bad DNSBL filter syntax: {0:?}")]
    Filter(String),
    /// The weight is not an integer.
    #[error("bad DNSBL weight factor: {0:?}")]
    Weight(String),
}

/// One octet of a filter: the values it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Octet {
    /// Exactly this value.
    Value(u8),
    /// Any of these inclusive ranges.
    Set(Vec<(u8, u8)>),
}

impl Octet {
    fn matches(&self, value: u8) -> bool {
        match self {
            Octet::Value(v) => *v == value,
            Octet::Set(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&value)),
        }
    }
}

/// A reply filter: which A values count as a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    octets: [Octet; 4],
    text: String,
}

impl Filter {
    /// Parses `d.d.d.d` with optional `[...]` sets.
    pub fn parse(text: &str) -> Result<Self, SiteError> {
        let bad = || SiteError::Filter(text.to_string());
        let fields: Vec<&str> = strip_outer_brackets(text)
            .ok_or_else(bad)?
            .split('.')
            .collect();
        // A range `n..m` inside brackets contains dots: rejoin by brackets.
        let mut octets = Vec::with_capacity(4);
        let mut index = 0;
        while index < fields.len() {
            let mut field = fields[index].to_string();
            if field.starts_with('[') {
                while !field.ends_with(']') {
                    index += 1;
                    let next = fields.get(index).ok_or_else(bad)?;
                    field.push('.');
                    field.push_str(next);
                }
            }
            octets.push(parse_octet(&field).ok_or_else(bad)?);
            index += 1;
        }
        let octets: [Octet; 4] = octets.try_into().map_err(|_| bad())?;
        Ok(Self {
            octets,
            text: text.to_string(),
        })
    }

    /// Whether `address` passes the filter.
    pub fn matches(&self, address: Ipv4Addr) -> bool {
        self.octets
            .iter()
            .zip(address.octets())
            .all(|(octet, value)| octet.matches(value))
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Postfix's `ip_match` takes one pair of brackets around a whole pattern
/// off (`[[1;2].3.4.5]` is `[1;2].3.4.5`): when the pattern starts with
/// `[` and the bracket that closes it is the last character. `None` when
/// that first bracket is never closed.
fn strip_outer_brackets(text: &str) -> Option<&str> {
    if !text.starts_with('[') {
        return Some(text);
    }
    let mut level = 0usize;
    let close = text.char_indices().find_map(|(index, c)| {
        match c {
            '[' => level += 1,
            ']' => level = level.saturating_sub(1),
            _ => return None,
        }
        (level == 0).then_some(index)
    })?;
    Some(if close + 1 == text.len() {
        &text[1..close]
    } else {
        text
    })
}

fn parse_octet(field: &str) -> Option<Octet> {
    if let Some(inner) = field.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
        let mut ranges = Vec::new();
        for member in inner.split(';') {
            let range = match member.split_once("..") {
                Some((lo, hi)) => (number(lo)?, number(hi)?),
                None => {
                    let v = number(member)?;
                    (v, v)
                }
            };
            if range.0 > range.1 {
                return None;
            }
            ranges.push(range);
        }
        return Some(Octet::Set(ranges));
    }
    number(field).map(Octet::Value)
}

fn number(text: &str) -> Option<u8> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One `domain[=filter][*weight]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The DNS zone queried.
    pub domain: String,
    /// Which A values count; `None` means any (but error codes).
    pub filter: Option<Filter>,
    /// What a match adds to the score.
    pub weight: i32,
}

impl Site {
    /// Parses one entry.
    pub fn parse(entry: &str) -> Result<Self, SiteError> {
        let (rest, weight) = match entry.rsplit_once('*') {
            Some((rest, weight)) => (
                rest,
                weight
                    .parse::<i32>()
                    .map_err(|_| SiteError::Weight(weight.to_string()))?,
            ),
            None => (entry, 1),
        };
        let (domain, filter) = match rest.split_once('=') {
            Some((domain, filter)) => (domain, Some(Filter::parse(filter)?)),
            None => (rest, None),
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(SiteError::Domain {
                domain: domain.to_string(),
                entry: entry.to_string(),
            });
        }
        Ok(Self {
            domain,
            filter,
            weight,
        })
    }

    /// Parses a site list as postscreen does: entries separated by commas or
    /// white space.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, SiteError> {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(Self::parse)
            .collect()
    }

    /// Whether one of `answers` counts as a listing for this site.
    pub fn matches(&self, answers: &[Ipv4Addr]) -> bool {
        answers.iter().any(|address| match &self.filter {
            Some(filter) => filter.matches(*address),
            None => true,
        })
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.domain)?;
        if let Some(filter) = &self.filter {
            write!(f, "={filter}")?;
        }
        write!(f, "*{}", self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn docker_mailserver_default_list_parses() {
        let sites = Site::parse_list(
            "zen.spamhaus.org=127.0.0.[2..11]*3 bl.mailspike.net=127.0.0.[2;14;13;12;11;10]\n    b.barracudacentral.org*2 bl.spameatingmonkey.net=127.0.0.2 dnsbl.sorbs.net psbl.surriel.com\n    list.dnswl.org=127.0.[0..255].0*-2 list.dnswl.org=127.0.[0..255].1*-3 list.dnswl.org=127.0.[0..255].[2..3]*-4",
        )
        .expect("valid");
        assert_eq!(sites.len(), 9);
        assert_eq!(sites[0].weight, 3);
        assert!(sites[0].matches(&[ip("127.0.0.4")]));
        assert!(!sites[0].matches(&[ip("127.0.0.12")]));
        assert!(sites[1].matches(&[ip("127.0.0.13")]));
        assert!(!sites[1].matches(&[ip("127.0.0.3")]));
        assert_eq!(sites[2].weight, 2);
        assert!(sites[2].filter.is_none());
        assert_eq!(sites[8].weight, -4);
        assert!(sites[8].matches(&[ip("127.0.44.3")]));
        assert!(!sites[8].matches(&[ip("127.0.44.1")]));
        assert!(sites[7].matches(&[ip("127.0.9.1")]));
    }

    #[test]
    fn one_pair_of_brackets_around_the_whole_filter_is_dropped() {
        // As Postfix's ip_match: `[[1;2].3.4.5]` is `[1;2].3.4.5`.
        let site = Site::parse("bl.test=[[1;2].3.4.5]*2").expect("valid");
        assert!(site.matches(&[ip("1.3.4.5")]));
        assert!(site.matches(&[ip("2.3.4.5")]));
        assert!(!site.matches(&[ip("3.3.4.5")]));
        assert_eq!(site.weight, 2);
        let plain = Site::parse("bl.test=[127.0.0.2]").expect("valid");
        assert!(plain.matches(&[ip("127.0.0.2")]));
        // A set at each end is no outer pair: nothing is taken off.
        let ends = Site::parse("bl.test=[1;2].3.4.[5;6]").expect("valid");
        assert!(ends.matches(&[ip("2.3.4.6")]));
        for bad in ["bl.test=[1;2.3.4.5", "bl.test=[]", "bl.test=[[127.0.0.2]]"] {
            assert!(
                matches!(Site::parse(bad), Err(SiteError::Filter(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn commas_separate_sites() {
        let sites = Site::parse_list("example.com*2, example.net, example.org").unwrap();
        assert_eq!(
            sites.iter().map(|s| s.weight).collect::<Vec<_>>(),
            vec![2, 1, 1]
        );
    }

    #[test]
    fn bad_entries() {
        assert!(matches!(
            Site::parse("bl.test=127.0.0.[2,4]"),
            Err(SiteError::Filter(_))
        ));
        assert!(matches!(
            Site::parse("bl.test=1.2.3.3[6..9]"),
            Err(SiteError::Filter(_))
        ));
        assert!(matches!(
            Site::parse("bl.test=127.0.0"),
            Err(SiteError::Filter(_))
        ));
        assert!(matches!(
            Site::parse("bl.test=127.0.0.256"),
            Err(SiteError::Filter(_))
        ));
        assert!(matches!(
            Site::parse("bl.test=127.0.0.[9..2]"),
            Err(SiteError::Filter(_))
        ));
        assert!(matches!(
            Site::parse("bl.test*2x"),
            Err(SiteError::Weight(_))
        ));
        assert!(matches!(Site::parse("*2"), Err(SiteError::Domain { .. })));
        assert!(matches!(
            Site::parse("bad..name"),
            Err(SiteError::Domain { .. })
        ));
        assert_eq!(
            Site::parse("bl.test*x").unwrap_err().to_string(),
            "bad DNSBL weight factor: \"x\""
        );
    }
}
