//! The pass cache: clients that passed, and until when each pass holds.
//!
//! As postscreen's cache, an entry keeps one expiry time per test. A test
//! whose pass has not expired is not run again; a client whose every
//! enabled test is still passed is `PASS OLD` and goes straight to a
//! backend. The cache is in memory and bounded (least recently used entries
//! go first).

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lru::LruCache;

/// The tests whose passes are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// The pregreet test.
    Pregreet,
    /// The DNSBL test.
    Dnsbl,
}

/// One client's passes: the time each one expires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// When the pregreet pass expires.
    pub pregreet: Option<SystemTime>,
    /// When the DNSBL pass expires.
    pub dnsbl: Option<SystemTime>,
}

impl Entry {
    /// Whether `test` has a pass that holds at `now`.
    pub fn passed(&self, test: Test, now: SystemTime) -> bool {
        let expiry = match test {
            Test::Pregreet => self.pregreet,
            Test::Dnsbl => self.dnsbl,
        };
        expiry.is_some_and(|at| at > now)
    }

    /// Records a pass of `test` that holds for `ttl` from `now`.
    pub fn record(&mut self, test: Test, now: SystemTime, ttl: Duration) {
        let expiry = Some(now + ttl);
        match test {
            Test::Pregreet => self.pregreet = expiry,
            Test::Dnsbl => self.dnsbl = expiry,
        }
    }
}

/// The bounded in-memory cache.
#[derive(Debug)]
pub struct PassCache {
    entries: Mutex<LruCache<IpAddr, Entry>>,
}

impl PassCache {
    /// A cache for at most `size` addresses (at least one).
    pub fn new(size: usize) -> Self {
        let capacity = NonZeroUsize::new(size).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The entry for `ip`, if any.
    pub fn get(&self, ip: IpAddr) -> Option<Entry> {
        self.entries.lock().ok()?.get(&ip).copied()
    }

    /// Stores the entry for `ip`.
    pub fn put(&self, ip: IpAddr, entry: Entry) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.put(ip, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_expire_and_the_cache_is_bounded() {
        let now = SystemTime::now();
        let mut entry = Entry::default();
        assert!(!entry.passed(Test::Pregreet, now));
        entry.record(Test::Pregreet, now, Duration::from_secs(10));
        assert!(entry.passed(Test::Pregreet, now + Duration::from_secs(9)));
        assert!(!entry.passed(Test::Pregreet, now + Duration::from_secs(10)));
        assert!(!entry.passed(Test::Dnsbl, now));

        let cache = PassCache::new(2);
        for last in 1..=3u8 {
            cache.put(IpAddr::from([192, 0, 2, last]), entry);
        }
        assert!(cache.get(IpAddr::from([192, 0, 2, 1])).is_none());
        assert_eq!(cache.get(IpAddr::from([192, 0, 2, 3])), Some(entry));
    }
}
