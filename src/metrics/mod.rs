//! Prometheus metrics, served on the admin listener.
//!
//! Label values come only from fixed names and from the config (DNSBL zones,
//! backend addresses), never from clients, so the series stay bounded.
//!
//! It counts; it never decides anything.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod live;
mod relay;
mod room;

pub use live::Live;
use relay::RelayMetrics;
pub use relay::RelayResult;
use room::RoomMetrics;

/// How a client connection ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A HAProxy health check.
    HealthCheck,
    /// A PROXY header refused (timed out, invalid, not allowed).
    ProxyRefused,
    /// Allowlisted by the access list.
    Allowlisted,
    /// Passed from the cache.
    PassOld,
    /// Handed off with no test enabled.
    Untested,
    /// Passed the tests.
    PassNew,
    /// Handed off with an ignored failure.
    Ignored,
    /// Handed off with a test not decided in time (a DNS list that had not
    /// answered by the end of the wait).
    Undecided,
    /// Talked to by the built-in engine.
    Enforced,
    /// Dropped with 521.
    Dropped,
    /// Hung up during the tests.
    Hangup,
    /// Refused by a connection limit.
    Limited,
    /// No backend took it.
    NoBackend,
    /// Talked to by the built-in engine and never handed off, with no
    /// other outcome: greylisted, refused at RCPT by a gate, or gone
    /// (QUIT, a timeout, too many errors) before a backend took it.
    Engine,
    /// Still without an outcome when the shutdown grace period ended.
    Shutdown,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::HealthCheck => "health_check",
            Outcome::ProxyRefused => "proxy_refused",
            Outcome::Allowlisted => "allowlisted",
            Outcome::PassOld => "pass_old",
            Outcome::Untested => "untested",
            Outcome::PassNew => "pass_new",
            Outcome::Ignored => "ignored_failure",
            Outcome::Undecided => "undecided",
            Outcome::Enforced => "enforced",
            Outcome::Dropped => "dropped",
            Outcome::Hangup => "hangup",
            Outcome::Limited => "limited",
            Outcome::NoBackend => "no_backend",
            Outcome::Engine => "engine",
            Outcome::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TestLabels {
    test: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GateEventLabels {
    gate: &'static str,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UserRouteLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    site: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    result: &'static str,
    version: &'static str,
}

/// Every metric doorman keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<OutcomeLabels, Counter>,
    tests: Family<TestLabels, Counter>,
    gate_events: Family<GateEventLabels, Counter>,
    agent_replies: Family<ResultLabels, Counter>,
    dnsbl_latency: Family<SiteLabels, Histogram>,
    dnsbl_lookups: Family<LookupLabels, Counter>,
    user_routes: Family<UserRouteLabels, Counter>,
    live: live::LiveGauges,
    cache_lookups: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    backend_lost: Family<StageLabels, Counter>,
    room: RoomMetrics,
    relay: RelayMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let connections = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "doorman_connections",
            "Client connections by outcome, each counted once",
            connections.clone(),
        );
        let tests = Family::<TestLabels, Counter>::default();
        registry.register("doorman_tests", "Screening tests by result", tests.clone());
        let gate_events = Family::<GateEventLabels, Counter>::default();
        registry.register(
            "doorman_gate_events",
            "Gates' own events (greylisting, policy verdicts)",
            gate_events.clone(),
        );
        let agent_replies = Family::<ResultLabels, Counter>::default();
        registry.register(
            "doorman_agent_replies",
            "HAProxy agent-check replies by state",
            agent_replies.clone(),
        );
        let dnsbl_latency = Family::<SiteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register(
            "doorman_dnsbl_lookup_seconds",
            "DNSBL lookup latency by zone",
            dnsbl_latency.clone(),
        );
        let dnsbl_lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "doorman_dnsbl_lookups",
            "DNS lookups of the DNSBL sites, by site and result (ok or failed)",
            dnsbl_lookups.clone(),
        );
        let user_routes = Family::<UserRouteLabels, Counter>::default();
        registry.register(
            "doorman_user_routes",
            "Users' backends in clusters balanced by recipient: assigned, moved by an operator, or a RCPT split off with 452",
            user_routes.clone(),
        );
        let live = live::LiveGauges::register(&mut registry);
        let cache_lookups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "doorman_cache_lookups",
            "Pass cache lookups by result",
            cache_lookups.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "doorman_config_reloads",
            "Config reloads by result",
            reloads.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "doorman_tls_handshakes",
            "TLS handshakes, by result (ok, timeout, lost, refused; backend_failed for doorman's own to a backend) and version",
            handshakes.clone(),
        );
        let backend_lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "doorman_backend_lost",
            "Backends lost (closed, timed out, or not following) while a client waited, by stage (a command, END-OF-MESSAGE, or RELAY for the byte copy)",
            backend_lost.clone(),
        );
        let room = RoomMetrics::register(&mut registry);
        let relay = RelayMetrics::register(&mut registry);
        Self {
            registry,
            connections,
            tests,
            gate_events,
            agent_replies,
            dnsbl_latency,
            dnsbl_lookups,
            user_routes,
            live,
            cache_lookups,
            reloads,
            handshakes,
            backend_lost,
            room,
            relay,
        }
    }
}

impl Metrics {
    /// Counts a connection's outcome.
    pub fn connection(&self, outcome: Outcome) {
        self.connections
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts a test result (`access`, `pregreet`, `dnsbl`).
    pub fn test(&self, test: &'static str, passed: bool) {
        self.tests
            .get_or_create(&TestLabels {
                test,
                result: if passed { "pass" } else { "fail" },
            })
            .inc();
    }

    /// Counts one agent-check reply (`ready`, `drain`, `down`).
    pub fn agent_reply(&self, state: &str) {
        let state = match state {
            "ready" => "ready",
            "drain" => "drain",
            _ => "down",
        };
        self.agent_replies
            .get_or_create(&ResultLabels { result: state })
            .inc();
    }

    /// Counts a pass cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        self.cache_lookups
            .get_or_create(&ResultLabels {
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }

    /// Counts a routing event of a cluster balanced by recipient.
    pub fn user_route(&self, event: &'static str) {
        self.user_routes
            .get_or_create(&UserRouteLabels { event })
            .inc();
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "refused" },
            })
            .inc();
    }

    /// Counts a relay-mode message's end.
    pub fn relay_message(&self, result: RelayResult) {
        self.relay.message(result);
    }

    /// Counts message bytes relayed to a relay-mode backend.
    pub fn relay_bytes(&self, bytes: usize) {
        self.relay.bytes(bytes);
    }

    /// Counts a backend lost while a client waited at `stage` (a verb
    /// doorman knows, or `END-OF-MESSAGE`; anything else counts as
    /// `other`, so a client cannot grow the label set).
    pub fn backend_lost(&self, stage: &str) {
        const STAGES: [&str; 14] = [
            "EHLO",
            "HELO",
            "MAIL",
            "RCPT",
            "DATA",
            "BDAT",
            "AUTH",
            "RSET",
            "NOOP",
            "QUIT",
            "VRFY",
            "ETRN",
            "END-OF-MESSAGE",
            "RELAY",
        ];
        let stage = STAGES.iter().find(|known| **known == stage).copied();
        self.backend_lost
            .get_or_create(&StageLabels {
                stage: stage.unwrap_or("other"),
            })
            .inc();
    }

    /// Counts a TLS handshake: its `result` and the `version` agreed
    /// (`none` when it failed).
    pub fn tls_handshake(&self, result: &'static str, version: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels { result, version })
            .inc();
    }

    /// Counts a client parked in the waiting room.
    pub fn parked(&self) {
        self.room.clients.inc();
    }

    /// Counts a client the waiting room handed back: `readable`, or at its
    /// deadline.
    pub fn resumed(&self, readable: bool) {
        self.room.clients.dec();
        if readable {
            self.room.readable.inc();
        } else {
            self.room.deadline.inc();
        }
    }

    /// The text exposition, with the state read at this scrape.
    pub fn render(&self, state: &live::Live<'_>) -> String {
        self.live.set(state);
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl doorman_gate_api::GateMetrics for Metrics {
    fn event(&self, gate: &'static str, event: &'static str) {
        self.gate_events
            .get_or_create(&GateEventLabels { gate, event })
            .inc();
    }

    fn lookup(&self, zone: &str, took: Duration, failed: bool) {
        self.dnsbl_latency
            .get_or_create(&SiteLabels {
                site: zone.to_string(),
            })
            .observe(took.as_secs_f64());
        self.dnsbl_lookups
            .get_or_create(&LookupLabels {
                site: zone.to_string(),
                result: if failed { "failed" } else { "ok" },
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::BackendStatus;

    #[test]
    fn exposition() {
        let metrics = Metrics::default();
        metrics.connection(Outcome::PassNew);
        metrics.connection(Outcome::PassNew);
        metrics.test("dnsbl", false);
        doorman_gate_api::GateMetrics::lookup(&metrics, "bl.test", Duration::from_millis(3), false);
        doorman_gate_api::GateMetrics::lookup(&metrics, "bl.test", Duration::from_millis(9), true);
        let text = metrics.render(&Live {
            backends: &[BackendStatus {
                address: "127.0.0.1:10026".parse().unwrap(),
                healthy: true,
                active: 2,
                weight: 3,
                cluster: "a".into(),
                draining: true,
            }],
            screening: 7,
            screening_limit: 100,
            store_up: false,
            store_writes: Some(crate::cache::embedded::WriteStats {
                commits: 3,
                last_commit: Duration::from_millis(250),
                last_lag: Duration::from_millis(1250),
                max_lag: Duration::from_secs(2),
            }),
            certificates: &[("/etc/doorman/mx.pem".into(), 1_900_000_000)],
        });
        for line in [
            "doorman_screening_clients 7",
            "doorman_screening_limit 100",
            "doorman_cache_store_up 0",
            "doorman_cache_commit_seconds 0.25",
            "doorman_cache_write_lag_seconds 1.25",
            "doorman_cache_write_lag_max_seconds 2.0",
            "doorman_tls_certificate_expiry_timestamp_seconds{certificate=\"/etc/doorman/mx.pem\"} 1900000000",
            "doorman_dnsbl_lookups_total{site=\"bl.test\",result=\"failed\"} 1",
            "doorman_dnsbl_lookups_total{site=\"bl.test\",result=\"ok\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
        assert!(
            text.contains("doorman_backend_cluster{backend=\"127.0.0.1:10026\",cluster=\"a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("doorman_backend_weight{backend=\"127.0.0.1:10026\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("doorman_backend_draining{backend=\"127.0.0.1:10026\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("doorman_connections_total{outcome=\"pass_new\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("doorman_tests_total{test=\"dnsbl\",result=\"fail\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("doorman_dnsbl_lookup_seconds_count{site=\"bl.test\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("doorman_backend_up{backend=\"127.0.0.1:10026\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("doorman_backend_connections{backend=\"127.0.0.1:10026\"} 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
