//! What every session of one config shares: the config snapshot, the
//! backend pool, the DNSBL gate and the pass cache.

use std::sync::Arc;

use doorman_dnsbl::{Dnsbl, Policy, ResolverError, Settings};

use crate::cache::PassCache;
use crate::config::Config;
use crate::handoff::Pool;

/// The state shared by the sessions of one config.
#[derive(Debug)]
pub struct Shared {
    /// The config snapshot.
    pub config: Arc<Config>,
    /// The backends.
    pub pool: Pool,
    /// The DNSBL gate, when sites are configured.
    pub dnsbl: Option<Arc<Dnsbl>>,
    /// The DNSBL thresholds and reply names.
    pub dnsbl_policy: Policy,
    /// Clients that passed.
    pub cache: PassCache,
}

impl Shared {
    /// Builds the shared state of `config`.
    pub fn new(config: Config) -> Result<Self, ResolverError> {
        let dnsbl = if config.dnsbl_sites.is_empty() {
            None
        } else {
            Some(Arc::new(Dnsbl::new(Settings {
                sites: config.dnsbl_sites.clone(),
                min_ttl: config.dnsbl.min_ttl,
                max_ttl: config.dnsbl.max_ttl,
                timeout: config.dnsbl.timeout,
                nameservers: config.dnsbl.nameservers.clone(),
                cache_size: config.cache.size,
            })?))
        };
        Ok(Self {
            pool: Pool::new(config.backends.clone()),
            dnsbl,
            dnsbl_policy: Policy {
                threshold: config.dnsbl.threshold,
                allowlist_threshold: config.dnsbl.allowlist_threshold,
                reply_map: config.dnsbl.reply_map.clone(),
            },
            cache: PassCache::new(config.cache.size),
            config: Arc::new(config),
        })
    }
}
