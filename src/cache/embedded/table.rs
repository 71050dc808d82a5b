//! The gates' records in the redb file, capped in number, oldest first.
//!
//! Three tables move together in every write transaction:
//! - `records`: key -> `<expiry seconds>;<value>`;
//! - `record_age`: write order -> key, so the oldest write is the first
//!   entry and eviction is one `pop_first`;
//! - `record_seq`: key -> write order, so a rewritten key moves to the
//!   young end instead of leaving a stale age behind.
//!
//! The write order is taken inside the transaction (the last age + 1), so
//! the `doorman cache` command writing the same file in redb's multi-writer
//! mode cannot break the order.
//!
//! The backends' runtime state (`director:` keys, one per backend: an
//! operator's drain, weight and flushes) is kept outside the order and the
//! cap: a flood of greylist triplets or routed users must not evict a
//! drain, which then would not survive the next restart.

use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};

use super::store_error;
use crate::cache::CacheError;
use crate::director::STATE_PREFIX;

/// Whether `key` is kept outside the order and the cap.
fn uncapped(key: &str) -> bool {
    key.starts_with(STATE_PREFIX)
}

/// The table of gates' records: key -> `<expiry seconds>;<value>`.
pub(super) const RECORDS: TableDefinition<&str, &str> = TableDefinition::new("records");
/// Write order -> key: the first entry is the oldest record.
const AGE: TableDefinition<u64, &str> = TableDefinition::new("record_age");
/// Key -> write order.
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("record_seq");

/// The three tables of one write transaction.
pub(super) struct RecordTables<'txn> {
    records: Table<'txn, &'static str, &'static str>,
    age: Table<'txn, u64, &'static str>,
    seq: Table<'txn, &'static str, u64>,
}

impl<'txn> RecordTables<'txn> {
    /// Opens (or creates) the tables in `write`.
    pub(super) fn open(write: &'txn WriteTransaction) -> Result<Self, CacheError> {
        Ok(Self {
            records: write.open_table(RECORDS).map_err(store_error)?,
            age: write.open_table(AGE).map_err(store_error)?,
            seq: write.open_table(SEQ).map_err(store_error)?,
        })
    }

    /// The next write order: one past the youngest record's.
    fn next_age(&self) -> Result<u64, CacheError> {
        Ok(self
            .age
            .last()
            .map_err(store_error)?
            .map_or(0, |(age, _)| age.value().saturating_add(1)))
    }

    /// Writes (or rewrites) `key`, as the youngest record (unless it is
    /// kept outside the cap).
    pub(super) fn insert(&mut self, key: &str, stored: &str) -> Result<(), CacheError> {
        if uncapped(key) {
            self.forget_age(key)?;
            self.records.insert(key, stored).map_err(store_error)?;
            return Ok(());
        }
        let age = self.next_age()?;
        self.forget_age(key)?;
        self.records.insert(key, stored).map_err(store_error)?;
        self.age.insert(age, key).map_err(store_error)?;
        self.seq.insert(key, age).map_err(store_error)?;
        Ok(())
    }

    /// Removes `key`'s place in the write order.
    fn forget_age(&mut self, key: &str) -> Result<(), CacheError> {
        let old = self
            .seq
            .remove(key)
            .map_err(store_error)?
            .map(|a| a.value());
        if let Some(old) = old {
            self.age.remove(old).map_err(store_error)?;
        }
        Ok(())
    }

    /// Removes `key` from the three tables.
    fn remove(&mut self, key: &str) -> Result<(), CacheError> {
        self.forget_age(key)?;
        self.records.remove(key).map_err(store_error)?;
        Ok(())
    }

    /// Evicts the oldest records until at most `cap` remain in the order
    /// (the uncapped ones not counted); how many went.
    pub(super) fn trim(&mut self, cap: u64) -> Result<u64, CacheError> {
        let mut evicted = 0;
        while self.seq.len().map_err(store_error)? > cap {
            let oldest = self
                .age
                .pop_first()
                .map_err(store_error)?
                .map(|(_, key)| key.value().to_string());
            let Some(key) = oldest else {
                break;
            };
            self.seq.remove(key.as_str()).map_err(store_error)?;
            self.records.remove(key.as_str()).map_err(store_error)?;
            evicted += 1;
        }
        Ok(evicted)
    }

    /// How many records are kept outside the order and the cap.
    fn uncapped_count(&self) -> Result<u64, CacheError> {
        let mut count = 0;
        for row in self.records.range(STATE_PREFIX..).map_err(store_error)? {
            let (key, _) = row.map_err(store_error)?;
            if !uncapped(key.value()) {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// Gives the records an older doorman wrote (before the write order
    /// existed) a place in it: after every ordered record, the soonest to
    /// expire first; and takes the uncapped ones out of it.
    pub(super) fn adopt_unordered(&mut self) -> Result<(), CacheError> {
        let ordered = self.seq.len().map_err(store_error)?;
        if self.records.len().map_err(store_error)? == ordered + self.uncapped_count()? {
            return Ok(());
        }
        let mut unordered: Vec<(u64, String)> = Vec::new();
        let mut ordered_uncapped: Vec<String> = Vec::new();
        for row in self.records.iter().map_err(store_error)? {
            let (key, stored) = row.map_err(store_error)?;
            let in_order = self.seq.get(key.value()).map_err(store_error)?.is_some();
            if uncapped(key.value()) {
                if in_order {
                    ordered_uncapped.push(key.value().to_string());
                }
            } else if !in_order {
                unordered.push((expiry_of(stored.value()), key.value().to_string()));
            }
        }
        for key in ordered_uncapped {
            self.forget_age(&key)?;
        }
        unordered.sort();
        let mut age = self.next_age()?;
        for (_, key) in unordered {
            self.age.insert(age, key.as_str()).map_err(store_error)?;
            self.seq.insert(key.as_str(), age).map_err(store_error)?;
            age = age.saturating_add(1);
        }
        Ok(())
    }

    /// Drops the records that expired at `now` (epoch seconds); how many.
    pub(super) fn drop_expired(&mut self, now: u64) -> Result<u64, CacheError> {
        let mut expired = Vec::new();
        for row in self.records.iter().map_err(store_error)? {
            let (key, stored) = row.map_err(store_error)?;
            if expiry_of(stored.value()) <= now {
                expired.push(key.value().to_string());
            }
        }
        for key in &expired {
            self.remove(key)?;
        }
        Ok(expired.len() as u64)
    }
}

/// A stored record's expiry (epoch seconds); 0 (expired) when unreadable.
fn expiry_of(stored: &str) -> u64 {
    stored
        .split_once(';')
        .and_then(|(expiry, _)| expiry.parse::<u64>().ok())
        .unwrap_or(0)
}
