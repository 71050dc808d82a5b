//! The DNSBL/DNSWL gate: every site's lookup during the greet wait, its
//! matches as weighted findings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use doorman_gate_api::{Client, Finding, Gate, GateFuture, Score, Verdict, Waiting};

use crate::lookup::{Dnsbl, Pending};
use crate::score::Answer;

/// The gate: the sites and resolver, and the names replies show.
#[derive(Debug)]
pub struct DnsblGate {
    dnsbl: Arc<Dnsbl>,
    /// Site domain -> name shown in replies (hides keyed zone names);
    /// shared with every client's lookups.
    reply_map: Arc<HashMap<String, String>>,
}

impl DnsblGate {
    /// A gate over `dnsbl`, naming sites through `reply_map`.
    pub fn new(dnsbl: Arc<Dnsbl>, reply_map: HashMap<String, String>) -> Self {
        Self {
            dnsbl,
            reply_map: Arc::new(reply_map),
        }
    }

    /// The lookups and answer cache behind the gate.
    pub fn dnsbl(&self) -> &Arc<Dnsbl> {
        &self.dnsbl
    }
}

impl Gate for DnsblGate {
    fn has_command_hook(&self) -> bool {
        false
    }

    fn compact(&self) {
        self.dnsbl.compact();
    }

    fn has_wait_hook(&self) -> bool {
        true
    }

    fn wait(&self, client: &Client) -> Option<Box<dyn Waiting>> {
        Some(Box::new(Lookups {
            pending: self.dnsbl.start(client.ip()),
            reply_map: Arc::clone(&self.reply_map),
        }))
    }
}

/// One client's lookups.
struct Lookups {
    pending: Pending,
    reply_map: Arc<HashMap<String, String>>,
}

impl Waiting for Lookups {
    fn progress(&mut self) -> GateFuture<'_, ()> {
        Box::pin(async move {
            self.pending.next().await;
        })
    }

    fn is_complete(&self) -> bool {
        self.pending.is_complete()
    }

    fn verdict(&self) -> Verdict {
        Verdict::Score(findings(&self.pending, &self.reply_map))
    }

    fn explain(&self, wait: Duration) -> Vec<String> {
        let answers = self.pending.answers();
        let dnsbl = self.pending.dnsbl();
        let zones = dnsbl.zones().iter().map(|zone| {
            let found = match answers.get(zone) {
                Some(Answer::Listed { addresses, ttl }) => format!(
                    "listed as {} (ttl {}s)",
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    ttl.as_secs()
                ),
                Some(Answer::NotListed { ttl }) => format!("not listed (ttl {}s)", ttl.as_secs()),
                Some(Answer::Failed { error }) => format!("lookup failed: {error}"),
                None => format!("no answer within the greet wait ({wait:?})"),
            };
            format!("dnsbl {zone}: {found}")
        });
        let matching = self.pending.matching_sites();
        let sites = dnsbl.sites().iter().map(|site| {
            let found = if matching.iter().any(|m| std::ptr::eq(*m, site)) {
                format!("matches, {:+}", site.weight)
            } else {
                "no match".to_string()
            };
            format!("site {site}: {found}")
        });
        zones.chain(sites).collect()
    }
}

/// The matching sites of the answers so far, in config order, each named
/// as a reply shows it.
pub fn findings(pending: &Pending, reply_map: &HashMap<String, String>) -> Score {
    let score = pending.score();
    let findings = pending
        .matching_sites()
        .into_iter()
        .map(|site| Finding {
            name: reply_map
                .get(&site.domain)
                .cloned()
                .unwrap_or_else(|| site.domain.clone()),
            weight: site.weight,
        })
        .collect();
    Score {
        findings,
        ttl: Some(score.ttl),
        complete: score.complete,
    }
}
