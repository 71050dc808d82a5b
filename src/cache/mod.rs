//! The pass cache: clients that passed, and until when each pass holds.
//!
//! As postscreen's cache, an entry keeps one expiry time per test. A test
//! whose pass has not expired is not run again; a client whose every
//! enabled test is still passed is `PASS OLD` and goes straight to a
//! backend. Three stores:
//! - `memory`: a bounded LRU, lost on restart;
//! - `embedded` (the default): a redb file that survives restarts
//!   ([`embedded`]);
//! - `redis`: shared by a fleet, DNS answers included ([`redis`]).
//!
//! Every write also lands in the bounded in-memory LRU, which answers when
//! the store cannot (Redis down, a file error), so the cache fails open to
//! what this instance knows.
//!
//! It imports only the `[cache]` section from the config; it never touches a
//! session or a gate.

pub mod embedded;
pub mod entry;
pub mod records;
pub mod redis;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use doorman_gate_api::AnswerStore;
use doorman_gate_api::RecordStore;
use lru::LruCache;

use crate::config::{CacheSection, CacheStore};
use embedded::Embedded;
pub use entry::{Entry, RECORD_FIELDS};
use records::{EmbeddedRecords, MemoryRecords, RedisRecords};
use redis::RedisStore;

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The store could not be opened, read or written.
    #[error("cache store: {0}")]
    Store(String),
    /// The store is unreachable right now (Redis down).
    #[error("cache store unreachable")]
    Unavailable,
}

/// What `doorman cache stats` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// The store's name (`embedded:<path>`, `redis:<url>`, `memory`).
    pub store: String,
    /// Entries in the store.
    pub entries: u64,
}

/// One line for `doorman cache get`: the pass of each test of
/// postscreen's record and its expiry, then the record itself.
pub fn describe(ip: IpAddr, entry: &Entry) -> String {
    let passes: Vec<String> = RECORD_FIELDS
        .iter()
        .map(|name| match entry.expiry(name) {
            Some(at) => format!(
                "{name} passed until {}",
                humantime::format_rfc3339_seconds(at)
            ),
            None => format!("{name} passed never"),
        })
        .collect();
    format!("{ip}: {} (record {})", passes.join(", "), entry.encode())
}

#[derive(Debug)]
enum Store {
    Memory,
    Embedded(Arc<Embedded>),
    Redis(Arc<RedisStore>),
}

/// An empty in-memory LRU for at most `capacity` clients, whose table
/// grows with the clients it holds rather than being sized for all at once.
fn bounded(capacity: NonZeroUsize) -> LruCache<IpAddr, Entry> {
    let mut memory = LruCache::unbounded();
    memory.resize(capacity);
    memory
}

/// The pass cache of one config.
#[derive(Debug)]
pub struct PassCache {
    store: Store,
    memory: Known,
    retention: Duration,
    /// Gates' records when the store is not Redis.
    local_records: Arc<MemoryRecords>,
}

/// The passes this instance knows: its in-memory LRU, which answers when
/// the store cannot and is offered back to Redis when Redis returns.
pub type Known = Arc<Mutex<LruCache<IpAddr, Entry>>>;

impl PassCache {
    /// A memory-only cache for at most `size` addresses.
    pub fn memory(size: usize, retention: Duration) -> Self {
        Self::with_store(Store::Memory, size, size, retention)
    }

    fn with_store(store: Store, size: usize, max_records: usize, retention: Duration) -> Self {
        let capacity = NonZeroUsize::new(size).unwrap_or(NonZeroUsize::MIN);
        Self {
            store,
            memory: Arc::new(Mutex::new(bounded(capacity))),
            retention,
            local_records: Arc::new(MemoryRecords::new(max_records)),
        }
    }

    /// Opens the configured store and starts its background work (the
    /// write-behind of the embedded store, the Redis reconnector). Must run
    /// inside the tokio runtime.
    pub fn open(settings: &CacheSection) -> Result<Self, CacheError> {
        let store = match settings.store {
            CacheStore::Memory => Store::Memory,
            CacheStore::Embedded => {
                let embedded = Arc::new(Embedded::open(&settings.path, settings.max_records)?);
                tokio::spawn(Arc::clone(&embedded).write_behind(settings.flush_interval));
                Store::Embedded(embedded)
            }
            CacheStore::Redis => Store::Redis(Arc::new(RedisStore::new(settings)?)),
        };
        let max_records = usize::try_from(settings.max_records).unwrap_or(usize::MAX);
        let cache = Self::with_store(store, settings.size, max_records, settings.retention_time);
        if let Store::Redis(redis) = &cache.store {
            tokio::spawn(
                Arc::clone(redis).keep_connected(Arc::clone(&cache.memory), cache.retention),
            );
        }
        Ok(cache)
    }

    /// Opens the store for one command (`doorman cache ...`): Redis is
    /// connected before the call returns.
    pub async fn open_for_command(settings: &CacheSection) -> Result<Self, CacheError> {
        let cache = Self::open(settings)?;
        if let Store::Redis(redis) = &cache.store {
            if !redis.connect_once(None).await {
                return Err(CacheError::Unavailable);
            }
        }
        Ok(cache)
    }

    /// The store's name in log lines.
    pub fn name(&self) -> String {
        match &self.store {
            Store::Memory => "memory".to_string(),
            Store::Embedded(embedded) => embedded.name(),
            Store::Redis(redis) => redis.name(),
        }
    }

    /// Whether the store answers now: Redis while its link is up; the
    /// embedded and memory stores always.
    pub fn store_up(&self) -> bool {
        match &self.store {
            Store::Redis(redis) => redis.is_up(),
            Store::Embedded(_) | Store::Memory => true,
        }
    }

    /// How the embedded store's commits went; `None` for the others.
    pub fn write_stats(&self) -> Option<embedded::WriteStats> {
        match &self.store {
            Store::Embedded(embedded) => Some(embedded.write_stats()),
            Store::Memory | Store::Redis(_) => None,
        }
    }

    /// The store gates keep records in: Redis, shared by the fleet; the
    /// embedded store's file; or this process's memory.
    pub fn record_store(&self) -> Arc<dyn RecordStore> {
        match &self.store {
            Store::Redis(redis) => Arc::new(RedisRecords(Arc::clone(redis))),
            Store::Embedded(embedded) => Arc::new(EmbeddedRecords(Arc::clone(embedded))),
            Store::Memory => Arc::clone(&self.local_records) as Arc<dyn RecordStore>,
        }
    }

    /// The shared DNS answer store, for the DNSBL gate (Redis only).
    pub fn answer_store(&self) -> Option<Arc<dyn AnswerStore>> {
        match &self.store {
            Store::Redis(redis) => Some(Arc::clone(redis) as Arc<dyn AnswerStore>),
            _ => None,
        }
    }

    /// Rebuilds the in-memory LRU in fresh memory, so that the allocations
    /// a flood scattered over the heap can go back to the system once freed.
    pub fn compact(&self) {
        if let Ok(mut memory) = self.memory.lock() {
            let mut fresh = bounded(memory.cap());
            for (ip, entry) in memory.iter().rev() {
                fresh.put(*ip, entry.clone());
            }
            *memory = fresh;
        }
    }

    /// The entry for `ip`, from the store, or from memory when the store
    /// cannot answer.
    pub async fn get(&self, ip: IpAddr) -> Option<Entry> {
        let stored = match &self.store {
            Store::Memory => Err(CacheError::Unavailable),
            Store::Embedded(embedded) => embedded.get(ip),
            Store::Redis(redis) => redis.get(ip).await,
        };
        match stored {
            Ok(entry) => entry,
            Err(_) => self.memory.lock().ok()?.get(&ip).cloned(),
        }
    }

    /// Stores the entry; the store is written off the caller's path.
    pub fn put(&self, ip: IpAddr, entry: Entry) {
        if let Ok(mut memory) = self.memory.lock() {
            memory.put(ip, entry.clone());
        }
        match &self.store {
            Store::Memory => {}
            Store::Embedded(embedded) => embedded.put(ip, Some(entry)),
            Store::Redis(redis) => {
                let redis = Arc::clone(redis);
                let retention = self.retention;
                tokio::spawn(async move { redis.put(ip, entry, retention).await });
            }
        }
    }

    /// Deletes the entry for `ip`, so the client is tested again.
    pub async fn delete(&self, ip: IpAddr) -> Result<bool, CacheError> {
        let in_memory = self
            .memory
            .lock()
            .ok()
            .and_then(|mut memory| memory.pop(&ip))
            .is_some();
        match &self.store {
            Store::Memory => Ok(in_memory),
            Store::Embedded(embedded) => embedded.delete(ip).await,
            Store::Redis(redis) => redis.delete(ip).await,
        }
    }

    /// How many entries the store holds.
    pub async fn stats(&self) -> Result<Stats, CacheError> {
        let entries = match &self.store {
            Store::Memory => self.memory.lock().map(|m| m.len() as u64).unwrap_or(0),
            Store::Embedded(embedded) => {
                embedded.flush().await?;
                embedded.count()?
            }
            Store::Redis(redis) => redis.count().await?,
        };
        Ok(Stats {
            store: self.name(),
            entries,
        })
    }

    /// Drops entries whose every pass expired more than the retention time
    /// ago; returns (retained, dropped). `None` for Redis, whose keys expire
    /// by themselves.
    pub async fn cleanup(&self, now: SystemTime) -> Option<Result<(u64, u64), CacheError>> {
        let memory = self.memory.lock().ok().map(|mut memory| {
            let stale: Vec<IpAddr> = memory
                .iter()
                .filter(|(_, entry)| entry.stale(now, self.retention))
                .map(|(ip, _)| *ip)
                .collect();
            for ip in &stale {
                memory.pop(ip);
            }
            (memory.len() as u64, stale.len() as u64)
        });
        match &self.store {
            Store::Memory => memory.map(Ok),
            Store::Embedded(embedded) => Some(embedded.cleanup(now, self.retention).await),
            Store::Redis(_) => None,
        }
    }

    /// Writes what is pending (a clean stop loses nothing).
    pub async fn close(&self) {
        if let Store::Embedded(embedded) = &self.store {
            if let Err(error) = embedded.flush().await {
                tracing::warn!(
                    "warning: cache {}: final write failed: {error}",
                    self.name()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// `doorman cache get`'s line for an entry with every test set.
    #[test]
    fn the_description_names_every_test() {
        let base = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let entry =
            Entry::decode("1800000001;0;1800000003;1800000004;1800000005;rdns=1800000006").unwrap();
        assert_eq!(
            describe(IpAddr::from([192, 0, 2, 1]), &entry),
            "192.0.2.1: pregreet passed until 2027-01-15T08:00:01Z, dnsbl passed never, \
             pipelining passed until 2027-01-15T08:00:03Z, non_smtp_command passed until \
             2027-01-15T08:00:04Z, bare_newline passed until 2027-01-15T08:00:05Z \
             (record 1800000001;0;1800000003;1800000004;1800000005;rdns=1800000006)"
        );
        assert!(entry.passed_gate("rdns", base));
    }

    #[tokio::test]
    async fn memory_cache_is_bounded_and_cleans_up() {
        let now = SystemTime::now();
        let mut entry = Entry::default();
        entry.record_gate("pregreet", now, Duration::from_secs(10));
        let cache = PassCache::memory(2, Duration::from_secs(60));
        for last in 1..=3u8 {
            cache.put(IpAddr::from([192, 0, 2, last]), entry.clone());
        }
        assert!(cache.get(IpAddr::from([192, 0, 2, 1])).await.is_none());
        assert_eq!(cache.get(IpAddr::from([192, 0, 2, 3])).await, Some(entry));
        let later = now + Duration::from_secs(71);
        let counts = cache.cleanup(later).await.and_then(Result::ok);
        assert_eq!(counts, Some((0, 2)));
    }

    #[tokio::test]
    async fn compacting_keeps_entries_and_their_order() {
        let mut entry = Entry::default();
        entry.record_gate("pregreet", SystemTime::now(), Duration::from_secs(10));
        let cache = PassCache::memory(3, Duration::from_secs(60));
        for last in 1..=3u8 {
            cache.put(IpAddr::from([192, 0, 2, last]), entry.clone());
        }
        assert!(cache.get(IpAddr::from([192, 0, 2, 1])).await.is_some());
        cache.compact();
        // .2 is now the least recently used, so the next put drops it.
        cache.put(IpAddr::from([192, 0, 2, 4]), entry.clone());
        assert!(cache.get(IpAddr::from([192, 0, 2, 2])).await.is_none());
        for last in [1, 3, 4] {
            assert_eq!(
                cache.get(IpAddr::from([192, 0, 2, last])).await,
                Some(entry.clone())
            );
        }
    }

    #[tokio::test]
    async fn embedded_store_keeps_entries_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        let mut fresh = Entry::default();
        fresh.record_gate("pregreet", now, day);
        let mut old = Entry::default();
        old.record_gate("dnsbl", now - 10 * day, day);
        {
            let store = Embedded::open(&path, 1000).unwrap();
            store.put(IpAddr::from([192, 0, 2, 1]), Some(fresh.clone()));
            store.put(IpAddr::from([192, 0, 2, 2]), Some(old));
            assert_eq!(
                store.get(IpAddr::from([192, 0, 2, 1])).unwrap(),
                Some(fresh.clone())
            );
            store.flush().await.unwrap();
            assert_eq!(store.count().unwrap(), 2);
        }
        let store = Embedded::open(&path, 1000).unwrap();
        let stored = Entry::decode(&fresh.encode());
        assert_eq!(
            store.get(IpAddr::from([192, 0, 2, 1])).unwrap(),
            stored,
            "whole seconds"
        );
        assert_eq!(store.cleanup(now, 7 * day).await.unwrap(), (1, 1));
        assert_eq!(store.get(IpAddr::from([192, 0, 2, 2])).unwrap(), None);
        assert!(store.delete(IpAddr::from([192, 0, 2, 1])).await.unwrap());
        assert_eq!(store.count().unwrap(), 0);
    }
}
