//! The gauges read at each scrape: the backends' state, the screening
//! places, the cache store, and the certificates' expiry. The caller hands
//! them over in a [`Live`]; this module reads nothing itself.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cache::embedded::WriteStats;
use crate::handoff::BackendStatus;

/// What a scrape reports besides the counters.
#[derive(Debug)]
pub struct Live<'a> {
    /// Every backend's state.
    pub backends: &'a [BackendStatus],
    /// Clients being screened now.
    pub screening: usize,
    /// `[limits] screening`; 0: no limit.
    pub screening_limit: usize,
    /// Whether the cache store answers (always for the embedded and
    /// memory stores).
    pub store_up: bool,
    /// How the embedded store's commits went (none for the other stores).
    pub store_writes: Option<WriteStats>,
    /// Each `[tls]` certificate's chain file and the Unix time its leaf
    /// expires.
    pub certificates: &'a [(String, i64)],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    backend: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: String,
}

/// The gauges, registered once.
#[derive(Debug)]
pub(super) struct LiveGauges {
    backend_up: Family<BackendLabels, Gauge>,
    backend_active: Family<BackendLabels, Gauge>,
    backend_weight: Family<BackendLabels, Gauge>,
    backend_draining: Family<BackendLabels, Gauge>,
    backend_cluster: Family<ClusterLabels, Gauge>,
    screening: Gauge,
    screening_limit: Gauge,
    store_up: Gauge,
    commit_seconds: Gauge<f64, AtomicU64>,
    write_lag_seconds: Gauge<f64, AtomicU64>,
    write_lag_max_seconds: Gauge<f64, AtomicU64>,
    certificate_expiry: Family<CertificateLabels, Gauge>,
}

/// Registers a gauge family under `name`.
fn family<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// Registers a single gauge of seconds under `name`.
fn seconds(registry: &mut Registry, name: &str, help: &str) -> Gauge<f64, AtomicU64> {
    let gauge = Gauge::<f64, AtomicU64>::default();
    registry.register(name, help, gauge.clone());
    gauge
}

/// Registers a single gauge under `name`.
fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

impl LiveGauges {
    pub(super) fn register(registry: &mut Registry) -> Self {
        Self {
            backend_up: family(
                registry,
                "doorman_backend_up",
                "Whether health checks say a backend is up",
            ),
            backend_weight: family(
                registry,
                "doorman_backend_weight",
                "A backend's weight now (the operator's, else the config's)",
            ),
            backend_draining: family(
                registry,
                "doorman_backend_draining",
                "Whether a backend takes no new clients (drained, weight 0 or flushed)",
            ),
            backend_cluster: family(
                registry,
                "doorman_backend_cluster",
                "The cluster of each backend (always 1)",
            ),
            backend_active: family(
                registry,
                "doorman_backend_connections",
                "Active client connections per backend",
            ),
            screening: gauge(
                registry,
                "doorman_screening_clients",
                "Clients being screened now (in the greet wait or the engine)",
            ),
            screening_limit: gauge(
                registry,
                "doorman_screening_limit",
                "[limits] screening: the most clients screened at once (0: no limit)",
            ),
            store_up: gauge(
                registry,
                "doorman_cache_store_up",
                "Whether the cache store answers (Redis; always 1 for the embedded and memory stores)",
            ),
            commit_seconds: seconds(
                registry,
                "doorman_cache_commit_seconds",
                "How long the embedded store's last commit took in the file (transaction and fsync)",
            ),
            write_lag_seconds: seconds(
                registry,
                "doorman_cache_write_lag_seconds",
                "How long the oldest write of the embedded store's last commit waited, from queued to committed",
            ),
            write_lag_max_seconds: seconds(
                registry,
                "doorman_cache_write_lag_max_seconds",
                "The longest any write of the embedded store waited for its commit since the start",
            ),
            certificate_expiry: family(
                registry,
                "doorman_tls_certificate_expiry_timestamp_seconds",
                "When each [tls] certificate expires, as a Unix time",
            ),
        }
    }

    /// Sets every gauge from `live`.
    pub(super) fn set(&self, live: &Live<'_>) {
        for family in [
            &self.backend_up,
            &self.backend_active,
            &self.backend_weight,
            &self.backend_draining,
        ] {
            family.clear();
        }
        self.backend_cluster.clear();
        for backend in live.backends {
            let labels = BackendLabels {
                backend: backend.address.to_string(),
            };
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.backend_up
                .get_or_create(&labels)
                .set(i64::from(backend.healthy));
            self.backend_active
                .get_or_create(&labels)
                .set(count(backend.active));
            self.backend_weight
                .get_or_create(&labels)
                .set(i64::from(backend.weight));
            self.backend_draining
                .get_or_create(&labels)
                .set(i64::from(backend.draining));
            self.backend_cluster
                .get_or_create(&ClusterLabels {
                    backend: backend.address.to_string(),
                    cluster: backend.cluster.clone(),
                })
                .set(1);
        }
        self.screening
            .set(i64::try_from(live.screening).unwrap_or(i64::MAX));
        self.screening_limit
            .set(i64::try_from(live.screening_limit).unwrap_or(i64::MAX));
        self.store_up.set(i64::from(live.store_up));
        if let Some(writes) = live.store_writes {
            self.commit_seconds.set(writes.last_commit.as_secs_f64());
            self.write_lag_seconds.set(writes.last_lag.as_secs_f64());
            self.write_lag_max_seconds.set(writes.max_lag.as_secs_f64());
        }
        self.certificate_expiry.clear();
        for (file, expires) in live.certificates {
            self.certificate_expiry
                .get_or_create(&CertificateLabels {
                    certificate: file.clone(),
                })
                .set(*expires);
        }
    }
}
