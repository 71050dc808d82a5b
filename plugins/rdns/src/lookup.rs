//! The lookups, sans cache: the client's PTR names, then the forward
//! addresses of at most [`MAX_NAMES`] of them, all at once, and what they
//! add up to. Each query first takes a place in the DNS budget (`admit`);
//! one that gets none is not sent, and fails.

use std::net::IpAddr;
use std::time::Duration;

use doorman_dnsbl::resolver::Resolver;
use doorman_gate_api::DnsTicket;
use futures_util::future::join_all;
use hickory_resolver::proto::rr::RData;

use crate::generic::is_generic;

/// The most PTR names looked at: an answer with hundreds of names costs no
/// more than this many forward lookups.
pub const MAX_NAMES: usize = 8;

/// What reverse DNS says about one address. The findings are exclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No PTR name (NXDOMAIN or an empty answer).
    NoPtr,
    /// PTR names, none of which resolves back to the address.
    NotConfirmed {
        /// The first name.
        name: String,
    },
    /// A name that resolves back, and looks generic.
    Generic {
        /// The confirmed name.
        name: String,
    },
    /// A name that resolves back and looks like a mail server's.
    Confirmed {
        /// The confirmed name.
        name: String,
    },
}

/// An answer and how long it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The finding.
    pub found: Found,
    /// The PTR names looked at (at most [`MAX_NAMES`]).
    pub names: Vec<String>,
    /// The smallest TTL of the records it rests on (unclamped).
    pub ttl: Duration,
}

/// Why there is no answer: a timeout, SERVFAIL, a dead server. No opinion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed(pub String);

/// A place in the DNS budget for one query, or why there is none.
pub type Admit<'a> = &'a (dyn Fn() -> Result<DnsTicket, Failed> + Sync);

/// Looks `ip` up: PTR, then the forward addresses of at most
/// [`MAX_NAMES`] names, concurrently, each query admitted by `admit`.
pub async fn check(resolver: &Resolver, ip: IpAddr, admit: Admit<'_>) -> Result<Outcome, Failed> {
    let ip = ip.to_canonical();
    let ticket = admit()?;
    let reverse = resolver.reverse_lookup(ip).await;
    drop(ticket);
    let (names, ptr_ttl) = match reverse {
        Ok(lookup) => {
            let mut ttl = u32::MAX;
            let mut names = Vec::new();
            for record in lookup.answers() {
                if let RData::PTR(ptr) = &record.data {
                    ttl = ttl.min(record.ttl);
                    if names.len() < MAX_NAMES {
                        let name = ptr.0.to_ascii();
                        names.push(name.trim_end_matches('.').to_string());
                    }
                }
            }
            (names, ttl)
        }
        Err(error) if error.is_nx_domain() || error.is_no_records_found() => {
            let ttl = error
                .into_soa()
                .map_or(0, |soa| soa.ttl.min(soa.data.minimum));
            (Vec::new(), ttl)
        }
        Err(error) => return Err(Failed(format!("PTR lookup: {error}"))),
    };
    let seconds = |ttl: u32| Duration::from_secs(u64::from(ttl));
    if names.is_empty() {
        return Ok(Outcome {
            found: Found::NoPtr,
            names,
            ttl: seconds(ptr_ttl),
        });
    }
    let mut ttl = ptr_ttl;
    let mut failures = 0;
    let forwards = join_all(names.iter().map(|name| async move {
        let _ticket = admit()?;
        forward(resolver, name, ip).await
    }))
    .await;
    for (name, forwarded) in names.iter().zip(forwards) {
        match forwarded {
            Ok((true, forward_ttl)) => {
                let found = if is_generic(name, ip) {
                    Found::Generic { name: name.clone() }
                } else {
                    Found::Confirmed { name: name.clone() }
                };
                return Ok(Outcome {
                    found,
                    names: names.clone(),
                    ttl: seconds(ttl.min(forward_ttl)),
                });
            }
            Ok((false, forward_ttl)) => ttl = ttl.min(forward_ttl),
            Err(_) => failures += 1,
        }
    }
    if failures == names.len() {
        return Err(Failed("forward lookups failed".into()));
    }
    Ok(Outcome {
        found: Found::NotConfirmed {
            name: names[0].clone(),
        },
        names,
        ttl: seconds(ttl),
    })
}

/// Whether `name` resolves to `ip` (A for IPv4, AAAA for IPv6), and the
/// TTL of that answer.
async fn forward(resolver: &Resolver, name: &str, ip: IpAddr) -> Result<(bool, u32), Failed> {
    // The name is absolute: no search domain is ever tried.
    let absolute = format!("{name}.");
    let lookup = match ip {
        IpAddr::V4(_) => resolver.ipv4_lookup(absolute).await,
        IpAddr::V6(_) => resolver.ipv6_lookup(absolute).await,
    };
    match lookup {
        Ok(lookup) => {
            let mut ttl = u32::MAX;
            let mut matched = false;
            for record in lookup.answers() {
                let address = match &record.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                ttl = ttl.min(record.ttl);
                matched |= address == ip;
            }
            Ok((matched, ttl))
        }
        Err(error) if error.is_nx_domain() || error.is_no_records_found() => Ok((false, u32::MAX)),
        Err(error) => Err(Failed(error.to_string())),
    }
}
