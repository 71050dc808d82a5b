//! Relay mode's counters: the messages doorman relayed into backends
//! that learn the client from its `Received:` header, by how each ended,
//! and the bytes it relayed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// How a relay-mode message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayResult {
    /// The backend accepted it (`2xx` to the end of DATA).
    Accepted,
    /// The backend refused it (a `4xx`/`5xx`, at DATA or at its end).
    Rejected,
    /// doorman refused it before the backend saw it (hops, header size).
    Refused,
    /// The backend was lost or too slow: the client got `451 4.3.0`.
    Failed,
}

impl RelayResult {
    fn label(self) -> &'static str {
        match self {
            RelayResult::Accepted => "accepted",
            RelayResult::Rejected => "rejected",
            RelayResult::Refused => "refused",
            RelayResult::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The relay-mode counters.
#[derive(Debug)]
pub(super) struct RelayMetrics {
    messages: Family<ResultLabels, Counter>,
    bytes: Counter,
}

impl RelayMetrics {
    /// Registers the counters.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let messages = Family::<ResultLabels, Counter>::default();
        registry.register(
            "doorman_relay_messages",
            "Relay-mode messages by result: accepted or rejected by the backend, refused by doorman (hops, header size), failed (backend lost)",
            messages.clone(),
        );
        let bytes = Counter::default();
        registry.register(
            "doorman_relay_bytes",
            "Message bytes relayed to relay-mode backends, doorman's Received header included",
            bytes.clone(),
        );
        Self { messages, bytes }
    }

    /// Counts one message's end.
    pub(super) fn message(&self, result: RelayResult) {
        self.messages
            .get_or_create(&ResultLabels {
                result: result.label(),
            })
            .inc();
    }

    /// Counts bytes relayed.
    pub(super) fn bytes(&self, bytes: usize) {
        self.bytes.inc_by(bytes as u64);
    }
}
