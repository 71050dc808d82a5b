//! The answer cache and concurrent lookups of a [`Dnsbl`].
//!
//! [`Dnsbl::start`] starts the queries for every zone at once and returns a
//! [`Pending`] that collects the answers as they come: the caller's task
//! drives them, so an answer wakes that task alone. The caller decides how
//! long to wait; answers that arrive later still land in the cache (a
//! `Pending` dropped with queries under way leaves them to a task of their
//! own). Answers are cached per query name for their TTL
//! clamped to `[min_ttl, max_ttl]`; failures are cached for `min_ttl` too, so
//! a dead list is not asked again by every client. Concurrent lookups of
//! the same name are merged: one query, every waiter gets its answer. An
//! optional shared [`AnswerStore`] (Redis, for a fleet) is asked before DNS
//! and told every fresh answer. Lookup errors are logged at most once per
//! zone per minute. The queries themselves, over hickory-resolver or
//! straight to a single name server, are `dns_asker`'s; `Pending` is
//! `pending`'s, re-exported here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use doorman_gate_api::AnswerStore;
use lru::LruCache;
use tokio::sync::oneshot;

use crate::dns_asker::DnsAsker;
pub use crate::pending::Pending;
use crate::pending::ZoneLookup;
use crate::query::query_name;
pub use crate::resolver::ResolverError;
use crate::score::Answer;
use crate::site::Site;
use crate::socket_reuse::SocketReuse;

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
    in_flight: Mutex<HashMap<String, Vec<oneshot::Sender<Answer>>>>,
    store: Option<Arc<dyn AnswerStore>>,
    observer: Option<Observer>,
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
                    let answer = this.answer(ip, &zone).await;
                    (zone, answer)
                }) as ZoneLookup
            })
            .collect();
        Pending::new(Arc::clone(self), lookups)
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
        let mut merged = Merged {
            in_flight: &self.in_flight,
            name: &name,
            told: false,
        };
        let answer = self.fetch(ip, zone, &name).await;
        merged.tell(&answer);
        answer
    }

    /// Asks the shared store, then DNS, and remembers the answer.
    async fn fetch(&self, ip: IpAddr, zone: &str, name: &str) -> Answer {
        if let Some(store) = &self.store {
            let stored = store.get(&store_key(name)).await;
            if let Some(answer) = stored.as_deref().and_then(Answer::decode) {
                self.remember(name, &answer);
                return answer;
            }
        }
        let started = Instant::now();
        let answer = self.asker.resolve(name).await;
        if let Some(observer) = &self.observer {
            observer(
                zone,
                started.elapsed(),
                matches!(answer, Answer::Failed { .. }),
            );
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
            store.put(&store_key(name), &answer.encode(), ttl);
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

/// The clients merged with one lookup. They are told its answer; if the
/// lookup is dropped first, they are let go (their wait ends as a failed
/// lookup) rather than left waiting.
struct Merged<'a> {
    in_flight: &'a Mutex<HashMap<String, Vec<oneshot::Sender<Answer>>>>,
    name: &'a str,
    told: bool,
}

impl Merged<'_> {
    fn take(&mut self) -> Vec<oneshot::Sender<Answer>> {
        self.in_flight
            .lock()
            .ok()
            .and_then(|mut in_flight| in_flight.remove(self.name))
            .unwrap_or_default()
    }

    fn tell(&mut self, answer: &Answer) {
        self.told = true;
        for waiter in self.take() {
            let _ = waiter.send(answer.clone());
        }
    }
}

impl Drop for Merged<'_> {
    fn drop(&mut self) {
        if !self.told {
            self.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns_asker::tests::reply;
    use tokio::net::UdpSocket;

    fn dnsbl(server: SocketAddr) -> Arc<Dnsbl> {
        Arc::new(
            Dnsbl::new(Settings {
                sites: Site::parse_list("bl.test").unwrap(),
                min_ttl: Duration::from_secs(1),
                max_ttl: Duration::from_secs(60),
                timeout: Duration::from_secs(5),
                nameservers: vec![server],
                cache_size: 10,
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn an_answer_after_the_client_left_still_lands_in_the_cache() {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = udp.local_addr().unwrap();
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&queries);
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = udp.send_to(&reply(&buf[..len], false), from).await;
            }
        });
        let dnsbl = dnsbl(server);
        let ip = "192.0.2.8".parse().unwrap();
        let mut pending = dnsbl.start(ip);
        // The client leaves before the answer comes.
        let waited = tokio::time::timeout(Duration::from_millis(50), pending.next()).await;
        assert!(waited.is_err(), "answered too soon");
        drop(pending);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = tokio::time::timeout(Duration::from_secs(5), dnsbl.start(ip).finish())
            .await
            .expect("the second lookup hung");
        assert!(matches!(
            again.answers().get("bl.test"),
            Some(Answer::Listed { .. })
        ));
        assert_eq!(
            queries.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the late answer was not cached"
        );
    }
}
