//! The answer cache and concurrent lookups of a [`Dnsbl`].
//!
//! [`Dnsbl::start`] starts the queries for every zone at once and returns a
//! [`Pending`] that collects the answers as they come: the caller's task
//! drives them, so an answer wakes that task alone. The caller decides how
//! long to wait. Concurrent lookups of the same name are merged
//! ([`InFlight`]): one query, every waiter gets its answer, and the query
//! lives as long as one of them waits: a client that leaves cancels the
//! lookups nobody else waits for. Answers are cached per query name for
//! their TTL clamped to `[min_ttl, max_ttl]`; failures for [`FAILED_TTL`]
//! only, so a dead list is not asked again by every client but a passing
//! fault is soon forgotten. An optional shared [`AnswerStore`] (Redis, for
//! a fleet) is asked before DNS and told every fresh answer, never a
//! failure: one instance's timeout must not make the whole fleet treat an
//! address as unlisted. Each query takes a place in the [`DnsBudget`] the
//! DNS gates share; a query without one is not sent and counts as failed
//! (no opinion), not cached. Lookup errors are logged at most once per
//! zone per minute. The queries themselves, over hickory-resolver or
//! straight to a single name server, are `dns_asker`'s; `Pending` is
//! `pending`'s, re-exported here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use doorman_gate_api::{AnswerStore, DnsBudget, EventCounter, Skipped};
use lru::LruCache;

use crate::dns_asker::DnsAsker;
use crate::merge::InFlight;
pub use crate::pending::Pending;
use crate::pending::ZoneLookup;
use crate::query::query_name;
pub use crate::resolver::ResolverError;
use crate::score::Answer;
use crate::site::Site;
use crate::socket_reuse::SocketReuse;

/// How often a zone's lookup errors may be logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How long a failed lookup is remembered (in this process only).
pub const FAILED_TTL: Duration = Duration::from_secs(5);

/// The settings of a [`Dnsbl`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The sites, in config order.
    pub sites: Vec<Site>,
    /// Lower clamp of cached answers' TTL.
    pub min_ttl: Duration,
    /// Upper clamp of cached answers' TTL.
    pub max_ttl: Duration,
    /// How long one query may take.
    pub timeout: Duration,
    /// Name servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// How many query answers the cache holds.
    pub cache_size: usize,
}

/// The shared store's key of a query name's answer.
fn store_key(name: &str) -> String {
    format!("dnsbl:{name}")
}

/// An empty answer cache for at most `capacity` names. Its table grows
/// with the answers it holds: `LruCache::new` would size (and, once a few
/// thousand names are spread over it, keep resident) the whole table.
fn bounded(capacity: NonZeroUsize) -> LruCache<String, (Answer, Instant)> {
    let mut cache = LruCache::unbounded();
    cache.resize(capacity);
    cache
}

/// The DNSBL/DNSWL gate: sites, resolver and answer cache.
pub struct Dnsbl {
    settings: Settings,
    zones: Vec<String>,
    /// The resolver, and the direct path when there is one name server.
    asker: DnsAsker,
    /// The UDP sockets both use.
    sockets: SocketReuse,
    cache: Mutex<LruCache<String, (Answer, Instant)>>,
    in_flight: Arc<InFlight<String, Answer>>,
    store: Option<Arc<dyn AnswerStore>>,
    observer: Option<Observer>,
    /// The queries in flight the DNS gates may have, and the counter of
    /// those skipped.
    budget: Arc<DnsBudget>,
    skipped: Option<EventCounter>,
    last_error_log: Mutex<HashMap<String, Instant>>,
}

/// Told the zone, the latency and whether it failed, of every DNS lookup
/// (for metrics).
pub type Observer = Arc<dyn Fn(&str, Duration, bool) + Send + Sync>;

impl Settings {
    /// Settings for `sites` with the shared resolver's and cache's.
    pub fn new(sites: Vec<Site>, shared: &doorman_gate_api::SectionContext) -> Self {
        let resolver = &shared.resolver;
        Self {
            sites,
            min_ttl: resolver.min_ttl,
            max_ttl: resolver.max_ttl,
            timeout: resolver.timeout,
            nameservers: resolver.nameservers.clone(),
            cache_size: shared.cache_size,
        }
    }
}

impl std::fmt::Debug for Dnsbl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dnsbl")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Dnsbl {
    /// Sets up the resolver. Needs a running tokio runtime only when queries
    /// are made.
    pub fn new(settings: Settings) -> Result<Self, ResolverError> {
        Self::with_store(settings, None)
    }

    /// As [`Dnsbl::new`], with a shared answer store asked before DNS.
    pub fn with_store(
        settings: Settings,
        store: Option<Arc<dyn AnswerStore>>,
    ) -> Result<Self, ResolverError> {
        let provider = SocketReuse::default();
        let asker = DnsAsker::new(&settings.nameservers, settings.timeout, provider.clone())?;
        let mut zones: Vec<String> = Vec::new();
        for site in &settings.sites {
            if !zones.contains(&site.domain) {
                zones.push(site.domain.clone());
            }
        }
        let capacity = NonZeroUsize::new(settings.cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            settings,
            zones,
            asker,
            sockets: provider,
            cache: Mutex::new(bounded(capacity)),
            in_flight: Arc::default(),
            store,
            observer: None,
            budget: DnsBudget::unlimited(),
            skipped: None,
            last_error_log: Mutex::new(HashMap::new()),
        })
    }

    /// Reports every DNS lookup's latency to `observer`.
    pub fn observed(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Counts each query against `budget`, and each one skipped for want
    /// of a place in `events` (as `dns_skipped`).
    pub fn budgeted(mut self, budget: Arc<DnsBudget>, events: EventCounter) -> Self {
        self.budget = budget;
        self.skipped = Some(events);
        self
    }

    /// The lookups in flight (merged across clients).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The sites, in config order.
    pub fn sites(&self) -> &[Site] {
        &self.settings.sites
    }

    /// The distinct zones queried.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// The settings it was made with.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Starts the queries for every zone at once.
    pub fn start(self: &Arc<Self>, ip: IpAddr) -> Pending {
        let lookups = self
            .zones
            .iter()
            .map(|zone| {
                let this = Arc::clone(self);
                let zone = zone.clone();
                Box::pin(async move {
                    let answer = this.answer(ip, zone.clone()).await;
                    (zone, answer)
                }) as ZoneLookup
            })
            .collect();
        Pending::new(Arc::clone(self), lookups)
    }

    /// The cached answer, or the lookup in flight, or a new one.
    async fn answer(self: Arc<Self>, ip: IpAddr, zone: String) -> Answer {
        let name = query_name(ip, &zone);
        if let Some(answer) = self.cached(&name) {
            return answer;
        }
        let this = Arc::clone(&self);
        let key = name.clone();
        let lookup = async move { this.fetch(ip, &zone, &key).await };
        self.in_flight.join(name, lookup).await
    }

    /// Asks the shared store, then DNS, and remembers the answer.
    async fn fetch(&self, ip: IpAddr, zone: &str, name: &str) -> Answer {
        if let Some(store) = &self.store {
            let stored = store.get(&store_key(name)).await;
            // A failure stored by an older doorman is no answer.
            let decoded = stored.as_deref().and_then(Answer::decode);
            if let Some(answer) = decoded.filter(|answer| !answer.is_failed()) {
                self.remember(name, &answer);
                return answer;
            }
        }
        let ticket = match self.budget.admit(ip) {
            Ok(ticket) => ticket,
            Err(skipped) => return self.skip(ip, &skipped),
        };
        let mut asking = Asking {
            dnsbl: self,
            zone,
            name,
            started: Instant::now(),
            answered: false,
        };
        let answer = self.asker.resolve(name).await;
        asking.answered = true;
        drop(ticket);
        if let Some(observer) = &self.observer {
            observer(zone, asking.started.elapsed(), answer.is_failed());
        }
        match &answer {
            Answer::Listed { addresses, .. } => {
                for address in addresses {
                    tracing::info!(
                        "addr {} listed by domain {zone} as {address}",
                        ip.to_canonical()
                    );
                }
            }
            Answer::Failed { error } => self.log_error(zone, name, error),
            Answer::NotListed { .. } => {}
        }
        let ttl = self.remember(name, &answer);
        if let Some(store) = self.store.as_ref().filter(|_| !answer.is_failed()) {
            store.put(&store_key(name), &answer.encode(), ttl);
        }
        answer
    }

    /// A lookup skipped for want of a place in the budget: counted, logged
    /// when the budget says so, and failed (no opinion), not cached.
    fn skip(&self, ip: IpAddr, skipped: &Skipped) -> Answer {
        if let Some(events) = &self.skipped {
            events("dns_skipped");
        }
        if let Some(count) = skipped.report {
            tracing::warn!(
                "warning: dnsbl: {count} DNS lookup(s) skipped in the last minute, the latest for {}: {skipped}",
                ip.to_canonical()
            );
        }
        Answer::Failed {
            error: skipped.to_string(),
        }
    }

    /// Caches an answer for its clamped TTL (failures for [`FAILED_TTL`]),
    /// and returns that TTL.
    fn remember(&self, name: &str, answer: &Answer) -> Duration {
        let ttl = match answer {
            Answer::Listed { ttl, .. } | Answer::NotListed { ttl } => (*ttl).clamp(
                self.settings.min_ttl,
                self.settings.max_ttl.max(self.settings.min_ttl),
            ),
            Answer::Failed { .. } => FAILED_TTL,
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(name.to_string(), (answer.clone(), Instant::now() + ttl));
        }
        ttl
    }

    /// Rebuilds the answer cache in fresh memory, without its expired
    /// answers, so that the allocations a flood scattered over the heap can
    /// go back to the system once freed; closes the idle DNS sockets.
    pub fn compact(&self) {
        self.sockets.close_idle();
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        let mut fresh = bounded(cache.cap());
        for (name, entry) in cache.iter().rev().filter(|(_, (_, expiry))| *expiry > now) {
            fresh.put(name.clone(), entry.clone());
        }
        *cache = fresh;
    }

    fn cached(&self, name: &str) -> Option<Answer> {
        let mut cache = self.cache.lock().ok()?;
        match cache.get(name) {
            Some((answer, expiry)) if *expiry > Instant::now() => Some(answer.clone()),
            Some(_) => {
                cache.pop(name);
                None
            }
            None => None,
        }
    }

    fn log_error(&self, zone: &str, name: &str, error: &str) {
        let Ok(mut last) = self.last_error_log.lock() else {
            return;
        };
        let now = Instant::now();
        if last
            .get(zone)
            .is_some_and(|at| now.duration_since(*at) < ERROR_LOG_INTERVAL)
        {
            return;
        }
        last.insert(zone.to_string(), now);
        tracing::warn!(
            "warning: dnsblog_query: lookup error for DNS query {}: {}",
            doorman_gate_api::printable(name),
            doorman_gate_api::printable(error)
        );
    }
}

/// A query under way. Dropped unanswered (its last client left), it
/// counts and is logged as a failed lookup, so that a dead name server
/// still shows although nobody waits for its timeouts.
struct Asking<'a> {
    dnsbl: &'a Dnsbl,
    zone: &'a str,
    name: &'a str,
    started: Instant,
    answered: bool,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let took = self.started.elapsed();
        if let Some(observer) = &self.dnsbl.observer {
            observer(self.zone, took, true);
        }
        let error = format!("no answer after {took:?}, when its last client left");
        self.dnsbl.log_error(self.zone, self.name, &error);
    }
}

#[cfg(test)]
mod tests;
