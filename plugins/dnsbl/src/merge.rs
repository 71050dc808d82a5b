//! Lookups in flight, merged across clients: [`InFlight::join`] hands the
//! clients that want the same key the same lookup, so one query serves
//! them all.
//!
//! The lookup is driven by whichever of its clients' tasks polls it, and
//! lives exactly as long as one of them waits: the table holds it weakly,
//! so when the last client leaves (its wait dropped at the end of the greet
//! wait, or at its hang-up), the lookup is dropped with its query, its
//! socket and its place in the [`DnsBudget`](doorman_gate_api::DnsBudget).
//! Nothing outlives the clients that asked.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};

/// One lookup, shared by the clients that wait for it.
pub type Joined<V> = Shared<BoxFuture<'static, V>>;

/// The lookups in flight, by key.
pub struct InFlight<K, V> {
    table: Mutex<HashMap<K, WeakShared<BoxFuture<'static, V>>>>,
}

impl<K, V> Default for InFlight<K, V> {
    fn default() -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, V> std::fmt::Debug for InFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("lookups", &self.lock().len())
            .finish()
    }
}

impl<K, V> InFlight<K, V> {
    /// Locks the table; a panic elsewhere while it was held leaves a plain
    /// table, still fit to use.
    fn lock(&self) -> MutexGuard<'_, HashMap<K, WeakShared<BoxFuture<'static, V>>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many lookups are in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no lookup is in flight.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl<K, V> InFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The lookup of `key` in flight, or a new one, `lookup`, which the
    /// clients that join it before it ends share.
    pub fn join<F>(self: &Arc<Self>, key: K, lookup: F) -> Joined<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut table = self.lock();
        if let Some(joined) = table.get(&key).and_then(WeakShared::upgrade) {
            return joined;
        }
        let mut leaving = Leaving {
            in_flight: Arc::clone(self),
            key: key.clone(),
            done: false,
        };
        let joined = async move {
            let value = lookup.await;
            leaving.done = true;
            drop(leaving);
            value
        }
        .boxed()
        .shared();
        if let Some(weak) = joined.downgrade() {
            table.insert(key, weak);
        }
        joined
    }
}

/// Takes a lookup out of the table when it ends, or when it is dropped
/// because its last client left.
struct Leaving<K: Hash + Eq, V> {
    in_flight: Arc<InFlight<K, V>>,
    key: K,
    done: bool,
}

impl<K: Hash + Eq, V> Drop for Leaving<K, V> {
    fn drop(&mut self) {
        let mut table = self.in_flight.lock();
        // The entry is this lookup's while it can be upgraded (a dropped
        // lookup's place may have been taken by a new one meanwhile).
        let entry = table.get(&self.key).and_then(WeakShared::upgrade);
        if self.done || entry.is_none() {
            table.remove(&self.key);
        }
        drop(table);
        // Dropped outside the lock: it may be the last handle of another
        // lookup, whose own `Leaving` takes the lock.
        drop(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn clients_share_one_lookup_which_the_last_to_leave_drops() {
        let in_flight: Arc<InFlight<u32, u32>> = Arc::default();
        let started = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let lookup = || {
            let (started, dropped) = (Arc::clone(&started), Arc::clone(&dropped));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                struct Count(Arc<AtomicUsize>);
                impl Drop for Count {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _count = Count(dropped);
                tokio::time::sleep(Duration::from_millis(100)).await;
                7
            }
        };
        let first = in_flight.join(1, lookup());
        let second = in_flight.join(1, lookup());
        assert_eq!(in_flight.len(), 1);
        // The first client leaves: the second still gets the answer.
        drop(first);
        assert_eq!(second.await, 7);
        assert_eq!(started.load(Ordering::SeqCst), 1, "two lookups for one key");
        assert!(in_flight.is_empty());
        // Both leave before the answer: the lookup is dropped.
        let third = in_flight.join(1, lookup());
        let fourth = in_flight.join(1, lookup());
        let _ = tokio::time::timeout(Duration::from_millis(10), third.clone()).await;
        drop((third, fourth));
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            2,
            "a lookup outlived its clients"
        );
        assert!(in_flight.is_empty());
    }
}
