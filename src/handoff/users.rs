//! Users' backends, for clusters balanced by recipient (Dovecot's
//! director, for SMTP): a user's backend is the first usable one its key
//! ranks by rendezvous hashing, unless one is remembered. The assignment is
//! remembered in the cache store for `user_expire` after its last use, so a
//! backend that comes back, or a weight change, does not move a user in the
//! middle of a burst of mail; with Redis the whole fleet shares it. A record
//! keeps the backend's flush count: a flush forgets every assignment to the
//! backend at once, fleet-wide. When the store cannot answer, the hash
//! alone decides, and that is logged once.
//! It touches only the record store and the balancer's ranking.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use doorman_gate_api::{EventCounter, RecordStore};

use crate::log;

/// A user to route, and how long its assignment lasts.
#[derive(Clone, Copy, Debug)]
pub struct UserRoute<'a> {
    /// The cluster balanced by recipient.
    pub cluster: &'a str,
    /// The user's key (see `config::RecipientKey`).
    pub user: &'a str,
    /// `[cluster.NAME] user_expire`.
    pub expire: Duration,
}

/// The remembered assignments.
pub struct UserMap {
    store: Arc<dyn RecordStore>,
    store_down: AtomicBool,
    /// Counts `assigned`, `moved` and `split` (`doorman_user_routes_total`).
    events: EventCounter,
}

impl std::fmt::Debug for UserMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserMap").finish_non_exhaustive()
    }
}

impl UserMap {
    /// Assignments kept in `store`, counted by `events`.
    pub fn new(store: Arc<dyn RecordStore>, events: EventCounter) -> Self {
        Self {
            store,
            store_down: AtomicBool::new(false),
            events,
        }
    }

    /// Counts one routing event: `assigned` (a user got a backend it was
    /// not remembered on), `moved` (by an operator), `split` (a RCPT sent
    /// to a transaction of its own).
    pub fn count(&self, event: &'static str) {
        (self.events)(event);
    }

    /// The store's key of a user's backend.
    fn key(route: &UserRoute<'_>) -> String {
        format!("user:{}:{}", route.cluster, route.user)
    }

    /// The backend remembered for the user, if any (and if the store
    /// answers), unless that backend was flushed since: `flushes` gives a
    /// backend's fleet-wide flush count, which the record keeps.
    pub async fn remembered(
        &self,
        route: &UserRoute<'_>,
        flushes: impl Fn(SocketAddr) -> u64,
    ) -> Option<SocketAddr> {
        match self.store.get(&Self::key(route)).await {
            Ok(found) => {
                self.store_answers();
                let found = found?;
                let (address, at) = found.split_once(';').unwrap_or((&found, "0"));
                let address: SocketAddr = address.parse().ok()?;
                let at: u64 = at.parse().ok()?;
                (flushes(address) <= at).then_some(address)
            }
            Err(_) => {
                self.store_fails();
                None
            }
        }
    }

    /// Remembers `backend` (flushed `flushes` times so far) for the user
    /// for `expire` from now.
    pub async fn remember(&self, route: &UserRoute<'_>, backend: SocketAddr, flushes: u64) {
        let stored = self
            .store
            .put(
                &Self::key(route),
                &format!("{backend};{flushes}"),
                route.expire,
            )
            .await;
        match stored {
            Ok(()) => self.store_answers(),
            Err(_) => self.store_fails(),
        }
    }

    /// Moves the remembered backend (when usable) to the front of
    /// `order`, the balancer's ranking of the usable backends' indices;
    /// logs a user whose backend (the remembered one, else `home`, the one
    /// its key ranks first when every backend is up) cannot take it now.
    pub async fn reorder(
        &self,
        route: &UserRoute<'_>,
        order: &mut [usize],
        address_of: impl Fn(usize) -> SocketAddr,
        flushes: impl Fn(SocketAddr) -> u64,
        home: Option<SocketAddr>,
    ) {
        let remembered = self.remembered(route, flushes).await;
        if remembered.is_none() {
            self.count("assigned");
        }
        let Some(wanted) = remembered.or(home) else {
            return;
        };
        match order.iter().position(|&i| address_of(i) == wanted) {
            Some(position) => order[..=position].rotate_right(1),
            None => {
                if let Some(&next) = order.first() {
                    log::user_moved(route.user, wanted, address_of(next));
                }
            }
        }
    }

    fn store_fails(&self) {
        if !self.store_down.swap(true, Ordering::Relaxed) {
            log::user_store_down();
        }
    }

    fn store_answers(&self) {
        self.store_down.store(false, Ordering::Relaxed);
    }
}
