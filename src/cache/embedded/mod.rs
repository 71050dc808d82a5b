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
//! are not capped. The file's records table is: at most `max_records`
//! records, the oldest write evicted first at each commit (and at open, so
//! a lowered cap holds after a restart), beside the expired ones that go
//! at the cleanup ([`table`]). A `kill -9` loses at
//! most the writes of the last interval, and a clean stop flushes
//! everything. The file is opened in redb's multi-writer mode, so
//! `doorman cache` can read and delete entries while doorman runs.

mod table;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use tokio::sync::Notify;

use super::entry::Entry;
use super::CacheError;
use table::{RecordTables, RECORDS};

/// The table of passes: client address -> postscreen-style record.
const PASSES: TableDefinition<&str, &str> = TableDefinition::new("passes");
/// When the pending map holds this many writes, they are committed at once.
const PENDING_LIMIT: usize = 10_000;

/// Pending records: key -> (the order it was written in, `<expiry>;<value>`).
type PendingRecords = HashMap<String, (u64, String)>;

/// Writes taken for one commit: passes (`None` deletes) and records.
#[derive(Debug, Default)]
struct Batch {
    passes: HashMap<IpAddr, Option<Entry>>,
    records: PendingRecords,
}

/// A redb file with its pending writes.
#[derive(Debug)]
pub struct Embedded {
    path: PathBuf,
    database: Arc<Database>,
    /// Writes not yet committed; `None` is a delete.
    pending: Mutex<HashMap<IpAddr, Option<Entry>>>,
    /// Gates' records not yet committed, stored as `<expiry>;<value>`
    /// beside the order they were written in.
    pending_records: Mutex<PendingRecords>,
    /// The order of the next record written.
    next_record: AtomicU64,
    /// The most records the file holds; the oldest go first.
    max_records: u64,
    /// The batch being committed now: readers see it until it is in the
    /// file.
    in_flight: Mutex<Option<Arc<Batch>>>,
    /// One commit at a time, so batches land in the order they were taken.
    committing: tokio::sync::Mutex<()>,
    wake: Notify,
    /// When the oldest write still waiting for a commit was queued.
    oldest_pending: Mutex<Option<Instant>>,
    /// How the commits went, for `/metrics`.
    stats: Mutex<WriteStats>,
}

/// How long the embedded store's writes take, for `/metrics`: what a slow
/// disk costs, which the serving threads never wait for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WriteStats {
    /// Commits so far.
    pub commits: u64,
    /// The last commit's time in the file (its transaction and fsync).
    pub last_commit: Duration,
    /// How long the oldest write of the last batch waited, from its queueing
    /// to the end of its commit.
    pub last_lag: Duration,
    /// The longest any write waited so, since the start.
    pub max_lag: Duration,
}

impl Embedded {
    /// Opens (or creates) the file, whose records table holds at most
    /// `max_records` records (trimmed now if it holds more).
    pub fn open(path: &Path, max_records: u64) -> Result<Self, CacheError> {
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
        {
            let mut records = RecordTables::open(&write)?;
            records.adopt_unordered()?;
            records.trim(max_records)?;
        }
        write.commit().map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            database: Arc::new(database),
            pending: Mutex::new(HashMap::new()),
            pending_records: Mutex::new(HashMap::new()),
            next_record: AtomicU64::new(0),
            max_records,
            in_flight: Mutex::new(None),
            committing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            oldest_pending: Mutex::new(None),
            stats: Mutex::new(WriteStats::default()),
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

    /// How the commits went so far.
    pub fn write_stats(&self) -> WriteStats {
        self.stats.lock().map(|stats| *stats).unwrap_or_default()
    }

    /// Notes when the oldest pending write was queued.
    fn queued(&self) {
        if let Ok(mut oldest) = self.oldest_pending.lock() {
            oldest.get_or_insert_with(Instant::now);
        }
    }

    /// Queues a write; it is committed within the flush interval.
    pub fn put(&self, ip: IpAddr, entry: Option<Entry>) {
        self.queued();
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
        let queued = self
            .oldest_pending
            .lock()
            .ok()
            .and_then(|mut oldest| oldest.take());
        // The pending maps stay locked until the batch is in flight: a
        // reader that misses a write in them must find it there.
        let batch = {
            let mut passes = self.pending.lock().ok();
            let mut records = self.pending_records.lock().ok();
            let batch = Arc::new(Batch {
                passes: passes
                    .as_deref_mut()
                    .map(std::mem::take)
                    .unwrap_or_default(),
                records: records
                    .as_deref_mut()
                    .map(std::mem::take)
                    .unwrap_or_default(),
            });
            if batch.passes.is_empty() && batch.records.is_empty() {
                return Ok(());
            }
            if let Ok(mut in_flight) = self.in_flight.lock() {
                *in_flight = Some(Arc::clone(&batch));
            }
            batch
        };
        let database = Arc::clone(&self.database);
        let committed = Arc::clone(&batch);
        let cap = self.max_records;
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            commit(&database, &committed.passes, &committed.records, cap)
        })
        .await
        .map_err(|e| CacheError::Store(e.to_string()))
        .and_then(|done| done);
        if result.is_err() {
            self.put_back(&batch);
            if let (Ok(mut oldest), Some(queued)) = (self.oldest_pending.lock(), queued) {
                *oldest = Some(oldest.map_or(queued, |newer| newer.min(queued)));
            }
        } else if let Ok(mut stats) = self.stats.lock() {
            let lag = queued.map_or(Duration::ZERO, |queued| queued.elapsed());
            stats.commits += 1;
            stats.last_commit = started.elapsed();
            stats.last_lag = lag;
            stats.max_lag = stats.max_lag.max(lag);
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

    /// How many gates' records the file holds (pending writes not counted).
    pub fn record_count(&self) -> Result<u64, CacheError> {
        let read = self.database.begin_read().map_err(store_error)?;
        let table = read.open_table(RECORDS).map_err(store_error)?;
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
                RecordTables::open(&write)?.drop_expired(epoch_seconds(now))?;
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
            .and_then(|pending| pending.get(key).map(|(_, stored)| stored.clone()))
            .or_else(|| {
                self.committing_batch()
                    .and_then(|batch| batch.records.get(key).map(|(_, stored)| stored.clone()))
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
        self.queued();
        let order = self.next_record.fetch_add(1, Ordering::Relaxed);
        let full = match self.pending_records.lock() {
            Ok(mut pending) => {
                pending.insert(key.to_string(), (order, stored));
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
        let cap = self.max_records;
        tokio::task::spawn_blocking(move || commit(&database, &batch, &HashMap::new(), cap))
            .await
            .map_err(|e| CacheError::Store(e.to_string()))??;
        Ok(existed)
    }
}

/// One transaction: the passes (`None` deletes) and the gates' records,
/// in the order they were written, the oldest evicted past `cap`.
fn commit(
    database: &Database,
    batch: &HashMap<IpAddr, Option<Entry>>,
    records: &PendingRecords,
    cap: u64,
) -> Result<(), CacheError> {
    let write = database.begin_write().map_err(store_error)?;
    if !records.is_empty() {
        let mut in_order: Vec<(&u64, &String, &String)> = records
            .iter()
            .map(|(key, (order, stored))| (order, key, stored))
            .collect();
        in_order.sort_unstable();
        let mut table = RecordTables::open(&write)?;
        for (_, key, stored) in in_order {
            table.insert(key, stored)?;
        }
        table.trim(cap)?;
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
mod tests;
