//! What every session of one config shares: the config snapshot, the
//! backend pool, the DNSBL gate and the pass cache.

use std::sync::Arc;

use doorman_dnsbl::{Dnsbl, Policy, Settings};

use crate::cache::{CacheError, PassCache};
use crate::config::Config;
use crate::handoff::Pool;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// What outlives a config reload: connection counts and metrics.
#[derive(Clone, Debug, Default)]
pub struct Process {
    /// The connection limits' live counts.
    pub limits: Arc<Limits>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
}

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The cache store could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The DNS resolver could not be set up.
    #[error(transparent)]
    Resolver(#[from] doorman_dnsbl::ResolverError),
}

/// The state shared by the sessions of one config.
#[derive(Debug)]
pub struct Shared {
    /// The config snapshot.
    pub config: Arc<Config>,
    /// The backends.
    pub pool: Arc<Pool>,
    /// The DNSBL gate, when sites are configured.
    pub dnsbl: Option<Arc<Dnsbl>>,
    /// The DNSBL thresholds and reply names.
    pub dnsbl_policy: Policy,
    /// Clients that passed.
    pub cache: Arc<PassCache>,
}

impl Shared {
    /// Builds the shared state of `config`: opens the cache store (or keeps
    /// `cache`, on a reload) and sets up the resolver. Must run inside the
    /// tokio runtime.
    pub fn new(
        config: Config,
        cache: Option<Arc<PassCache>>,
        process: &Process,
    ) -> Result<Self, SharedError> {
        let cache = match cache {
            Some(cache) => cache,
            None => Arc::new(PassCache::open(&config.cache)?),
        };
        let dnsbl = if config.dnsbl_sites.is_empty() {
            None
        } else {
            let metrics = Arc::clone(&process.metrics);
            Some(Arc::new(
                Dnsbl::with_store(
                    Settings {
                        sites: config.dnsbl_sites.clone(),
                        min_ttl: config.dnsbl.min_ttl,
                        max_ttl: config.dnsbl.max_ttl,
                        timeout: config.dnsbl.timeout,
                        nameservers: config.dnsbl.nameservers.clone(),
                        cache_size: config.cache.size,
                    },
                    cache.answer_store(),
                )?
                .observed(Arc::new(move |zone, took| {
                    metrics.dnsbl_latency(zone, took)
                })),
            ))
        };
        Ok(Self {
            pool: Arc::new(Pool::new(
                config.backends.clone(),
                config.pool.clone(),
                &config.hostname,
            )),
            dnsbl,
            dnsbl_policy: Policy {
                threshold: config.dnsbl.threshold,
                allowlist_threshold: config.dnsbl.allowlist_threshold,
                reply_map: config.dnsbl.reply_map.clone(),
            },
            cache,
            config: Arc::new(config),
        })
    }
}
