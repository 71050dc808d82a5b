//! The gate registry and the pipeline the config orders.
//!
//! A [`Registry`] maps each gate name to the constructor that builds the
//! gate from the config, as Haraka maps `config/plugins` lines to plugins.
//! `pregreet` and `deep` are names too: they are the session's own tests
//! (the teaser's watch, the engine's line checks), switched on and ordered
//! by the same list. The [`Pipeline`] holds the built gates in config order
//! and runs their hooks: every connect gate in turn, every wait gate at once
//! ([`Waits`]), every engine gate in turn.
//!
//! # Writing a gate
//! 1. A crate under `plugins/` that depends on `doorman-gate-api` and
//!    implements [`Gate`] with the hooks it needs (`connect`, `wait`,
//!    `command`). Log findings with `tracing`, naming the client as
//!    `client.endpoint()` does.
//! 2. A config section for its settings in `src/config/`.
//! 3. One line in [`Registry::standard`]: its name and a constructor that
//!    reads the section and returns the gate (`None` when the section
//!    leaves it nothing to do).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use doorman_dnsbl::{AnswerStore, Dnsbl, DnsblGate, ResolverError, Settings};
use doorman_gate_api::{
    Client, ClientNames, Command, EventCounter, Gate, RecordStore, Rejection, Score, Verdict,
    Waiting,
};
use doorman_greylist::GreylistGate;
use doorman_policy::{Address, Clients, PolicyGate};
use doorman_rdns::{RdnsGate, Weights};

use crate::config::{Config, PolicyClients};
use crate::metrics::Metrics;

/// The session's own tests, listed and ordered like gates.
pub const BUILT_IN: [&str; 2] = ["pregreet", "deep"];

/// The gate order when the config names none: postscreen's.
pub const DEFAULT_ORDER: [&str; 4] = ["access", "pregreet", "dnsbl", "deep"];

/// What a constructor may use besides the config.
pub struct Resources {
    /// The store DNS answers are shared through, if any (Redis).
    pub answer_store: Option<Arc<dyn AnswerStore>>,
    /// The store gates keep records in (Redis, or this process's memory).
    pub record_store: Arc<dyn RecordStore>,
    /// The metrics, for lookup latencies.
    pub metrics: Arc<Metrics>,
}

impl Resources {
    /// A counter of `gate`'s own events, exported as
    /// `doorman_gate_events_total{gate, event}`.
    pub fn events(&self, gate: &'static str) -> EventCounter {
        let metrics = Arc::clone(&self.metrics);
        Arc::new(move |event| metrics.gate_event(gate, event))
    }
}

/// Why a gate could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The DNS resolver could not be set up.
    #[error(transparent)]
    Resolver(#[from] ResolverError),
}

/// Builds a gate from the config; `None` when it has nothing to do.
pub type Constructor = fn(&Config, &Resources) -> Result<Option<Arc<dyn Gate>>, GateError>;

/// Gate names and their constructors.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<(&'static str, Constructor)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::standard()
    }
}

impl Registry {
    /// Every gate doorman ships.
    pub fn standard() -> Self {
        Self {
            entries: vec![
                ("access", access),
                ("dnsbl", dnsbl),
                ("rdns", rdns),
                ("greylist", greylist),
                ("policy", policy),
            ],
        }
    }

    /// This registry with one more gate (for a build with a gate of its
    /// own, and the tests).
    pub fn with(mut self, name: &'static str, constructor: Constructor) -> Self {
        self.entries.push((name, constructor));
        self
    }

    /// Whether `name` is a gate (or one of the session's own tests).
    pub fn knows(&self, name: &str) -> bool {
        BUILT_IN.contains(&name) || self.entries.iter().any(|(known, _)| *known == name)
    }

    /// Builds the gates `config` lists, in its order.
    pub fn build(&self, config: &Config, resources: &Resources) -> Result<Pipeline, GateError> {
        let mut gates = Vec::new();
        for name in &config.gates {
            if let Some((name, constructor)) = self.entries.iter().find(|(known, _)| known == name)
            {
                if let Some(gate) = constructor(config, resources)? {
                    gates.push((*name, gate));
                }
            }
        }
        let listed = |name: &str| config.gates.iter().any(|g| g == name);
        Ok(Pipeline {
            gates,
            pregreet: listed("pregreet"),
            deep: listed("deep"),
        })
    }
}

fn access(config: &Config, _: &Resources) -> Result<Option<Arc<dyn Gate>>, GateError> {
    Ok(config
        .access_list
        .clone()
        .map(|list| Arc::new(list) as Arc<dyn Gate>))
}

fn dnsbl(config: &Config, resources: &Resources) -> Result<Option<Arc<dyn Gate>>, GateError> {
    if config.dnsbl_sites.is_empty() {
        return Ok(None);
    }
    let metrics = Arc::clone(&resources.metrics);
    let dnsbl = Dnsbl::with_store(
        Settings {
            sites: config.dnsbl_sites.clone(),
            min_ttl: config.dnsbl.min_ttl,
            max_ttl: config.dnsbl.max_ttl,
            timeout: config.dnsbl.timeout,
            nameservers: config.dnsbl.nameservers.clone(),
            cache_size: config.cache.size,
        },
        resources.answer_store.clone(),
    )?
    .observed(Arc::new(move |zone, took| {
        metrics.dnsbl_latency(zone, took)
    }));
    Ok(Some(Arc::new(DnsblGate::new(
        Arc::new(dnsbl),
        config.dnsbl.reply_map.clone(),
    ))))
}

fn rdns(config: &Config, _: &Resources) -> Result<Option<Arc<dyn Gate>>, GateError> {
    Ok(Some(Arc::new(RdnsGate::new(rdns_settings(config))?)))
}

/// The reverse-DNS gate's settings: `[rdns]` weights, `[dnsbl]` resolver.
pub fn rdns_settings(config: &Config) -> doorman_rdns::Settings {
    doorman_rdns::Settings {
        weights: Weights {
            no_ptr: config.rdns.no_ptr,
            not_confirmed: config.rdns.not_confirmed,
            generic: config.rdns.generic,
        },
        min_ttl: config.dnsbl.min_ttl,
        max_ttl: config.dnsbl.max_ttl,
        timeout: config.dnsbl.timeout,
        nameservers: config.dnsbl.nameservers.clone(),
        cache_size: config.cache.size,
    }
}

fn greylist(config: &Config, resources: &Resources) -> Result<Option<Arc<dyn Gate>>, GateError> {
    let section = &config.greylist;
    Ok(Some(Arc::new(GreylistGate::new(
        doorman_greylist::Settings {
            threshold: section.threshold,
            delay: section.delay,
            retry_window: section.retry_window,
            auto_allowlist: section.auto_allowlist,
            max_age: section.max_age,
            ipv4_prefix: section.ipv4_prefix,
            ipv6_prefix: section.ipv6_prefix,
            text: section.text.clone(),
        },
        Arc::clone(&resources.record_store),
        resources.events("greylist"),
    ))))
}

fn policy(config: &Config, resources: &Resources) -> Result<Option<Arc<dyn Gate>>, GateError> {
    let section = &config.policy;
    let Some(address) = &section.address else {
        return Ok(None);
    };
    Ok(Some(Arc::new(PolicyGate::new(
        doorman_policy::Settings {
            address: Address::parse(address),
            clients: match section.clients {
                PolicyClients::All => Clients::All,
                PolicyClients::Doubtful => Clients::Doubtful(config.greylist.threshold),
            },
            timeout: section.timeout,
            default_action: section.default_action.clone(),
            request_limit: section.request_limit,
            hostname: config.hostname.clone(),
        },
        resources.events("policy"),
    ))))
}

/// The gates of one config, in its order.
#[derive(Default)]
pub struct Pipeline {
    gates: Vec<(&'static str, Arc<dyn Gate>)>,
    /// Whether the pregreet test is listed.
    pub pregreet: bool,
    /// Whether the deep tests are listed.
    pub deep: bool,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "gates",
                &self.gates.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("pregreet", &self.pregreet)
            .field("deep", &self.deep)
            .finish()
    }
}

/// What the connect gates say together.
#[derive(Debug)]
pub enum AtConnect {
    /// A gate permitted the client: hand it off now.
    Permit,
    /// Go on to the other tests, with these failures.
    Go(Vec<Rejection>),
    /// A gate refused it with `drop`: 521 and close.
    Drop(Rejection),
}

impl Pipeline {
    /// Runs every connect gate in order. The first permit wins unless a
    /// gate before it refused; a refusal with `drop` ends it at once.
    pub fn connect(&self, client: &Client, metrics: &Metrics) -> AtConnect {
        let mut failures = Vec::new();
        for (name, gate) in &self.gates {
            match gate.connect(client) {
                Verdict::Permit if failures.is_empty() => {
                    metrics.test(name, true);
                    return AtConnect::Permit;
                }
                Verdict::Reject(rejection) => {
                    metrics.test(name, false);
                    if rejection.action == doorman_gate_api::Action::Drop {
                        return AtConnect::Drop(rejection);
                    }
                    failures.push(rejection);
                }
                _ => {}
            }
        }
        AtConnect::Go(failures)
    }

    /// Starts the wait gates that `due` says are due for `client`.
    pub fn start_waits(&self, client: &Client, due: impl Fn(&str) -> bool) -> Waits {
        Waits {
            items: self
                .gates
                .iter()
                .filter(|(name, _)| due(name))
                .filter_map(|(name, gate)| gate.wait(client).map(|waiting| (*name, waiting)))
                .collect(),
        }
    }

    /// The names of the gates with a wait hook, in order.
    pub fn wait_gates(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.gates
            .iter()
            .filter(|(_, gate)| gate.has_wait_hook())
            .map(|(name, _)| *name)
    }

    /// Whether a gate needs a client with this score in the engine (see
    /// `Gate::needs_dialogue`).
    pub fn needs_dialogue(&self, score: Option<i32>) -> bool {
        self.gates
            .iter()
            .any(|(_, gate)| gate.needs_dialogue(score))
    }

    /// Lets every gate rebuild its caches compactly (after a flood).
    pub fn compact(&self) {
        for (_, gate) in &self.gates {
            gate.compact();
        }
    }

    /// The names of the built gates, in order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.gates.iter().map(|(name, _)| *name)
    }

    /// Asks every engine gate about `command`, in order; the first refusal
    /// or permit answers.
    pub async fn command(&self, client: &Client, command: Command<'_>) -> Verdict {
        for (_, gate) in &self.gates {
            match gate.command(client, command).await {
                Verdict::Dunno | Verdict::Score(_) => continue,
                decided => return decided,
            }
        }
        Verdict::Dunno
    }
}

/// The wait gates' lookups for one client.
#[derive(Default)]
pub struct Waits {
    items: Vec<(&'static str, Box<dyn Waiting>)>,
}

impl std::fmt::Debug for Waits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Waits {
    /// Whether no wait gate runs.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether every gate has every answer (or its failure).
    pub fn is_complete(&self) -> bool {
        self.items.iter().all(|(_, waiting)| waiting.is_complete())
    }

    /// Waits until any gate knows more; never returns when all are done.
    /// Cancel-safe, as each gate's progress is.
    pub async fn progress(&mut self) {
        let mut futures: Vec<_> = self
            .items
            .iter_mut()
            .filter(|(_, waiting)| !waiting.is_complete())
            .map(|(_, waiting)| waiting.progress())
            .collect();
        if futures.is_empty() {
            return std::future::pending().await;
        }
        poll_fn(|cx| {
            for future in futures.iter_mut() {
                if future.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
    }

    /// The client's names, from the first gate that learned them.
    pub fn names(&self) -> ClientNames {
        self.items
            .iter()
            .map(|(_, waiting)| waiting.names())
            .find(|names| names.reverse.is_some())
            .unwrap_or_default()
    }

    /// Each gate's score so far, in config order.
    pub fn scores(&self) -> Vec<(&'static str, Score)> {
        self.items
            .iter()
            .filter_map(|(name, waiting)| match waiting.verdict() {
                Verdict::Score(score) => Some((*name, score)),
                _ => None,
            })
            .collect()
    }
}
