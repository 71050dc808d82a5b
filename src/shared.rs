//! What every session of one config shares: the config snapshot, the
//! backend pool, the gates and the pass cache.
//!
//! It builds and holds state; it runs no session and owns no socket.

use std::sync::Arc;

use crate::waiting_room::SessionRoom;

use crate::cache::{CacheError, PassCache};
use crate::config::Config;
use crate::config::Registry;
use crate::director::Director;
use crate::gates::{GateError, Pipeline};
use crate::handoff::users::UserMap;
use crate::handoff::Pool;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::tls::{ServerTls, TlsError};
use crate::verdict::Thresholds;
use doorman_gate_api::{DnsBudget, Resources};

/// What outlives a config reload: connection counts, metrics, and the
/// gates this build knows.
#[derive(Clone, Debug, Default)]
pub struct ProcessState {
    /// The connection limits' live counts.
    pub limits: Arc<Limits>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The gate names and constructors.
    pub registry: Arc<Registry>,
    /// Whether this doorman asks HAProxy for no new clients (`doorman
    /// drain`, the SIGTERM grace period).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The backends' runtime state (drain, weight, flush).
    pub director: Arc<Director>,
    /// Where clients in the greet wait with nothing left to learn but
    /// their first bytes wait without a task (none: they wait in theirs).
    pub room: Option<SessionRoom>,
}

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The cache store could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A gate could not be built.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// A certificate or key of `[tls]` or of a backend could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The state shared by the sessions of one config.
#[derive(Debug)]
pub struct ConfigState {
    /// The config snapshot.
    pub config: Arc<Config>,
    /// The backends.
    pub pool: Arc<Pool>,
    /// The gates, in the config's order.
    pub pipeline: Pipeline,
    /// The thresholds that judge the gates' summed score.
    pub thresholds: Thresholds,
    /// Clients that passed.
    pub cache: Arc<PassCache>,
    /// The engine's STARTTLS, when `[tls]` is set.
    pub tls: Option<ServerTls>,
}

impl ConfigState {
    /// Builds the shared state of `config`: opens the cache store (or, on
    /// a reload, keeps the `running` state's, and takes over its backends'
    /// running states) and builds the gates. Must run inside the tokio
    /// runtime.
    pub fn new(
        config: Config,
        running: Option<&ConfigState>,
        process: &ProcessState,
    ) -> Result<Self, SharedError> {
        let cache = match running {
            Some(running) => Arc::clone(&running.cache),
            None => Arc::new(PassCache::open(&config.cache)?),
        };
        let carried = running
            .map(|running| running.pool.carried())
            .unwrap_or_default();
        // Certificates first: a reload that cannot read them keeps the
        // running config, and the certificates in use, whole.
        let tls = config.tls.as_ref().map(ServerTls::load).transpose()?;
        process.director.keep_in(cache.record_store());
        let pipeline = Pipeline::build(
            &config,
            &Resources {
                answer_store: cache.answer_store(),
                record_store: cache.record_store(),
                metrics: Arc::clone(&process.metrics) as Arc<dyn doorman_gate_api::GateMetrics>,
                dns: Arc::new(DnsBudget::new(config.shared.resolver().limits)),
            },
        )?;
        Ok(Self {
            pool: Arc::new(Pool::new(
                config.backends.clone(),
                config.pool.clone(),
                config.clusters.clone(),
                &config.hostname,
                Arc::clone(&process.director),
                UserMap::new(cache.record_store(), {
                    let metrics = Arc::clone(&process.metrics);
                    Arc::new(move |event| metrics.user_route(event))
                }),
                &carried,
            )?),
            pipeline,
            thresholds: Thresholds {
                threshold: config.score.threshold,
                allowlist_threshold: config.score.allowlist_threshold,
            },
            cache,
            tls,
            config: Arc::new(config),
        })
    }
}
