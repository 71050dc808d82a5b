//! Connection limits with postscreen's replies, and stress mode.
//!
//! Counted per real client, so a flood through one HAProxy is seen per
//! attacker, and a client is a network: its address within `[limits]
//! ipv4_prefix` (32) or `ipv6_prefix` (64), so an IPv6 attacker is one /64
//! rather than 2^64 addresses. Limits: concurrent connections per client,
//! clients still being screened (greet wait and built-in engine) in all and
//! per network, clients in total, and new connections per network per
//! minute (anvil's rate limit, with smtpd's reply and log line; see
//! [`rate`]). The rate is counted for the client's network and for the
//! wider network it belongs to (`ipv4_aggregate_prefix` /16,
//! `ipv6_aggregate_prefix` /48), limited at [`AGGREGATE_FACTOR`] times the
//! rate, so a client cycling through the /64s of its /48 is limited too.
//! Health
//! checks are never counted, and allowlisted or cached clients never take a
//! screening place nor count towards the rate, so a flood cannot take the
//! node out of HAProxy. Each place is a guard that gives itself back when
//! dropped; the per-network tables hold only live connections, and the
//! rate table at most [`RATE_NETWORKS`] networks under their limit (and as
//! many at it), so memory stays bounded under a flood of distinct networks.
//!
//! Stress mode follows postscreen: when screening reaches 90% of its limit,
//! the greet wait drops to 2 s until screening falls back to 70%.
//!
//! It counts and decides; it writes no reply and touches no socket.

mod rate;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::config::{LimitsSection, AGGREGATE_FACTOR};
use crate::log;
use rate::RateTable;
pub use rate::{RATE_NETWORKS, RATE_UNIT};

/// The greet wait under stress (postscreen's `${stress?{2}...}`).
pub const STRESS_GREET_WAIT: Duration = Duration::from_secs(2);

/// Which limit refused a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections from this client.
    PerClient,
    /// Too many clients being screened.
    Screening,
    /// Too many clients of this network being screened.
    NetworkScreening(IpNet),
    /// Too many new connections from this network in the last minute: the
    /// count so far.
    Rate(usize),
    /// Too many new connections from the wider network in the last minute
    /// (over [`AGGREGATE_FACTOR`] times the rate): the network, the count.
    AggregateRate(IpNet, usize),
    /// Too many clients in total.
    Total,
}

/// The live counts.
#[derive(Debug)]
pub struct Limits {
    per_client: Mutex<HashMap<IpAddr, usize>>,
    per_network_screening: Mutex<HashMap<IpAddr, usize>>,
    rates: Mutex<RateTable>,
    screening: AtomicUsize,
    total: AtomicUsize,
    /// The highest `total` since [`Limits::take_peak`] last read it.
    peak: AtomicUsize,
    stressed: AtomicBool,
}

impl Default for Limits {
    fn default() -> Self {
        let rates = RateTable::new(NonZeroUsize::new(RATE_NETWORKS).unwrap_or(NonZeroUsize::MIN));
        Self {
            per_client: Mutex::default(),
            per_network_screening: Mutex::default(),
            rates: Mutex::new(rates),
            screening: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            stressed: AtomicBool::new(false),
        }
    }
}

/// A counted place; dropping it gives the place back.
#[must_use = "the place is given back when the guard is dropped"]
#[derive(Debug)]
pub struct Place {
    limits: Arc<Limits>,
    kind: Kind,
    screening_limit: usize,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A client's place: in the total and in its network's count.
    Client(IpAddr),
    /// A screening place, and its network's (when that is limited).
    Screening(Option<IpAddr>),
}

/// The network `ip` counts as for the limits.
pub fn network(ip: IpAddr, settings: &LimitsSection) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = match ip {
        IpAddr::V4(_) => settings.ipv4_prefix.min(32),
        IpAddr::V6(_) => settings.ipv6_prefix.min(128),
    };
    IpNet::new(ip, prefix).map_or(IpNet::from(ip), |net| net.trunc())
}

/// The wider network `ip`'s connection rate is counted in too; `None` when
/// the prefix is out of range.
fn aggregate(ip: IpAddr, settings: &LimitsSection) -> Option<IpNet> {
    let ip = ip.to_canonical();
    let prefix = match ip {
        IpAddr::V4(_) => settings.ipv4_aggregate_prefix,
        IpAddr::V6(_) => settings.ipv6_aggregate_prefix,
    };
    IpNet::new(ip, prefix).ok().map(|net| net.trunc())
}

/// Adds one to `key`'s count in `map`; the new count.
fn count_up(map: &Mutex<HashMap<IpAddr, usize>>, key: IpAddr) -> usize {
    match map.lock() {
        Ok(mut map) => {
            let count = map.entry(key).or_insert(0);
            *count += 1;
            *count
        }
        Err(_) => 0,
    }
}

/// Takes one off `key`'s count in `map`, forgetting it at 0.
fn count_down(map: &Mutex<HashMap<IpAddr, usize>>, key: IpAddr) {
    if let Ok(mut map) = map.lock() {
        if let Some(count) = map.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&key);
            }
        }
    }
}

impl Limits {
    /// Takes a client place (in the total and per client); `Err` names
    /// the limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, settings: &LimitsSection) -> Result<Place, Refusal> {
        let total = self.total.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(total, Ordering::Relaxed);
        if settings.total > 0 && total > settings.total {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::Total);
        }
        let client = network(ip, settings).addr();
        let count = count_up(&self.per_client, client);
        let place = Place {
            limits: Arc::clone(self),
            kind: Kind::Client(client),
            screening_limit: settings.screening,
        };
        if settings.client_connections > 0 && count > settings.client_connections {
            return Err(Refusal::PerClient);
        }
        Ok(place)
    }

    /// Takes a screening place for `ip`; `Err` when all are busy, or all
    /// its network may hold.
    pub fn screen(
        self: &Arc<Self>,
        ip: IpAddr,
        settings: &LimitsSection,
    ) -> Result<Place, Refusal> {
        let net = network(ip, settings);
        let per_network = settings.screening_per_network;
        let counted = (per_network > 0).then_some(net.addr());
        let of_network = counted.map_or(0, |key| count_up(&self.per_network_screening, key));
        let now = self.screening.fetch_add(1, Ordering::SeqCst) + 1;
        let place = Place {
            limits: Arc::clone(self),
            kind: Kind::Screening(counted),
            screening_limit: settings.screening,
        };
        if per_network > 0 && of_network > per_network {
            return Err(Refusal::NetworkScreening(net));
        }
        if settings.screening > 0 && now > settings.screening {
            return Err(Refusal::Screening);
        }
        self.update_stress(now, settings.screening);
        Ok(place)
    }

    /// Counts a new connection from `ip`'s network against `[limits]
    /// connection_rate` (per minute, counted from the network's first
    /// connection in the unit, as anvil counts), and from its wider network
    /// against [`AGGREGATE_FACTOR`] times that; `Err` with the count when
    /// either is over. Refused connections count too.
    pub fn rate(&self, ip: IpAddr, settings: &LimitsSection) -> Result<(), Refusal> {
        let limit = settings.connection_rate;
        if limit == 0 {
            return Ok(());
        }
        let own = network(ip, settings);
        let wide = aggregate(ip, settings).filter(|wide| wide.prefix_len() < own.prefix_len());
        let now = Instant::now();
        let Ok(mut rates) = self.rates.lock() else {
            return Ok(());
        };
        let count = rates.count(own, limit, now);
        let wide_limit = limit.saturating_mul(AGGREGATE_FACTOR);
        let wide = wide.map(|wide| (wide, rates.count(wide, wide_limit, now)));
        if count > limit {
            return Err(Refusal::Rate(count));
        }
        match wide {
            Some((wide, count)) if count > wide_limit => Err(Refusal::AggregateRate(wide, count)),
            _ => Ok(()),
        }
    }

    /// Whether stress mode is on.
    pub fn stressed(&self) -> bool {
        self.stressed.load(Ordering::SeqCst)
    }

    /// How many client connections there are.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// The highest client count since the last call, restarting from now.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.total(), Ordering::Relaxed)
    }

    /// Gives back the tables' room beyond what they hold now, and forgets
    /// rates whose minute is over.
    pub fn compact(&self) {
        for table in [&self.per_client, &self.per_network_screening] {
            if let Ok(mut map) = table.lock() {
                map.shrink_to_fit();
            }
        }
        if let Ok(mut rates) = self.rates.lock() {
            rates.compact(Instant::now());
        }
    }

    /// How many clients are being screened.
    pub fn screening(&self) -> usize {
        self.screening.load(Ordering::SeqCst)
    }

    fn update_stress(&self, screening: usize, limit: usize) {
        if limit == 0 {
            return;
        }
        let (enter, leave) = ((limit * 9).div_ceil(10), limit * 7 / 10);
        if screening >= enter.max(1) && !self.stressed.swap(true, Ordering::SeqCst) {
            log::stress(true, screening);
        } else if screening <= leave && self.stressed.swap(false, Ordering::SeqCst) {
            log::stress(false, screening);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        match self.kind {
            Kind::Screening(network) => {
                let now = self.limits.screening.fetch_sub(1, Ordering::SeqCst) - 1;
                self.limits.update_stress(now, self.screening_limit);
                if let Some(network) = network {
                    count_down(&self.limits.per_network_screening, network);
                }
            }
            Kind::Client(network) => {
                self.limits.total.fetch_sub(1, Ordering::SeqCst);
                count_down(&self.limits.per_client, network);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(client: usize, screening: usize, total: usize) -> LimitsSection {
        LimitsSection {
            client_connections: client,
            screening,
            total,
            ..LimitsSection::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_is_a_network() {
        let s = LimitsSection::default();
        assert_eq!(
            network(ip("2001:db8:1:2:3::9"), &s).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(network(ip("192.0.2.9"), &s).to_string(), "192.0.2.9/32");
        assert_eq!(
            network(ip("::ffff:192.0.2.9"), &s).to_string(),
            "192.0.2.9/32"
        );
        let limits = Arc::new(Limits::default());
        let s = settings(2, 10, 100);
        let _a = limits.admit(ip("2001:db8::1"), &s).unwrap();
        let _b = limits.admit(ip("2001:db8::2"), &s).unwrap();
        assert_eq!(
            limits.admit(ip("2001:db8::3"), &s).unwrap_err(),
            Refusal::PerClient,
            "one /64"
        );
        assert!(limits.admit(ip("2001:db8:0:1::1"), &s).is_ok());
    }

    #[test]
    fn screening_per_network_and_rate() {
        let limits = Arc::new(Limits::default());
        let s = LimitsSection {
            screening_per_network: 2,
            connection_rate: 3,
            ipv4_prefix: 24,
            ..settings(0, 10, 0)
        };
        let held: Vec<Place> = (1..=2)
            .map(|n| limits.screen(ip(&format!("203.0.113.{n}")), &s).unwrap())
            .collect();
        assert!(matches!(
            limits.screen(ip("203.0.113.3"), &s).unwrap_err(),
            Refusal::NetworkScreening(net) if net.to_string() == "203.0.113.0/24"
        ));
        assert_eq!(limits.screening(), 2, "the refused place is given back");
        assert!(limits.screen(ip("198.51.100.1"), &s).is_ok());
        drop(held);
        assert!(limits.per_network_screening.lock().unwrap().is_empty());
        for n in 1..=3 {
            assert!(limits.rate(ip(&format!("203.0.113.{n}")), &s).is_ok());
        }
        assert_eq!(
            limits.rate(ip("203.0.113.4"), &s).unwrap_err(),
            Refusal::Rate(4)
        );
        assert!(limits.rate(ip("198.51.100.1"), &s).is_ok());
    }

    #[test]
    fn cycling_through_the_small_networks_of_a_wide_one_is_limited() {
        let limits = Arc::new(Limits::default());
        let s = LimitsSection {
            connection_rate: 2,
            ..settings(0, 10, 0)
        };
        let wide_limit = 2 * AGGREGATE_FACTOR;
        // Each /64 of one /48 opens one connection: the /48 is limited.
        for n in 0..wide_limit {
            let client = ip(&format!("2001:db8:7:{n:x}::1"));
            assert!(limits.rate(client, &s).is_ok(), "{n}");
        }
        assert!(matches!(
            limits.rate(ip("2001:db8:7:ffff::1"), &s).unwrap_err(),
            Refusal::AggregateRate(net, count)
                if net.to_string() == "2001:db8:7::/48" && count == wide_limit + 1
        ));
        assert!(limits.rate(ip("2001:db8:8::1"), &s).is_ok(), "another /48");
        // IPv4: the addresses of one /16.
        for n in 0..wide_limit {
            let client = ip(&format!("198.18.{}.{}", n / 200, n % 200));
            assert!(limits.rate(client, &s).is_ok(), "{n}");
        }
        assert!(matches!(
            limits.rate(ip("198.18.9.9"), &s).unwrap_err(),
            Refusal::AggregateRate(net, _) if net.to_string() == "198.18.0.0/16"
        ));
        // An aggregate prefix as long as the network's: one level only.
        let one_level = LimitsSection {
            ipv6_aggregate_prefix: 64,
            ..s.clone()
        };
        for n in 0..=wide_limit {
            assert!(limits
                .rate(ip(&format!("2001:db8:9:{n:x}::1")), &one_level)
                .is_ok());
        }
    }

    #[test]
    fn places_are_given_back() {
        let limits = Arc::new(Limits::default());
        let s = settings(2, 10, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = limits.admit(ip, &s).unwrap();
        let b = limits.admit(ip, &s).unwrap();
        assert_eq!(limits.admit(ip, &s).unwrap_err(), Refusal::PerClient);
        let other = limits.admit("192.0.2.2".parse().unwrap(), &s).unwrap();
        assert_eq!(
            limits.admit("192.0.2.3".parse().unwrap(), &s).unwrap_err(),
            Refusal::Total
        );
        drop((a, b, other));
        assert!(limits.per_client.lock().unwrap().is_empty());
        assert!(limits.admit(ip, &s).is_ok());
    }

    #[test]
    fn stress_has_hysteresis() {
        let limits = Arc::new(Limits::default());
        let s = settings(0, 10, 0);
        let any = ip("192.0.2.1");
        let mut places: Vec<Place> = (0..8).map(|_| limits.screen(any, &s).unwrap()).collect();
        assert!(!limits.stressed());
        places.push(limits.screen(any, &s).unwrap());
        assert!(limits.stressed(), "9 of 10");
        places.truncate(8);
        assert!(limits.stressed(), "still above 70%");
        places.truncate(7);
        assert!(!limits.stressed(), "back at 70%");
        let more: Vec<Place> = (0..3).map(|_| limits.screen(any, &s).unwrap()).collect();
        assert_eq!(limits.screen(any, &s).unwrap_err(), Refusal::Screening);
        drop(more);
    }
}
