//! The answers for one address as they arrive: [`Pending`], which
//! [`Dnsbl::start`] returns.
//!
//! The caller's task drives the zones' lookups, so an answer wakes that
//! task alone, and decides how long to wait; the matching sites and the
//! score are read from the answers so far. A `Pending` dropped with
//! lookups under way drops them: those nobody else waits for are
//! cancelled, query and socket.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::lookup::Dnsbl;
use crate::score::{score, Answer, Score};
use crate::site::Site;

/// One zone's lookup: the zone and its answer.
pub(crate) type ZoneLookup = Pin<Box<dyn Future<Output = (String, Answer)> + Send>>;

/// The answers for one address as they arrive.
pub struct Pending {
    dnsbl: Arc<Dnsbl>,
    lookups: FuturesUnordered<ZoneLookup>,
    answers: HashMap<String, Answer>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("under_way", &self.lookups.len())
            .field("answers", &self.answers)
            .finish()
    }
}

impl Pending {
    /// The answers of `lookups`, one per zone of `dnsbl`, none yet.
    pub(crate) fn new(dnsbl: Arc<Dnsbl>, lookups: FuturesUnordered<ZoneLookup>) -> Self {
        Self {
            dnsbl,
            lookups,
            answers: HashMap::new(),
        }
    }

    /// Waits for the next answer; `false` once every zone has answered.
    /// Cancel-safe: no answer is lost if the wait is abandoned.
    pub async fn next(&mut self) -> bool {
        if self.is_complete() {
            return false;
        }
        match self.lookups.next().await {
            Some((zone, answer)) => {
                self.answers.insert(zone, answer);
                true
            }
            None => false,
        }
    }

    /// Whether every zone has answered.
    pub fn is_complete(&self) -> bool {
        self.answers.len() >= self.dnsbl.zones().len()
    }

    /// The lookups these answers are for.
    pub fn dnsbl(&self) -> &Dnsbl {
        &self.dnsbl
    }

    /// The answers so far, by zone.
    pub fn answers(&self) -> &HashMap<String, Answer> {
        &self.answers
    }

    /// The sites that match the answers so far, in config order.
    pub fn matching_sites(&self) -> Vec<&Site> {
        self.dnsbl
            .sites()
            .iter()
            .filter(|site| match self.answers.get(&site.domain) {
                Some(Answer::Listed { addresses, .. }) => site.matches(addresses),
                _ => false,
            })
            .collect()
    }

    /// The score of the answers so far.
    pub fn score(&self) -> Score {
        let settings = self.dnsbl.settings();
        score(
            &settings.sites,
            &self.answers,
            self.dnsbl.zones().len(),
            settings.min_ttl,
            settings.max_ttl,
        )
    }

    /// Waits for every answer (each query has its own timeout).
    pub async fn finish(mut self) -> Self {
        while self.next().await {}
        self
    }
}
