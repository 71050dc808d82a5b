//! Lookups over hickory-resolver, with a bounded answer cache.
//!
//! [`Dnsbl::start`] sends the queries for every zone at once, each in its
//! own task, and returns a [`Pending`] that collects the answers as they
//! come. The caller decides how long to wait; answers that arrive later
//! still land in the cache. Answers are cached per query name for their TTL
//! clamped to `[min_ttl, max_ttl]`; failures are cached for `min_ttl` too, so
//! a dead list is not asked again by every client. Concurrent lookups of
//! the same name are merged: one query, every waiter gets its answer. An
//! optional shared [`AnswerStore`] (Redis, for a fleet) is asked before DNS
//! and told every fresh answer. Lookup errors are logged at most once per
//! zone per minute.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use lru::LruCache;
use tokio::sync::{mpsc, oneshot};

use crate::query::query_name;
pub use crate::resolver::ResolverError;
use crate::score::{score, Answer, Score};
use crate::site::Site;

/// How often a zone's lookup errors may be logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

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

/// A store of DNS answers shared by several doorman instances, asked before
/// DNS. Implementations must answer quickly (a short deadline) and treat
/// their own failures as "no answer".
pub trait AnswerStore: Send + Sync + std::fmt::Debug {
    /// The stored answer for a query name, if any.
    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Answer>> + Send + 'a>>;
    /// Stores an answer for `ttl`.
    fn put(&self, name: &str, answer: &Answer, ttl: Duration);
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
    resolver: TokioResolver,
    cache: Mutex<LruCache<String, (Answer, Instant)>>,
    in_flight: Mutex<HashMap<String, Vec<oneshot::Sender<Answer>>>>,
    store: Option<Arc<dyn AnswerStore>>,
    observer: Option<Observer>,
    last_error_log: Mutex<HashMap<String, Instant>>,
}

/// Told the zone and the latency of every DNS lookup (for metrics).
pub type Observer = Arc<dyn Fn(&str, Duration) + Send + Sync>;

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
        let resolver = crate::resolver::build(&settings.nameservers, settings.timeout)?;
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
            resolver,
            cache: Mutex::new(bounded(capacity)),
            in_flight: Mutex::new(HashMap::new()),
            store,
            observer: None,
            last_error_log: Mutex::new(HashMap::new()),
        })
    }

    /// Reports every DNS lookup's latency to `observer`.
    pub fn observed(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The sites, in config order.
    pub fn sites(&self) -> &[Site] {
        &self.settings.sites
    }

    /// The distinct zones queried.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// Starts the queries for every zone at once.
    pub fn start(self: &Arc<Self>, ip: IpAddr) -> Pending {
        let (sender, receiver) = mpsc::channel(self.zones.len().max(1));
        for zone in &self.zones {
            let this = Arc::clone(self);
            let zone = zone.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let answer = this.answer(ip, &zone).await;
                let _ = sender.send((zone, answer)).await;
            });
        }
        Pending {
            dnsbl: Arc::clone(self),
            receiver,
            answers: HashMap::new(),
        }
    }

    async fn answer(&self, ip: IpAddr, zone: &str) -> Answer {
        let name = query_name(ip, zone);
        if let Some(answer) = self.cached(&name) {
            return answer;
        }
        let waiting = match self.in_flight.lock() {
            Ok(mut in_flight) => match in_flight.get_mut(&name) {
                Some(waiters) => {
                    let (sender, receiver) = oneshot::channel();
                    waiters.push(sender);
                    Some(receiver)
                }
                None => {
                    in_flight.insert(name.clone(), Vec::new());
                    None
                }
            },
            Err(_) => None,
        };
        if let Some(receiver) = waiting {
            return receiver.await.unwrap_or_else(|_| Answer::Failed {
                error: "merged lookup abandoned".into(),
            });
        }
        let answer = self.fetch(ip, zone, &name).await;
        let waiters = self
            .in_flight
            .lock()
            .ok()
            .and_then(|mut in_flight| in_flight.remove(&name))
            .unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
        answer
    }

    /// Asks the shared store, then DNS, and remembers the answer.
    async fn fetch(&self, ip: IpAddr, zone: &str, name: &str) -> Answer {
        if let Some(store) = &self.store {
            if let Some(answer) = store.get(name).await {
                self.remember(name, &answer);
                return answer;
            }
        }
        let started = Instant::now();
        let answer = self.resolve(name).await;
        if let Some(observer) = &self.observer {
            observer(zone, started.elapsed());
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
        if let Some(store) = &self.store {
            store.put(name, &answer, ttl);
        }
        answer
    }

    /// Caches an answer for its clamped TTL (failures for `min_ttl`), and
    /// returns that TTL.
    fn remember(&self, name: &str, answer: &Answer) -> Duration {
        let ttl = match answer {
            Answer::Listed { ttl, .. } | Answer::NotListed { ttl } => *ttl,
            Answer::Failed { .. } => self.settings.min_ttl,
        }
        .clamp(
            self.settings.min_ttl,
            self.settings.max_ttl.max(self.settings.min_ttl),
        );
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(name.to_string(), (answer.clone(), Instant::now() + ttl));
        }
        ttl
    }

    /// Rebuilds the answer cache in fresh memory, without its expired
    /// answers, so that the allocations a flood scattered over the heap can
    /// go back to the system once freed.
    pub fn compact(&self) {
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

    async fn resolve(&self, name: &str) -> Answer {
        let lookup = tokio::time::timeout(self.settings.timeout, self.resolver.ipv4_lookup(name));
        match lookup.await {
            Err(_) => Answer::Failed {
                error: format!("timeout after {:?}", self.settings.timeout),
            },
            Ok(Ok(lookup)) => {
                let mut ttl = u32::MAX;
                let mut addresses = Vec::new();
                for record in lookup.answers() {
                    if let RData::A(a) = &record.data {
                        addresses.push(a.0);
                        ttl = ttl.min(record.ttl);
                    }
                }
                Answer::from_addresses(addresses, Duration::from_secs(u64::from(ttl)))
            }
            Ok(Err(error)) if error.is_nx_domain() || error.is_no_records_found() => {
                let ttl = error
                    .into_soa()
                    .map_or(0, |soa| soa.ttl.min(soa.data.minimum));
                Answer::NotListed {
                    ttl: Duration::from_secs(u64::from(ttl)),
                }
            }
            Ok(Err(error)) => Answer::Failed {
                error: error.to_string(),
            },
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
        tracing::warn!("warning: dnsblog_query: lookup error for DNS query {name}: {error}");
    }
}

/// The answers for one address as they arrive.
#[derive(Debug)]
pub struct Pending {
    dnsbl: Arc<Dnsbl>,
    receiver: mpsc::Receiver<(String, Answer)>,
    answers: HashMap<String, Answer>,
}

impl Pending {
    /// Waits for the next answer; `false` once every zone has answered.
    /// Cancel-safe: no answer is lost if the wait is abandoned.
    pub async fn next(&mut self) -> bool {
        if self.is_complete() {
            return false;
        }
        match self.receiver.recv().await {
            Some((zone, answer)) => {
                self.answers.insert(zone, answer);
                true
            }
            None => false,
        }
    }

    /// Whether every zone has answered.
    pub fn is_complete(&self) -> bool {
        self.answers.len() >= self.dnsbl.zones.len()
    }

    /// The answers so far, by zone.
    pub fn answers(&self) -> &HashMap<String, Answer> {
        &self.answers
    }

    /// The sites that match the answers so far, in config order.
    pub fn matching_sites(&self) -> Vec<&Site> {
        self.dnsbl
            .settings
            .sites
            .iter()
            .filter(|site| match self.answers.get(&site.domain) {
                Some(Answer::Listed { addresses, .. }) => site.matches(addresses),
                _ => false,
            })
            .collect()
    }

    /// The score of the answers so far.
    pub fn score(&self) -> Score {
        score(
            &self.dnsbl.settings.sites,
            &self.answers,
            self.dnsbl.zones.len(),
            self.dnsbl.settings.min_ttl,
            self.dnsbl.settings.max_ttl,
        )
    }

    /// Waits for every answer (each query has its own timeout).
    pub async fn finish(mut self) -> Self {
        while self.next().await {}
        self
    }
}
