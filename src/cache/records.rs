//! The record store gates keep state in (greylisting triplets, say): Redis
//! for a fleet, so a retry that reaches another instance finds its record;
//! the redb file of the embedded store, so records survive a restart; or
//! this process's memory, a bounded LRU. The two local stores hold at most
//! `[cache] max_records` records, and their oldest go first.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use doorman_gate_api::{GateFuture, RecordStore, StoreDown};
use lru::LruCache;

use super::embedded::Embedded;
use super::redis::RedisStore;

/// Records in this process's memory.
#[derive(Debug)]
pub struct MemoryRecords {
    records: Mutex<LruCache<String, (String, Instant)>>,
}

impl MemoryRecords {
    /// At most `size` records.
    pub fn new(size: usize) -> Self {
        let mut records = LruCache::unbounded();
        records.resize(NonZeroUsize::new(size).unwrap_or(NonZeroUsize::MIN));
        Self {
            records: Mutex::new(records),
        }
    }
}

impl RecordStore for MemoryRecords {
    fn get<'a>(&'a self, key: &'a str) -> GateFuture<'a, Result<Option<String>, StoreDown>> {
        let found = self
            .records
            .lock()
            .ok()
            .and_then(|mut records| match records.get(key) {
                Some((value, expiry)) if *expiry > Instant::now() => Some(value.clone()),
                Some(_) => {
                    records.pop(key);
                    None
                }
                None => None,
            });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> GateFuture<'a, Result<(), StoreDown>> {
        if let Ok(mut records) = self.records.lock() {
            records.put(key.to_string(), (value.to_string(), Instant::now() + ttl));
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Records in the embedded store's redb file: at most `[cache]
/// max_records`, the oldest first, and expired ones go at its cleanup.
pub struct EmbeddedRecords(pub Arc<Embedded>);

impl RecordStore for EmbeddedRecords {
    fn get<'a>(&'a self, key: &'a str) -> GateFuture<'a, Result<Option<String>, StoreDown>> {
        Box::pin(std::future::ready(
            self.0.record(key).map_err(|_| StoreDown),
        ))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> GateFuture<'a, Result<(), StoreDown>> {
        self.0.keep_record(key, value, ttl);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Records in Redis, as `<prefix>gate:<key>` with native expiry.
pub struct RedisRecords(pub Arc<RedisStore>);

impl RecordStore for RedisRecords {
    fn get<'a>(&'a self, key: &'a str) -> GateFuture<'a, Result<Option<String>, StoreDown>> {
        Box::pin(async move { self.0.record(key).await.ok_or(StoreDown) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> GateFuture<'a, Result<(), StoreDown>> {
        Box::pin(async move { self.0.keep_record(key, value, ttl).await.ok_or(StoreDown) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let mut future = std::pin::pin!(future);
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
        }
    }

    #[test]
    fn a_flood_of_records_evicts_the_oldest_first() {
        let records = MemoryRecords::new(100);
        let hour = Duration::from_secs(3600);
        for n in 0..10_000 {
            block_on(records.put(&format!("triplet-{n}"), "1", hour)).unwrap();
        }
        assert_eq!(records.records.lock().unwrap().len(), 100);
        assert_eq!(
            block_on(records.get("triplet-0")),
            Ok(None),
            "the oldest went"
        );
        assert_eq!(
            block_on(records.get("triplet-9999")),
            Ok(Some("1".to_string()))
        );
        block_on(records.put("short", "x", Duration::ZERO)).unwrap();
        assert_eq!(block_on(records.get("short")), Ok(None), "expired");
    }
}
