//! What doorman learns of a backend while it runs, kept by address across
//! reloads: its live sessions, its health and streak, and its EHLO. A
//! reload that keeps a backend hands its new pool the same [`BackendLive`],
//! so `max_connections`, `leastconn` and the connection gauge count the
//! sessions the old config started too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use super::Pool;

/// One backend's running state.
#[derive(Debug)]
pub struct BackendLive {
    /// Whether its EHLO announced STARTTLS at a good check (pinned once
    /// seen).
    pub(super) announces_starttls: AtomicBool,
    /// Its EHLO keywords at the last good check that read them.
    pub(super) keywords: Mutex<Option<Vec<String>>>,
    /// When a client's connection last reached its greeting (passive
    /// health: a backend that served one within a check interval is not
    /// probed).
    pub(super) served: Mutex<Option<std::time::Instant>>,
    /// Whether checks say it is up.
    pub(super) healthy: AtomicBool,
    /// Consecutive (successes, failures) of checks.
    pub(super) streak: Mutex<(u32, u32)>,
    /// Its client sessions now, under any config.
    pub(super) active: AtomicUsize,
}

impl Default for BackendLive {
    /// A backend not seen before: healthy until its first check.
    fn default() -> Self {
        Self {
            announces_starttls: AtomicBool::new(false),
            keywords: Mutex::new(None),
            served: Mutex::new(None),
            healthy: AtomicBool::new(true),
            streak: Mutex::new((0, 0)),
            active: AtomicUsize::new(0),
        }
    }
}

/// The running states a new pool takes over, by address.
pub type Carried = HashMap<SocketAddr, Arc<BackendLive>>;

impl Pool {
    /// The backends' running states, for the pool a reload builds.
    pub fn carried(&self) -> Carried {
        self.backends
            .iter()
            .map(|backend| (backend.config.address, Arc::clone(&backend.live)))
            .collect()
    }

    /// A reload replaced this pool: its checks stop. Its sessions go on,
    /// counted in the running states the new pool took over.
    pub fn retire(&self) {
        self.retired.cancel();
    }
}
