//! One client's reverse-DNS check during the greet wait: the cached
//! result, or the lookup in flight for its address, which it waits for
//! and drops when it leaves; its findings, names and `explain` lines.

use std::sync::Arc;
use std::time::Duration;

use doorman_dnsbl::merge::Joined;
use doorman_gate_api::printable;
use doorman_gate_api::{ClientNames, Endpoint, GateFuture, Score, Verdict, Waiting};

use crate::{Checked, Found, Inner, Outcome};

/// What a client's lookup starts from.
pub(crate) enum Started {
    /// A result still in the cache.
    Cached(Checked),
    /// The lookup in flight for its address, joined or begun.
    Joined(Joined<Checked>),
}

/// One client's lookups.
pub(crate) struct Check {
    pub(crate) inner: Arc<Inner>,
    pub(crate) client: Endpoint,
    /// The lookup it waits for; dropped with it.
    pub(crate) lookup: Option<Joined<Checked>>,
    pub(crate) result: Option<Checked>,
}

impl Check {
    /// Takes the result in, and logs its finding.
    pub(crate) fn finish(&mut self, checked: Checked) {
        self.lookup = None;
        if let Ok(outcome) = &checked {
            self.log(outcome);
        }
        self.result = Some(checked);
    }

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
            let Some(lookup) = self.lookup.as_mut() else {
                return;
            };
            let checked = lookup.await;
            self.finish(checked);
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
