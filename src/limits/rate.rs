//! The per-minute connection rate table (anvil's rate limit). A network's
//! count runs from its first connection in the minute, as anvil counts.
//!
//! The table of networks under their limit is bounded: beyond
//! [`RATE_NETWORKS`] the least recently seen is forgotten. A network that
//! reaches its limit moves to a second table that nothing evicts until its
//! minute is over, so a flood of fresh networks cannot flush the counters
//! of the networks being limited. Reaching a limit takes that many real
//! connections, so the second table grows only with what was accepted; it
//! is bounded by the same number all the same, and a network that finds it
//! full stays in the first one (the wider network it belongs to is still
//! counted, see [`super::Limits::rate`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use lru::LruCache;

/// The rate limit's time unit (anvil's `anvil_rate_time_unit`).
pub const RATE_UNIT: Duration = Duration::from_secs(60);

/// The most networks under their limit whose connection rate is tracked at
/// once (and the most at their limit); beyond it the least recently seen
/// is forgotten.
pub const RATE_NETWORKS: usize = 65_536;

/// One network's count in the current minute.
#[derive(Clone, Copy, Debug)]
struct Count {
    since: Instant,
    count: usize,
}

impl Count {
    fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.since) < RATE_UNIT
    }
}

/// The networks' counts.
#[derive(Debug)]
pub(super) struct RateTable {
    /// Networks under their limit, least recently seen first out.
    under: LruCache<IpNet, Count>,
    /// Networks at or over their limit, kept to the end of their minute.
    limited: HashMap<IpNet, Count>,
    capacity: usize,
}

impl RateTable {
    /// A table of at most `capacity` networks under their limit, and as
    /// many at it.
    pub(super) fn new(capacity: NonZeroUsize) -> Self {
        Self {
            under: LruCache::new(capacity),
            limited: HashMap::new(),
            capacity: capacity.get(),
        }
    }

    /// Counts one new connection of `network`, limited at `limit` a
    /// minute, at `now`; the count in this minute, this one included.
    pub(super) fn count(&mut self, network: IpNet, limit: usize, now: Instant) -> usize {
        if let Some(entry) = self.limited.get_mut(&network) {
            if entry.fresh(now) {
                entry.count += 1;
                return entry.count;
            }
            self.limited.remove(&network);
        }
        let entry = match self.under.get_mut(&network) {
            Some(entry) if entry.fresh(now) => {
                entry.count += 1;
                *entry
            }
            _ => {
                let entry = Count {
                    since: now,
                    count: 1,
                };
                self.under.put(network, entry);
                entry
            }
        };
        if entry.count >= limit && self.limited.len() < self.capacity {
            self.under.pop(&network);
            self.limited.insert(network, entry);
        }
        entry.count
    }

    /// Forgets every network whose minute is over, and gives back the room.
    pub(super) fn compact(&mut self, now: Instant) {
        let mut fresh = LruCache::new(self.under.cap());
        for (network, entry) in self.under.iter().rev().filter(|(_, e)| e.fresh(now)) {
            fresh.put(*network, *entry);
        }
        self.under = fresh;
        self.limited.retain(|_, entry| entry.fresh(now));
        self.limited.shrink_to_fit();
    }

    /// How many networks are tracked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.under.len() + self.limited.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn a_flood_of_fresh_networks_does_not_flush_a_limited_one() {
        let mut table = RateTable::new(NonZeroUsize::new(4).unwrap());
        let now = Instant::now();
        let limited = net("2001:db8:1:1::/64");
        for n in 1..=3 {
            assert_eq!(table.count(limited, 3, now), n);
        }
        // Ten fresh networks, more than the table holds under the limit.
        for n in 0..10 {
            assert_eq!(table.count(net(&format!("2001:db8:2:{n}::/64")), 3, now), 1);
        }
        assert_eq!(table.count(limited, 3, now), 4, "still counted");
        assert_eq!(table.len(), 5, "4 under the limit, 1 at it");
        // Its minute over, it starts again, and compaction forgets it.
        let later = now + RATE_UNIT;
        assert_eq!(table.count(limited, 3, later), 1);
        table.compact(later);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_limited_table_is_bounded_too() {
        let mut table = RateTable::new(NonZeroUsize::new(2).unwrap());
        let now = Instant::now();
        for n in 0..5 {
            let network = net(&format!("192.0.2.{n}/32"));
            assert_eq!(table.count(network, 1, now), 1);
        }
        assert!(table.len() <= 4, "{}", table.len());
    }
}
