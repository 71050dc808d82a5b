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
//! dead server) is no opinion: it adds nothing, is not cached, and its
//! error is logged at most once a minute. Answers are cached per address
//! for their TTL clamped to `[min_ttl, max_ttl]`.
//!
//! - [`generic`]: the generic-name test, sans-IO.
//! - [`lookup`]: the PTR and forward lookups.
//! - [`section`]: the `[rdns]` section, which builds the gate.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod generic;
pub mod lookup;
pub mod section;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use doorman_dnsbl::resolver::{Resolver, ResolverError, Servers};
use doorman_dnsbl::socket_reuse::SocketReuse;
use doorman_gate_api::{
    printable, Client, ClientNames, Endpoint, Finding, Gate, GateFuture, Score, Verdict, Waiting,
};
use lru::LruCache;
use tokio::sync::oneshot;

pub use lookup::{Failed, Found, Outcome};
pub use section::RdnsSection;

/// How often lookup errors may be logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

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
    cache: Mutex<LruCache<IpAddr, (Outcome, Instant)>>,
    last_error_log: Mutex<Option<Instant>>,
}

/// An empty answer cache whose table grows with what it holds.
fn bounded(capacity: NonZeroUsize) -> LruCache<IpAddr, (Outcome, Instant)> {
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
                last_error_log: Mutex::new(None),
            }),
        })
    }
}

impl Inner {
    async fn check(&self, ip: IpAddr) -> Result<Outcome, Failed> {
        if let Some(outcome) = self.cached(ip) {
            return Ok(outcome);
        }
        let overall = self.settings.timeout * 3;
        let outcome = match tokio::time::timeout(overall, lookup::check(&self.resolver, ip)).await {
            Ok(result) => result,
            Err(_) => Err(Failed(format!("timeout after {overall:?}"))),
        };
        match &outcome {
            Ok(found) => self.remember(ip, found),
            Err(Failed(error)) => self.log_error(ip, error),
        }
        outcome
    }

    fn cached(&self, ip: IpAddr) -> Option<Outcome> {
        let mut cache = self.cache.lock().ok()?;
        match cache.get(&ip) {
            Some((outcome, expiry)) if *expiry > Instant::now() => Some(outcome.clone()),
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

    fn remember(&self, ip: IpAddr, outcome: &Outcome) {
        let expiry = Instant::now() + self.clamp(outcome.ttl);
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(ip, (outcome.clone(), expiry));
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
        let inner = Arc::clone(&self.inner);
        let (sender, receiver) = oneshot::channel();
        let ip = client.ip();
        tokio::spawn(async move {
            let _ = sender.send(inner.check(ip).await);
        });
        Some(Box::new(Check {
            inner: Arc::clone(&self.inner),
            client: client.endpoint(),
            receiver: Some(receiver),
            result: None,
        }))
    }

    fn compact(&self) {
        self.inner.compact();
    }
}

/// One client's lookups.
struct Check {
    inner: Arc<Inner>,
    client: Endpoint,
    receiver: Option<oneshot::Receiver<Result<Outcome, Failed>>>,
    result: Option<Result<Outcome, Failed>>,
}

impl Check {
    /// Logs each finding on its own line, once the answer is in.
    fn log(&self, outcome: &Outcome) {
        let weights = self.inner.settings.weights;
        let client = self.client;
        match &outcome.found {
            Found::NoPtr => {
                tracing::info!("RDNS no PTR name from {client} (weight {})", weights.no_ptr)
            }
            // A PTR name is the client's own text: its reverse zone says it.
            Found::NotConfirmed { name } => tracing::info!(
                "RDNS not confirmed: {} from {client} (weight {})",
                printable(name),
                weights.not_confirmed
            ),
            Found::Generic { name } => tracing::info!(
                "RDNS generic name: {} from {client} (weight {})",
                printable(name),
                weights.generic
            ),
            Found::Confirmed { name } => {
                tracing::debug!("RDNS confirmed: {} from {client}", printable(name))
            }
        }
    }
}

impl Waiting for Check {
    fn names(&self) -> ClientNames {
        let Some(Ok(outcome)) = &self.result else {
            return ClientNames::default();
        };
        let verified = match &outcome.found {
            Found::Confirmed { name } | Found::Generic { name } => Some(name.clone()),
            Found::NoPtr | Found::NotConfirmed { .. } => None,
        };
        ClientNames {
            verified,
            reverse: outcome.names.first().cloned(),
        }
    }

    fn progress(&mut self) -> GateFuture<'_, ()> {
        Box::pin(async move {
            let Some(receiver) = self.receiver.as_mut() else {
                return;
            };
            let result = receiver
                .await
                .unwrap_or_else(|_| Err(Failed("lookup abandoned".into())));
            self.receiver = None;
            if let Ok(outcome) = &result {
                self.log(outcome);
            }
            self.result = Some(result);
        })
    }

    fn is_complete(&self) -> bool {
        self.result.is_some()
    }

    fn verdict(&self) -> Verdict {
        Verdict::Score(match &self.result {
            Some(Ok(outcome)) => Score {
                findings: self.inner.findings(outcome),
                ttl: Some(self.inner.clamp(outcome.ttl)),
                complete: true,
            },
            // A failed lookup is no opinion: nothing found, nothing kept.
            Some(Err(_)) => Score {
                findings: Vec::new(),
                ttl: None,
                complete: true,
            },
            None => Score::default(),
        })
    }

    fn explain(&self, wait: Duration) -> Vec<String> {
        let ip = self.client.0.ip();
        let outcome = match &self.result {
            None => return vec![format!("rdns: no answer within the greet wait ({wait:?})")],
            Some(Err(failed)) => {
                return vec![format!("rdns: lookup failed: {} (no opinion)", failed.0)]
            }
            Some(Ok(outcome)) => outcome,
        };
        let names = if outcome.names.is_empty() {
            "none".to_string()
        } else {
            outcome.names.join(", ")
        };
        let forward = match &outcome.found {
            Found::NoPtr => "no name to confirm".to_string(),
            Found::NotConfirmed { .. } => format!("no name resolves back to {ip}"),
            Found::Generic { name } | Found::Confirmed { name } => {
                format!("{name} resolves back to {ip}")
            }
        };
        let check = match self.inner.findings(outcome).first() {
            Some(finding) => format!("rdns check {}: fires, {:+}", finding.name, finding.weight),
            None => "rdns checks: none fires".to_string(),
        };
        vec![
            format!("rdns PTR names: {names} (ttl {}s)", outcome.ttl.as_secs()),
            format!("rdns forward: {forward}"),
            check,
        ]
    }
}
