//! The `[rdns]` section: what each reverse-DNS finding weighs. The gate
//! runs when `rdns` is in `gates`, with the resolver every DNS gate shares.

use std::sync::Arc;

use doorman_gate_api::{BuildError, Gate, GateSection, Resources, SectionContext, SectionError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::{RdnsGate, Settings, Weights};

/// The `[rdns]` section: the reverse-DNS gate's weights. Its findings are
/// exclusive: a client gets at most one of them.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RdnsSection {
    /// The weight of a client with no PTR name.
    #[serde(default = "default_no_ptr")]
    pub no_ptr: i32,
    /// The weight of a client with no PTR name that resolves back to its
    /// address.
    #[serde(default = "default_one")]
    pub not_confirmed: i32,
    /// The weight of a client whose confirmed name looks generic (it embeds
    /// the address, or a pool word such as `dsl` or `dynamic`).
    #[serde(default = "default_one")]
    pub generic: i32,
}

fn default_no_ptr() -> i32 {
    2
}

fn default_one() -> i32 {
    1
}

impl GateSection for RdnsSection {
    fn check(&mut self, _: &SectionContext) -> Result<(), SectionError> {
        Ok(())
    }

    fn build(
        &self,
        shared: &SectionContext,
        resources: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError> {
        let resolver = &shared.resolver;
        let settings = Settings {
            weights: Weights {
                no_ptr: self.no_ptr,
                not_confirmed: self.not_confirmed,
                generic: self.generic,
            },
            min_ttl: resolver.min_ttl,
            max_ttl: resolver.max_ttl,
            timeout: resolver.timeout,
            nameservers: resolver.nameservers.clone(),
            cache_size: shared.cache_size,
        };
        let gate =
            RdnsGate::new(settings)?.budgeted(Arc::clone(&resources.dns), resources.events("rdns"));
        Ok(Some(Arc::new(gate)))
    }
}
