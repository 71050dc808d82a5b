//! The DNS queries every DNS gate may have in flight at once: in all, and
//! for the clients of one network (an IPv4 /24, an IPv6 /64).
//!
//! The core makes one [`DnsBudget`] per config and lends it to the gates
//! ([`Resources::dns`](crate::Resources)). A gate asks it for a
//! [`DnsTicket`] before each query it sends and holds the ticket until the
//! query is answered, fails or is dropped; a query it cannot have is not
//! sent, and counts as a failed lookup (no opinion). [`Skipped`] says when
//! to log that, at most once per [`REPORT_INTERVAL`] for every gate
//! together, with the number skipped since.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often skipped queries may be logged.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// The caps on DNS queries in flight; 0 is no cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsLimits {
    /// Queries in flight in all.
    pub total: usize,
    /// Queries in flight for the clients of one network.
    pub per_network: usize,
}

/// The queries in flight, counted against [`DnsLimits`].
#[derive(Debug)]
pub struct DnsBudget {
    limits: DnsLimits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_network: HashMap<IpAddr, usize>,
    /// Skipped since the last report, and when that was.
    skipped: u64,
    reported: Option<Instant>,
}

/// One query's place in the budget, given back when dropped.
#[derive(Debug)]
pub struct DnsTicket {
    budget: Arc<DnsBudget>,
    network: IpAddr,
}

/// Which cap a skipped query met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// [`DnsLimits::total`].
    Total,
    /// [`DnsLimits::per_network`].
    Network,
}

/// A query that may not be sent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The cap it met.
    pub cap: Cap,
    /// The queries skipped since the last report, this one included, when
    /// it is time to log them again; `None` otherwise.
    pub report: Option<u64>,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cap {
            Cap::Total => f.write_str("skipped: too many DNS queries in flight"),
            Cap::Network => {
                f.write_str("skipped: too many DNS queries in flight for the client's network")
            }
        }
    }
}

/// The network `ip` is counted in: its /24, or its /64.
fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    }
}

impl DnsBudget {
    /// A budget with no query in flight.
    pub fn new(limits: DnsLimits) -> Self {
        Self {
            limits,
            counts: Mutex::default(),
        }
    }

    /// A budget without caps (for tools and tests).
    pub fn unlimited() -> Arc<Self> {
        Arc::new(Self::new(DnsLimits {
            total: 0,
            per_network: 0,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one query about `client`, or why there is none.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<DnsTicket, Skipped> {
        let network = network(client);
        let mut counts = self.lock();
        let of_network = counts.per_network.get(&network).copied().unwrap_or(0);
        let cap = if self.limits.total > 0 && counts.total >= self.limits.total {
            Some(Cap::Total)
        } else if self.limits.per_network > 0 && of_network >= self.limits.per_network {
            Some(Cap::Network)
        } else {
            None
        };
        if let Some(cap) = cap {
            counts.skipped += 1;
            let now = Instant::now();
            let due = counts
                .reported
                .is_none_or(|at| now.duration_since(at) >= REPORT_INTERVAL);
            let report = due.then(|| {
                counts.reported = Some(now);
                std::mem::take(&mut counts.skipped)
            });
            return Err(Skipped { cap, report });
        }
        counts.total += 1;
        counts.per_network.insert(network, of_network + 1);
        Ok(DnsTicket {
            budget: Arc::clone(self),
            network,
        })
    }

    /// The queries in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().total
    }
}

impl Drop for DnsTicket {
    fn drop(&mut self) {
        let mut counts = self.budget.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_network.get_mut(&self.network) {
            *count -= 1;
            if *count == 0 {
                counts.per_network.remove(&self.network);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn caps_in_all_and_per_network_and_tickets_give_back() {
        let budget = Arc::new(DnsBudget::new(DnsLimits {
            total: 3,
            per_network: 2,
        }));
        let a = budget.admit(ip("192.0.2.1")).unwrap();
        let _b = budget.admit(ip("192.0.2.200")).unwrap();
        let refused = budget.admit(ip("192.0.2.3")).unwrap_err();
        assert_eq!(refused.cap, Cap::Network);
        assert_eq!(refused.report, Some(1), "the first skip is logged");
        let _c = budget.admit(ip("198.51.100.1")).unwrap();
        let refused = budget.admit(ip("203.0.113.1")).unwrap_err();
        assert_eq!(refused.cap, Cap::Total);
        assert_eq!(refused.report, None, "logged once a minute only");
        drop(a);
        assert_eq!(budget.in_flight(), 2);
        let _d = budget.admit(ip("192.0.2.4")).unwrap();
        // One IPv6 /64 is one network.
        let v6 = Arc::new(DnsBudget::new(DnsLimits {
            total: 0,
            per_network: 1,
        }));
        let _e = v6.admit(ip("2001:db8::1")).unwrap();
        assert!(v6.admit(ip("2001:db8::ffff:1")).is_err());
        assert!(v6.admit(ip("2001:db8:0:1::1")).is_ok());
    }
}
