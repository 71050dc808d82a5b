//! The permanent access list, as postscreen's `postscreen_access_list` with a
//! `cidr:` table.
//!
//! The file is a Postfix cidr table (cidr_table(5)): each line is a network
//! and a result, `permit`, `reject` or `dunno`; the first matching line wins
//! and no match is `dunno`. A network is an address (one host) or
//! `address/prefix` with no host bits set; IPv6 may be written in brackets,
//! and a leading `!` matches every address outside the network. Lines whose
//! first character is `#` are comments, and a line that starts with white
//! space continues the one before.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use doorman_gate_api::{Action, Client, Gate, Rejection, Verdict};
use ipnet::IpNet;

pub mod section;

pub use section::AccessSection;

/// The enhanced status code of a denylisted client's reply (postscreen's).
pub const DENYLIST_STATUS: &str = "5.3.2";

/// The text of a denylisted client's reply (postscreen's).
pub const DENYLIST_TEXT: &str = "Service currently unavailable";

/// Why an access table is not valid.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A line is not `network result`.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// What an entry says about the addresses it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Allowlisted: skip every test.
    Permit,
    /// Denylisted: apply the denylist action.
    Reject,
    /// Stop looking and run the tests as usual.
    Dunno,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    network: IpNet,
    negated: bool,
    access: Access,
    line: usize,
}

/// A parsed cidr table and the action for its `reject` entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessList {
    entries: Vec<Entry>,
    action: Action,
}

/// The first entry that matched an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// What the entry says.
    pub access: Access,
    /// Its 1-based line in the table; 0 for the section's `permit`
    /// networks.
    pub line: usize,
}

impl AccessList {
    /// Parses table text; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path, action: Action) -> Result<Self, AccessError> {
        let mut logical: Vec<(usize, String)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            match logical.last_mut() {
                Some((_, previous)) if raw.starts_with(char::is_whitespace) => {
                    previous.push(' ');
                    previous.push_str(trimmed);
                }
                _ => logical.push((index + 1, trimmed.to_string())),
            }
        }
        let entries = logical
            .into_iter()
            .map(|(line, text)| {
                parse_entry(&text, line).map_err(|message| AccessError::Syntax {
                    path: path.to_path_buf(),
                    line,
                    message,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { entries, action })
    }

    /// The list with `networks` permitted before every entry of the table
    /// (postscreen's `permit_mynetworks` at the head of its list); they
    /// match as line 0.
    pub fn permitting_first(mut self, networks: &[IpNet]) -> Self {
        let permits = networks.iter().map(|network| Entry {
            network: *network,
            negated: false,
            access: Access::Permit,
            line: 0,
        });
        self.entries.splice(0..0, permits);
        self
    }

    /// The first entry matching `ip` (IPv4-mapped IPv6 counts as IPv4).
    pub fn lookup(&self, ip: IpAddr) -> Option<Match> {
        let ip = ip.to_canonical();
        self.entries
            .iter()
            .find(|entry| {
                let family_matches = matches!(
                    (entry.network, ip),
                    (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
                );
                family_matches && entry.network.contains(&ip) != entry.negated
            })
            .map(|entry| Match {
                access: entry.access,
                line: entry.line,
            })
    }

    /// How many entries the table has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl AccessList {
    /// The verdict for `client`, first match wins.
    pub fn check(&self, client: &Client) -> Verdict {
        match self.lookup(client.ip()).map(|m| m.access) {
            Some(Access::Permit) => Verdict::Permit,
            Some(Access::Reject) => {
                Verdict::Reject(Rejection::new(self.action, DENYLIST_STATUS, DENYLIST_TEXT))
            }
            Some(Access::Dunno) | None => Verdict::Dunno,
        }
    }
}

/// The access list is a connect gate, with postscreen's log lines.
impl Gate for AccessList {
    fn has_command_hook(&self) -> bool {
        false
    }

    fn explain_connect(&self, client: &Client) -> Option<String> {
        Some(match self.lookup(client.ip()) {
            None => "access list: no match (dunno)".to_string(),
            Some(found) if found.line == 0 => "access list: `permit` key: permit".to_string(),
            Some(found) => format!(
                "access list: line {}: {}",
                found.line,
                match found.access {
                    Access::Permit => "permit",
                    Access::Reject => "reject",
                    Access::Dunno => "dunno",
                }
            ),
        })
    }

    fn connect(&self, client: &Client) -> Verdict {
        let verdict = self.check(client);
        match verdict {
            Verdict::Permit => tracing::info!("ALLOWLISTED {}", client.endpoint()),
            Verdict::Reject(_) => tracing::info!("DENYLISTED {}", client.endpoint()),
            _ => {}
        }
        verdict
    }
}

fn parse_entry(text: &str, line: usize) -> Result<Entry, String> {
    let mut words = text.split_whitespace();
    let pattern = words.next().ok_or("empty entry")?;
    let result = words
        .next()
        .ok_or_else(|| format!("{pattern:?} has no result (permit, reject or dunno)"))?;
    let access = match result.to_ascii_lowercase().as_str() {
        "permit" => Access::Permit,
        "reject" => Access::Reject,
        "dunno" => Access::Dunno,
        other => {
            return Err(format!(
                "unknown result {other:?}: use permit, reject or dunno"
            ))
        }
    };
    let (negated, pattern) = match pattern.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    let unbracketed: String = pattern.chars().filter(|c| *c != '[' && *c != ']').collect();
    let network = match unbracketed.parse::<IpNet>() {
        Ok(network) => {
            if network.trunc() != network {
                return Err(format!(
                    "{pattern:?} has host bits set; did you mean {}?",
                    network.trunc()
                ));
            }
            network
        }
        Err(_) => unbracketed
            .parse::<IpAddr>()
            .map(|ip| IpNet::from(ip.to_canonical()))
            .map_err(|_| format!("{pattern:?} is not an address or network"))?,
    };
    Ok(Entry {
        network,
        negated,
        access,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> AccessList {
        AccessList::parse(text, Path::new("access"), Action::Enforce).expect("valid")
    }

    fn access(list: &AccessList, ip: &str) -> Option<Access> {
        list.lookup(ip.parse().unwrap()).map(|m| m.access)
    }

    #[test]
    fn postfix_readme_example_first_match_wins() {
        let list = table(
            "# Rules are evaluated in the order as specified.\n# Denylist 192.168.* except 192.168.0.1.\n192.168.0.1         dunno\n192.168.0.0/16      reject\n",
        );
        assert_eq!(access(&list, "192.168.0.1"), Some(Access::Dunno));
        assert_eq!(access(&list, "192.168.7.7"), Some(Access::Reject));
        assert_eq!(access(&list, "10.0.0.1"), None);
        assert_eq!(access(&list, "::ffff:192.168.7.7"), Some(Access::Reject));
    }

    #[test]
    fn ipv6_brackets_negation_and_continuation() {
        let list = table("[2001:db8::]/32 permit\n!127.0.0.0/8\n  reject\n::1 REJECT\n");
        assert_eq!(access(&list, "2001:db8::5"), Some(Access::Permit));
        assert_eq!(access(&list, "203.0.113.1"), Some(Access::Reject));
        assert_eq!(access(&list, "127.0.0.1"), None);
        assert_eq!(access(&list, "::1"), Some(Access::Reject));
        assert_eq!(list.lookup("203.0.113.1".parse().unwrap()).unwrap().line, 2);
    }

    #[test]
    fn gate_verdicts() {
        let list = table("192.0.2.1 permit\n192.0.2.2 reject\n");
        let client = |ip: &str| Client {
            address: format!("{ip}:1").parse().unwrap(),
            destination: "127.0.0.1:25".parse().unwrap(),
            tlvs: vec![],
        };
        assert_eq!(list.check(&client("192.0.2.1")), Verdict::Permit);
        assert_eq!(
            list.check(&client("192.0.2.2")),
            Verdict::Reject(Rejection::new(
                Action::Enforce,
                "5.3.2",
                "Service currently unavailable"
            ))
        );
        assert_eq!(list.check(&client("192.0.2.3")), Verdict::Dunno);
    }

    #[test]
    fn permitted_networks_come_before_the_table() {
        let table = "127.0.0.5 reject\n192.0.2.0/24 reject\n";
        let list = AccessList::parse(table, Path::new("t"), Action::Drop)
            .unwrap()
            .permitting_first(&["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        let permit = list.lookup("127.0.0.5".parse().unwrap()).unwrap();
        assert_eq!((permit.access, permit.line), (Access::Permit, 0));
        assert_eq!(
            list.lookup("::1".parse().unwrap()).unwrap().access,
            Access::Permit
        );
        let reject = list.lookup("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!((reject.access, reject.line), (Access::Reject, 2));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line, needle) in [
            (
                "192.0.2.1 permit\n192.0.2.0/24 allow\n",
                2,
                "unknown result",
            ),
            ("\n192.0.2.1/24 reject\n", 2, "host bits"),
            ("banana reject\n", 1, "not an address"),
            ("192.0.2.1\n", 1, "no result"),
        ] {
            match AccessList::parse(text, Path::new("access"), Action::Ignore) {
                Err(AccessError::Syntax {
                    line: got, message, ..
                }) => {
                    assert_eq!(got, line, "{text:?}");
                    assert!(message.contains(needle), "{message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
