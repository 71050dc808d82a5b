//! The waiting room's gauge and counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WokenLabels {
    woken: &'static str,
}

/// The waiting room's gauge and counters, their series made once (a
/// flood parks and wakes thousands of clients a second).
#[derive(Debug)]
pub(super) struct RoomMetrics {
    pub(super) clients: Gauge,
    pub(super) readable: Counter,
    pub(super) deadline: Counter,
}

impl RoomMetrics {
    /// Registers the gauge and the counters.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let clients = Gauge::default();
        registry.register(
            "doorman_waiting_room_clients",
            "Clients in the greet wait held by the waiting room, without a task",
            clients.clone(),
        );
        let returns = Family::<WokenLabels, Counter>::default();
        registry.register(
            "doorman_waiting_room_returns",
            "Clients the waiting room handed back, by why: first bytes (or a hangup) or deadline",
            returns.clone(),
        );
        let readable = returns
            .get_or_create(&WokenLabels { woken: "readable" })
            .clone();
        let deadline = returns
            .get_or_create(&WokenLabels { woken: "deadline" })
            .clone();
        Self {
            clients,
            readable,
            deadline,
        }
    }
}
