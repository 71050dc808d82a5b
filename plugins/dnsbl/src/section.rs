//! The `[dnsbl]` section: the sites in postscreen's syntax and the names
//! replies show. The section's resolver keys (`min_ttl`, `max_ttl`,
//! `timeout`, `nameservers`) configure the resolver every DNS gate shares,
//! and its score keys are the old names of `[score]`'s: the core reads
//! both and hands this gate the rest.

use std::collections::HashMap;
use std::sync::Arc;

use doorman_gate_api::{BuildError, Gate, GateSection, Resources, SectionContext, SectionError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::gate::DnsblGate;
use crate::lookup::{Dnsbl, Settings};
use crate::site::Site;

/// The `[dnsbl]` section, as the gate reads it.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsblSection {
    /// The DNSBL and DNSWL sites, `domain[=filter][*weight]` entries, as
    /// `postscreen_dnsbl_sites`.
    #[serde(default)]
    pub sites: Vec<String>,
    /// Site -> the name shown in replies and in the metrics' `site` labels
    /// (so a keyed zone's key never reaches `/metrics`).
    #[serde(default)]
    pub reply_map: HashMap<String, String>,
    /// The sites, parsed by [`GateSection::check`].
    #[serde(skip)]
    pub parsed: Vec<Site>,
}

impl GateSection for DnsblSection {
    fn check(&mut self, _: &SectionContext) -> Result<(), SectionError> {
        self.parsed = self
            .sites
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                Site::parse(entry)
                    .map_err(|error| SectionError::key(format!("sites.{index}"), error.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn build(
        &self,
        shared: &SectionContext,
        resources: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError> {
        if self.parsed.is_empty() {
            return Ok(None);
        }
        let metrics = Arc::clone(&resources.metrics);
        // Metric labels name a zone as replies do (`reply_map`): a keyed
        // zone (Spamhaus DQS's `KEY.zen.dq.spamhaus.net`) must not show
        // its key to whoever scrapes `/metrics`.
        let names = self.reply_map.clone();
        let dnsbl = Dnsbl::with_store(
            Settings::new(self.parsed.clone(), shared),
            resources.answer_store.clone(),
        )?
        .observed(Arc::new(move |zone, took, failed| {
            let shown = names.get(zone).map_or(zone, String::as_str);
            metrics.lookup(shown, took, failed)
        }))
        .budgeted(Arc::clone(&resources.dns), resources.events("dnsbl"));
        Ok(Some(Arc::new(DnsblGate::new(
            Arc::new(dnsbl),
            self.reply_map.clone(),
        ))))
    }
}
