//! The reverse-DNS gate, after Haraka's `fcrdns`: during the greet wait it
//! looks up the client's PTR names and confirms each one forward (its A or
//! AAAA records hold the client address), and scores what it finds with
//! configured weights, which add up with the DNSBL weights:
//!
//! - no PTR name at all (NXDOMAIN or an empty answer): `no_ptr`;
//! - PTR names, none of which resolves back: `not_confirmed`;
//! - a confirmed name that looks generic (it embeds the address, or a pool
//!   word such as `dsl` or `dynamic`; see [`generic`]): `generic`.
//!
//! The findings are exclusive. A lookup that fails (a timeout, SERVFAIL, a
//! dead server, no place in the DNS budget) is no opinion: it adds
//! nothing, is remembered for [`FAILED_TTL`] only (never in a pass), and
//! its error is logged at most once a minute. Answers are cached per
//! address for their TTL clamped to `[min_ttl, max_ttl]`.
//!
//! One address is looked up once at a time: the clients that connect from
//! it meanwhile wait for the same lookup, which is dropped when the last
//! of them leaves (at the end of its greet wait, or at its hang-up).
//! The forward lookups run at once, so a lookup takes at most two query
//! timeouts, and never outlives the greet waits of its clients.
//!
//! - `check` (crate-private): one client's check in the greet wait.
//! - [`generic`]: the generic-name test, sans-IO.
//! - [`lookup`]: the PTR and forward lookups.
//! - [`section`]: the `[rdns]` section, which builds the gate.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod check;
pub mod generic;
pub mod lookup;
pub mod section;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use check::{Check, Started};
use doorman_dnsbl::merge::InFlight;
use doorman_dnsbl::resolver::{Resolver, ResolverError, Servers};
use doorman_dnsbl::socket_reuse::SocketReuse;
use doorman_gate_api::{
    printable, Client, DnsBudget, DnsTicket, EventCounter, Finding, Gate, Waiting,
};
use lru::LruCache;

pub use lookup::{Failed, Found, Outcome};
pub use section::RdnsSection;

/// How often lookup errors may be logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How long a failed lookup is remembered.
pub const FAILED_TTL: Duration = Duration::from_secs(5);

/// What one address's lookup came to.
type Checked = Result<Outcome, Failed>;

/// What each finding weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    /// No PTR name.
    pub no_ptr: i32,
    /// No PTR name resolves back to the client.
    pub not_confirmed: i32,
    /// The confirmed name looks generic.
    pub generic: i32,
}

/// The gate's settings; the resolver's are the DNSBL gate's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// What each finding weighs.
    pub weights: Weights,
    /// Lower clamp of cached answers' TTL.
    pub min_ttl: Duration,
    /// Upper clamp of cached answers' TTL.
    pub max_ttl: Duration,
    /// How long one query may take.
    pub timeout: Duration,
    /// Name servers to ask; empty: the system's.
    pub nameservers: Vec<SocketAddr>,
    /// How many addresses the answer cache holds.
    pub cache_size: usize,
}

/// The reverse-DNS gate.
pub struct RdnsGate {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    resolver: Resolver,
    /// The resolver's UDP sockets, whose idle ones `compact` closes.
    sockets: SocketReuse,
    cache: Mutex<LruCache<IpAddr, (Checked, Instant)>>,
    /// The lookups in flight, one per address.
    in_flight: Arc<InFlight<IpAddr, Checked>>,
    /// The queries in flight every DNS gate may have.
    budget: Arc<DnsBudget>,
    /// Counts the queries skipped for want of a place in the budget.
    events: Option<EventCounter>,
    last_error_log: Mutex<Option<Instant>>,
}

/// An empty answer cache whose table grows with what it holds.
fn bounded(capacity: NonZeroUsize) -> LruCache<IpAddr, (Checked, Instant)> {
    let mut cache = LruCache::unbounded();
    cache.resize(capacity);
    cache
}

impl RdnsGate {
    /// Sets up the resolver. Needs a running tokio runtime only when
    /// lookups are made.
    pub fn new(settings: Settings) -> Result<Self, ResolverError> {
        let sockets = SocketReuse::default();
        let resolver =
            Servers::new(&settings.nameservers)?.resolver(settings.timeout, sockets.clone())?;
        let capacity = NonZeroUsize::new(settings.cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                resolver,
                sockets,
                cache: Mutex::new(bounded(capacity)),
                in_flight: Arc::default(),
                budget: DnsBudget::unlimited(),
                events: None,
                last_error_log: Mutex::new(None),
            }),
        })
    }

    /// Counts each query against `budget`, and each one skipped for want
    /// of a place in `events` (as `dns_skipped`). Before the gate serves.
    pub fn budgeted(mut self, budget: Arc<DnsBudget>, events: EventCounter) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.budget = budget;
            inner.events = Some(events);
        }
        self
    }

    /// The lookups in flight (merged across clients).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.len()
    }
}

impl Inner {
    /// The cached result for `ip`, or the lookup in flight, or a new one.
    fn start(self: &Arc<Self>, ip: IpAddr) -> Started {
        if let Some(checked) = self.cached(ip) {
            return Started::Cached(checked);
        }
        let this = Arc::clone(self);
        Started::Joined(self.in_flight.join(ip, async move { this.check(ip).await }))
    }

    /// Looks `ip` up, within two query timeouts (the PTR query, then the
    /// forward ones at once), and remembers the result.
    async fn check(&self, ip: IpAddr) -> Checked {
        let overall = self.settings.timeout * 2;
        let admit = || self.admit(ip);
        let mut asking = Asking {
            inner: self,
            ip,
            started: Instant::now(),
            answered: false,
        };
        let checked = tokio::time::timeout(overall, lookup::check(&self.resolver, ip, &admit))
            .await
            .unwrap_or_else(|_| Err(Failed(format!("timeout after {overall:?}"))));
        asking.answered = true;
        if let Err(Failed(error)) = &checked {
            self.log_error(ip, error);
        }
        self.remember(ip, &checked);
        checked
    }

    /// A place in the DNS budget for one query about `ip`; a query without
    /// one is counted, logged when the budget says so, and fails.
    fn admit(&self, ip: IpAddr) -> Result<DnsTicket, Failed> {
        self.budget.admit(ip).map_err(|skipped| {
            if let Some(events) = &self.events {
                events("dns_skipped");
            }
            if let Some(count) = skipped.report {
                tracing::warn!(
                    "warning: rdns: {count} DNS lookup(s) skipped in the last minute, the latest for {}: {skipped}",
                    ip.to_canonical()
                );
            }
            Failed(skipped.to_string())
        })
    }

    fn cached(&self, ip: IpAddr) -> Option<Checked> {
        let mut cache = self.cache.lock().ok()?;
        match cache.get(&ip) {
            Some((checked, expiry)) if *expiry > Instant::now() => Some(checked.clone()),
            Some(_) => {
                cache.pop(&ip);
                None
            }
            None => None,
        }
    }

    fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(
            self.settings.min_ttl,
            self.settings.max_ttl.max(self.settings.min_ttl),
        )
    }

    /// Caches an answer for its clamped TTL, a failure for [`FAILED_TTL`].
    fn remember(&self, ip: IpAddr, checked: &Checked) {
        let ttl = match checked {
            Ok(outcome) => self.clamp(outcome.ttl),
            Err(_) => FAILED_TTL,
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(ip, (checked.clone(), Instant::now() + ttl));
        }
    }

    fn log_error(&self, ip: IpAddr, error: &str) {
        let Ok(mut last) = self.last_error_log.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < ERROR_LOG_INTERVAL) {
            return;
        }
        *last = Some(now);
        tracing::warn!("warning: rdns lookup error for {ip}: {}", printable(error));
    }

    fn findings(&self, outcome: &Outcome) -> Vec<Finding> {
        let weights = self.settings.weights;
        let (name, weight) = match outcome.found {
            Found::NoPtr => ("rdns:no_ptr", weights.no_ptr),
            Found::NotConfirmed { .. } => ("rdns:not_confirmed", weights.not_confirmed),
            Found::Generic { .. } => ("rdns:generic", weights.generic),
            Found::Confirmed { .. } => return Vec::new(),
        };
        vec![Finding {
            name: name.to_string(),
            weight,
        }]
    }

    fn compact(&self) {
        self.sockets.close_idle();
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        let mut fresh = bounded(cache.cap());
        for (ip, entry) in cache.iter().rev().filter(|(_, (_, expiry))| *expiry > now) {
            fresh.put(*ip, entry.clone());
        }
        *cache = fresh;
    }
}

impl Gate for RdnsGate {
    fn has_command_hook(&self) -> bool {
        false
    }

    fn has_wait_hook(&self) -> bool {
        true
    }

    fn wait(&self, client: &Client) -> Option<Box<dyn Waiting>> {
        let (lookup, result) = match self.inner.start(client.ip()) {
            Started::Cached(checked) => (None, Some(checked)),
            Started::Joined(lookup) => (Some(lookup), None),
        };
        let mut check = Check {
            inner: Arc::clone(&self.inner),
            client: client.endpoint(),
            lookup,
            result: None,
        };
        if let Some(checked) = result {
            check.finish(checked);
        }
        Some(Box::new(check))
    }

    fn compact(&self) {
        self.inner.compact();
    }
}

/// A lookup under way. Dropped unanswered (its last client left), it is
/// logged as a failed one, so that a dead name server still shows.
struct Asking<'a> {
    inner: &'a Inner,
    ip: IpAddr,
    started: Instant,
    answered: bool,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let took = self.started.elapsed();
            let error = format!("no answer after {took:?}, when its last client left");
            self.inner.log_error(self.ip, &error);
        }
    }
}

#[cfg(test)]
mod tests;
