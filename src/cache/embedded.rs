//! The embedded store: a redb file on this machine.
//!
//! Reads go to the file (a committed read transaction, in-process), after
//! the writes that are still pending. Writes never wait for the disk: the
//! passes and the gates' records (greylist triplets, user assignments)
//! land in bounded pending maps that a writer task commits together, in
//! one transaction and one fsync, every `flush_interval` (or sooner when a
//! map fills): a flood of routed or greylisted RCPTs costs a map insert
//! each on the serving thread, never a disk write. One commit runs at a
//! time; readers see its batch until it is in the file, and a commit that
//! fails puts its writes back. The maps are bounded in practice by what
//! one flush interval brings (a full map wakes the writer at once); they
//! are not capped. A `kill -9` loses at
//! most the writes of the last interval, and a clean stop flushes
//! everything. The file is opened in redb's multi-writer mode, so
//! `doorman cache` can read and delete entries while doorman runs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use tokio::sync::Notify;

use super::entry::Entry;
use super::CacheError;

/// The table of passes: client address -> postscreen-style record.
const PASSES: TableDefinition<&str, &str> = TableDefinition::new("passes");
/// The table of gates' records: key -> `<expiry seconds>;<value>`.
const RECORDS: TableDefinition<&str, &str> = TableDefinition::new("records");
/// When the pending map holds this many writes, they are committed at once.
const PENDING_LIMIT: usize = 10_000;

/// Writes taken for one commit: passes (`None` deletes) and records.
#[derive(Debug, Default)]
struct Batch {
    passes: HashMap<IpAddr, Option<Entry>>,
    records: HashMap<String, String>,
}

/// A redb file with its pending writes.
#[derive(Debug)]
pub struct Embedded {
    path: PathBuf,
    database: Arc<Database>,
    /// Writes not yet committed; `None` is a delete.
    pending: Mutex<HashMap<IpAddr, Option<Entry>>>,
    /// Gates' records not yet committed, stored as `<expiry>;<value>`.
    pending_records: Mutex<HashMap<String, String>>,
    /// The batch being committed now: readers see it until it is in the
    /// file.
    in_flight: Mutex<Option<Arc<Batch>>>,
    /// One commit at a time, so batches land in the order they were taken.
    committing: tokio::sync::Mutex<()>,
    wake: Notify,
}

impl Embedded {
    /// Opens (or creates) the file.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let fail = |error: String| CacheError::Store(format!("{}: {error}", path.display()));
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
            }
        }
        let mut builder = redb::Builder::new();
        builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
        let database = builder.create(path).map_err(|e| fail(e.to_string()))?;
        let write = database.begin_write().map_err(|e| fail(e.to_string()))?;
        write.open_table(PASSES).map_err(|e| fail(e.to_string()))?;
        write.open_table(RECORDS).map_err(|e| fail(e.to_string()))?;
        write.commit().map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            database: Arc::new(database),
            pending: Mutex::new(HashMap::new()),
            pending_records: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(None),
            committing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
        })
    }

    /// The store's name in log lines: `embedded:<path>`.
    pub fn name(&self) -> String {
        format!("embedded:{}", self.path.display())
    }

    /// The entry for `ip`: a pending write, else one being committed, else
    /// the file.
    pub fn get(&self, ip: IpAddr) -> Result<Option<Entry>, CacheError> {
        if let Some(pending) = self.pending.lock().ok().and_then(|p| p.get(&ip).cloned()) {
            return Ok(pending);
        }
        if let Some(committing) = self.committing_batch() {
            if let Some(entry) = committing.passes.get(&ip) {
                return Ok(entry.clone());
            }
        }
        let read = self.database.begin_read().map_err(store_error)?;
        let table = read.open_table(PASSES).map_err(store_error)?;
        let value = table.get(ip.to_string().as_str()).map_err(store_error)?;
        Ok(value.and_then(|v| Entry::decode(v.value())))
    }

    /// Queues a write; it is committed within the flush interval.
    pub fn put(&self, ip: IpAddr, entry: Option<Entry>) {
        let full = match self.pending.lock() {
            Ok(mut pending) => {
                pending.insert(ip, entry);
                pending.len() >= PENDING_LIMIT
            }
            Err(_) => false,
        };
        if full {
            self.wake.notify_one();
        }
    }

    /// Commits the pending writes now, passes and records in one
    /// transaction, one commit at a time. A commit that fails puts its
    /// writes back (newer ones for the same keys win), so nothing is lost
    /// to a full disk but the time.
    pub async fn flush(&self) -> Result<(), CacheError> {
        let _one = self.committing.lock().await;
        let batch = Arc::new(Batch {
            passes: self
                .pending
                .lock()
                .map(|mut pending| std::mem::take(&mut *pending))
                .unwrap_or_default(),
            records: self
                .pending_records
                .lock()
                .map(|mut pending| std::mem::take(&mut *pending))
                .unwrap_or_default(),
        });
        if batch.passes.is_empty() && batch.records.is_empty() {
            return Ok(());
        }
        if let Ok(mut in_flight) = self.in_flight.lock() {
            *in_flight = Some(Arc::clone(&batch));
        }
        let database = Arc::clone(&self.database);
        let committed = Arc::clone(&batch);
        let result = tokio::task::spawn_blocking(move || {
            commit(&database, &committed.passes, &committed.records)
        })
        .await
        .map_err(|e| CacheError::Store(e.to_string()))
        .and_then(|done| done);
        if result.is_err() {
            self.put_back(&batch);
        }
        if let Ok(mut in_flight) = self.in_flight.lock() {
            *in_flight = None;
        }
        result
    }

    /// A failed batch's writes, back in the pending maps under the newer
    /// ones.
    fn put_back(&self, batch: &Batch) {
        if let Ok(mut pending) = self.pending.lock() {
            for (ip, entry) in &batch.passes {
                pending.entry(*ip).or_insert_with(|| entry.clone());
            }
        }
        if let Ok(mut pending) = self.pending_records.lock() {
            for (key, stored) in &batch.records {
                pending.entry(key.clone()).or_insert_with(|| stored.clone());
            }
        }
    }

    /// The batch being committed, if one is.
    fn committing_batch(&self) -> Option<Arc<Batch>> {
        self.in_flight.lock().ok().and_then(|batch| batch.clone())
    }

    /// Commits pending writes every `interval` (or when the map fills)
    /// until the process ends.
    pub async fn write_behind(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
            }
            if let Err(error) = self.flush().await {
                tracing::warn!("warning: cache {}: write failed: {error}", self.name());
            }
        }
    }

    /// How many entries the file holds (pending writes not counted).
    pub fn count(&self) -> Result<u64, CacheError> {
        let read = self.database.begin_read().map_err(store_error)?;
        let table = read.open_table(PASSES).map_err(store_error)?;
        table.len().map_err(store_error)
    }

    /// Drops the entries whose every test expired more than `retention`
    /// before `now`; returns (retained, dropped).
    pub async fn cleanup(
        &self,
        now: SystemTime,
        retention: Duration,
    ) -> Result<(u64, u64), CacheError> {
        self.flush().await?;
        let database = Arc::clone(&self.database);
        tokio::task::spawn_blocking(move || {
            let write = database.begin_write().map_err(store_error)?;
            let mut counts = (0, 0);
            {
                let mut table = write.open_table(PASSES).map_err(store_error)?;
                table
                    .retain(|_, value| {
                        let keep = Entry::decode(value).is_some_and(|e| !e.stale(now, retention));
                        if keep {
                            counts.0 += 1;
                        } else {
                            counts.1 += 1;
                        }
                        keep
                    })
                    .map_err(store_error)?;
                // Gates' records go once they expired.
                let now = epoch_seconds(now);
                write
                    .open_table(RECORDS)
                    .map_err(store_error)?
                    .retain(|_, stored| {
                        stored
                            .split_once(';')
                            .and_then(|(expiry, _)| expiry.parse::<u64>().ok())
                            .is_some_and(|expiry| expiry > now)
                    })
                    .map_err(store_error)?;
            }
            write.commit().map_err(store_error)?;
            Ok(counts)
        })
        .await
        .map_err(|e| CacheError::Store(e.to_string()))?
    }

    /// A gate's record, unless it expired: a pending write, else the file.
    pub fn record(&self, key: &str) -> Result<Option<String>, CacheError> {
        let pending = self
            .pending_records
            .lock()
            .ok()
            .and_then(|pending| pending.get(key).cloned())
            .or_else(|| {
                self.committing_batch()
                    .and_then(|batch| batch.records.get(key).cloned())
            });
        let stored = match pending {
            Some(stored) => Some(stored),
            None => {
                let read = self.database.begin_read().map_err(store_error)?;
                let table = read.open_table(RECORDS).map_err(store_error)?;
                let value = table.get(key).map_err(store_error)?;
                value.map(|stored| stored.value().to_string())
            }
        };
        Ok(stored.and_then(|stored| {
            let (expiry, value) = stored.split_once(';')?;
            (expiry.parse::<u64>().ok()? > epoch_seconds(SystemTime::now()))
                .then(|| value.to_string())
        }))
    }

    /// Stores a gate's record for `ttl`: queued, and committed with the
    /// next batch (within the flush interval).
    pub fn keep_record(&self, key: &str, value: &str, ttl: Duration) {
        let stored = format!("{};{value}", epoch_seconds(SystemTime::now() + ttl));
        let full = match self.pending_records.lock() {
            Ok(mut pending) => {
                pending.insert(key.to_string(), stored);
                pending.len() >= PENDING_LIMIT
            }
            Err(_) => false,
        };
        if full {
            self.wake.notify_one();
        }
    }

    /// Deletes the entry for `ip` at once; whether there was one.
    pub async fn delete(&self, ip: IpAddr) -> Result<bool, CacheError> {
        // After any commit in progress, so an older batch cannot land
        // after the delete.
        let _one = self.committing.lock().await;
        let existed = self.get(ip)?.is_some();
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(&ip);
        }
        let database = Arc::clone(&self.database);
        let batch = HashMap::from([(ip, None)]);
        tokio::task::spawn_blocking(move || commit(&database, &batch, &HashMap::new()))
            .await
            .map_err(|e| CacheError::Store(e.to_string()))??;
        Ok(existed)
    }
}

/// One transaction: the passes (`None` deletes) and the gates' records.
fn commit(
    database: &Database,
    batch: &HashMap<IpAddr, Option<Entry>>,
    records: &HashMap<String, String>,
) -> Result<(), CacheError> {
    let write = database.begin_write().map_err(store_error)?;
    if !records.is_empty() {
        let mut table = write.open_table(RECORDS).map_err(store_error)?;
        for (key, stored) in records {
            table
                .insert(key.as_str(), stored.as_str())
                .map_err(store_error)?;
        }
    }
    {
        let mut table = write.open_table(PASSES).map_err(store_error)?;
        for (ip, entry) in batch {
            let key = ip.to_string();
            match entry {
                Some(entry) => {
                    table
                        .insert(key.as_str(), entry.encode().as_str())
                        .map_err(store_error)?;
                }
                None => {
                    table.remove(key.as_str()).map_err(store_error)?;
                }
            }
        }
    }
    write.commit().map_err(store_error)
}

fn epoch_seconds(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn store_error(error: impl std::fmt::Display) -> CacheError {
    CacheError::Store(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_read_back_at_once_and_committed_with_the_passes() {
        let dir = tempfile::tempdir().expect("a folder");
        let path = dir.path().join("cache.redb");
        let store = Embedded::open(&path).expect("opened");
        let hour = Duration::from_secs(3600);
        store.keep_record("greylist:a", "1", hour);
        store.keep_record("user:b", "127.0.0.1:25", hour);
        store.put("192.0.2.1".parse().expect("ip"), Some(Entry::default()));
        assert_eq!(
            store.record("greylist:a").expect("read").as_deref(),
            Some("1")
        );
        store.flush().await.expect("one commit");
        assert!(store.pending_records.lock().expect("lock").is_empty());
        assert_eq!(
            store.record("user:b").expect("read").as_deref(),
            Some("127.0.0.1:25")
        );
        store.keep_record("gone", "x", Duration::ZERO);
        assert_eq!(store.record("gone").expect("read"), None, "expired");
        drop(store);
        let reopened = Embedded::open(&path).expect("reopened");
        assert_eq!(
            reopened.record("greylist:a").expect("read").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn a_failed_batch_goes_back_under_the_newer_writes() {
        let dir = tempfile::tempdir().expect("a folder");
        let store = Embedded::open(&dir.path().join("cache.redb")).expect("opened");
        let hour = Duration::from_secs(3600);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut failed = Batch::default();
        failed.passes.insert(ip, None);
        failed
            .records
            .insert("old".into(), "99999999999;failed".into());
        failed
            .records
            .insert("both".into(), "99999999999;failed".into());
        // Written while the batch was committing: newer, so it stays.
        store.keep_record("both", "newer", hour);
        store.put_back(&failed);
        assert_eq!(
            store.record("both").expect("read").as_deref(),
            Some("newer")
        );
        assert_eq!(
            store.record("old").expect("read").as_deref(),
            Some("failed")
        );
        assert!(store.pending.lock().expect("lock").contains_key(&ip));
    }
}
