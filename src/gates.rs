//! The pipeline the config orders: the gates built from the checked
//! sections (`config::Registry` knows their names and section types), run
//! through their hooks: every connect gate in turn, every wait gate at once
//! ([`Waits`]), every engine gate in turn. `pregreet` and `deep` are the
//! session's own tests (the teaser's watch, the engine's line checks),
//! switched on and ordered by the same list.
//!
//! # Writing a gate
//! 1. A crate under `plugins/` that depends on `doorman-gate-api` and
//!    implements [`Gate`] with the hooks it needs (`connect`, `wait`,
//!    `command`, and the `explain_*` hooks for `doorman explain`). Log
//!    findings with `tracing`, naming the client as `client.endpoint()`
//!    does.
//! 2. Its section: a serde type in the crate that implements
//!    `GateSection` (check it, build the gate from it).
//! 3. One line in `Registry::standard`, and the crate in `Cargo.toml`.
//!
//! It knows gates only through the gate API and the config's checked
//! sections; it never touches a session's I/O.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use doorman_gate_api::{
    BuildError, Client, ClientNames, Command, Gate, Rejection, Resources, Score, Verdict, Waiting,
};

use crate::config::Config;
use crate::metrics::Metrics;

/// Why a gate could not be built.
#[derive(Debug, thiserror::Error)]
#[error("gate {gate}: {source}")]
pub struct GateError {
    /// The gate.
    pub gate: &'static str,
    /// What went wrong.
    pub source: BuildError,
}

impl Pipeline {
    /// Builds the gates `config` lists, in its order.
    pub fn build(config: &Config, resources: &Resources) -> Result<Self, GateError> {
        let mut gates = Vec::new();
        for (name, section) in &config.gate_sections {
            let built = section
                .build(&config.context, resources)
                .map_err(|source| GateError { gate: name, source })?;
            if let Some(gate) = built {
                gates.push((*name, gate));
            }
        }
        Ok(Pipeline {
            gates,
            pregreet: config.lists("pregreet"),
            deep: config.lists("deep"),
        })
    }
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

    /// The gates that want the dialogue of a client with `score` (see
    /// [`Pipeline::needs_dialogue`]), in order.
    pub fn dialogue_gates(&self, score: Option<i32>) -> Vec<&'static str> {
        self.gates
            .iter()
            .filter(|(_, gate)| gate.needs_dialogue(score))
            .map(|(name, _)| *name)
            .collect()
    }

    /// Whether a gate judges commands (see `Gate::has_command_hook`).
    pub fn judges_commands(&self) -> bool {
        self.gates.iter().any(|(_, gate)| gate.has_command_hook())
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

    /// What each connect gate finds about `client`, for `doorman explain`.
    pub fn explain_connect(&self, client: &Client) -> Vec<String> {
        self.gates
            .iter()
            .filter_map(|(_, gate)| gate.explain_connect(client))
            .collect()
    }

    /// What each engine gate would do with a client of this score, by
    /// gate, for `doorman explain`.
    pub fn explain_dialogue(&self, score: i32) -> Vec<(&'static str, String)> {
        self.gates
            .iter()
            .filter_map(|(name, gate)| gate.explain_dialogue(score).map(|line| (*name, line)))
            .collect()
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

    /// What each gate's lookups found, for `doorman explain`.
    pub fn explain(&self, wait: std::time::Duration) -> Vec<String> {
        self.items
            .iter()
            .flat_map(|(_, waiting)| waiting.explain(wait))
            .collect()
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
