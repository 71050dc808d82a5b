//! The backends' runtime state, over the config's list: drained or not,
//! a weight of the operator's, and flushes, after Dovecot's director.
//!
//! The config file stays the source of the backend list; this overlays it
//! and outlives reloads. Each change is written to the cache store's
//! records: with Redis every doorman sharing it reads the change within one
//! `check_interval` (a fleet acts as one); with the embedded store it
//! survives restarts of this instance. A flush ends the backend's relayed
//! sessions `flush_grace` after it is asked for, on every instance.
//!
//! It imports nothing from the crate: the pool and the stores use it, not
//! the other way round.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use doorman_gate_api::RecordStore;
use tokio_util::sync::CancellationToken;

/// The prefix of the backends' state records in the store. The local
/// stores keep these outside their `[cache] max_records` cap: they are an
/// operator's choices, one per backend, which no flood of clients' records
/// may evict.
pub const STATE_PREFIX: &str = "director:";

/// How long a state record is kept in the store.
const KEEP: Duration = Duration::from_secs(10 * 365 * 86400);

/// One backend's runtime state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// No new clients; live sessions go on.
    pub drained: bool,
    /// The operator's weight instead of the config's; 0 drains.
    pub weight: Option<u32>,
    /// How many flushes were asked for (fleet-wide).
    pub flushes: u64,
}

impl State {
    fn encode(self) -> String {
        format!(
            "{};{};{}",
            u8::from(self.drained),
            self.weight.map_or("-".to_string(), |w| w.to_string()),
            self.flushes
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut fields = text.split(';');
        let drained = fields.next()? == "1";
        let weight = match fields.next()? {
            "-" => None,
            number => Some(number.parse().ok()?),
        };
        let flushes = fields.next()?.parse().ok()?;
        Some(Self {
            drained,
            weight,
            flushes,
        })
    }
}

/// What a change asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// No new clients.
    Drain,
    /// New clients again, at the weight an operator set (as Dovecot's
    /// `doveadm director up` keeps a host's vhost count), or the config's
    /// when none was set or it was 0.
    Undrain,
    /// This share of clients; 0 drains.
    Weight(u32),
    /// End the live sessions after `flush_grace`, and drain.
    Flush,
}

/// The runtime state of every backend this process has seen.
pub struct Director {
    states: Mutex<HashMap<SocketAddr, State>>,
    /// Cancelled when a backend's sessions are to end.
    flush_tokens: Mutex<HashMap<SocketAddr, CancellationToken>>,
    store: Mutex<Option<Arc<dyn RecordStore>>>,
}

impl std::fmt::Debug for Director {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Director")
            .field("states", &self.states)
            .finish()
    }
}

impl Default for Director {
    fn default() -> Self {
        Self {
            states: Mutex::new(HashMap::new()),
            flush_tokens: Mutex::new(HashMap::new()),
            store: Mutex::new(None),
        }
    }
}

fn key(backend: SocketAddr) -> String {
    format!("{STATE_PREFIX}{backend}")
}

impl Director {
    /// Keeps the state in `store` from now on.
    pub fn keep_in(&self, store: Arc<dyn RecordStore>) {
        if let Ok(mut slot) = self.store.lock() {
            *slot = Some(store);
        }
    }

    /// A backend's state.
    pub fn state(&self, backend: SocketAddr) -> State {
        self.states
            .lock()
            .ok()
            .and_then(|states| states.get(&backend).copied())
            .unwrap_or_default()
    }

    /// The token a session on `backend` ends on, when it is flushed.
    pub fn flush_token(&self, backend: SocketAddr) -> CancellationToken {
        self.flush_tokens
            .lock()
            .map(|mut tokens| tokens.entry(backend).or_default().clone())
            .unwrap_or_default()
    }

    /// Applies `change` to `backend`, here and in the store; the new state.
    pub async fn change(&self, backend: SocketAddr, change: Change, grace: Duration) -> State {
        // Read, changed and written under one lock: a sync landing in
        // between cannot be lost, nor undo the change.
        let (previous, state) = {
            let Ok(mut states) = self.states.lock() else {
                return self.state(backend);
            };
            let previous = states.get(&backend).copied();
            let mut state = previous.unwrap_or_default();
            match change {
                Change::Drain => state.drained = true,
                Change::Undrain => {
                    state.drained = false;
                    // A weight of 0 is a drain too: undrained, the config's.
                    state.weight = state.weight.filter(|weight| *weight > 0);
                }
                Change::Weight(weight) => state.weight = Some(weight),
                Change::Flush => {
                    state.drained = true;
                    state.flushes += 1;
                }
            }
            states.insert(backend, state);
            (previous, state)
        };
        self.taken(backend, previous, state, grace, true);
        let store = self.store.lock().ok().and_then(|store| store.clone());
        if let Some(store) = store {
            let _ = store.put(&key(backend), &state.encode(), KEEP).await;
        }
        state
    }

    /// Reads the store's state of `backends` (another instance's changes),
    /// flushing here what was flushed elsewhere.
    pub async fn sync(&self, backends: &[SocketAddr], grace: Duration) {
        let store = self.store.lock().ok().and_then(|store| store.clone());
        let Some(store) = store else {
            return;
        };
        for backend in backends {
            match store.get(&key(*backend)).await {
                Ok(Some(text)) => match State::decode(&text) {
                    Some(state) => self.take(*backend, state, grace, false),
                    None => tracing::warn!(
                        "warning: director: ignoring an unreadable state for {backend} in the store"
                    ),
                },
                // No record yet: the backend is seen, so its first flush
                // elsewhere flushes here too.
                Ok(None) => {
                    if let Ok(mut states) = self.states.lock() {
                        states.entry(*backend).or_default();
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Takes `state` for `backend`; a new flush ends its sessions after
    /// `grace`. A state read from the store for a backend this process has
    /// not seen yet (at start) flushes nothing: those flushes are old.
    fn take(&self, backend: SocketAddr, state: State, grace: Duration, asked_here: bool) {
        let previous = match self.states.lock() {
            Ok(mut states) => states.insert(backend, state),
            Err(_) => return,
        };
        self.taken(backend, previous, state, grace, asked_here);
    }

    /// What follows a backend's new state (`previous`: the one it
    /// replaced): a flush counted here starts the grace period, and a
    /// change is logged.
    fn taken(
        &self,
        backend: SocketAddr,
        previous: Option<State>,
        state: State,
        grace: Duration,
        asked_here: bool,
    ) {
        let known = previous.is_some() || asked_here;
        let previous = previous.unwrap_or_default();
        if known && state.flushes > previous.flushes {
            let token = self.flush_token(backend);
            if let Ok(mut tokens) = self.flush_tokens.lock() {
                tokens.insert(backend, CancellationToken::new());
            }
            tracing::warn!("director: flushing {backend} in {grace:?}");
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                token.cancel();
            });
        }
        if state != previous {
            tracing::info!("director: {backend} {}", describe(state));
        }
    }
}

/// A state in words, for logs and replies.
pub fn describe(state: State) -> String {
    let weight = state
        .weight
        .map_or("config weight".to_string(), |w| format!("weight {w}"));
    format!(
        "{}, {weight}",
        if state.drained {
            "draining"
        } else {
            "in service"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for state in [
            State::default(),
            State {
                drained: true,
                weight: Some(0),
                flushes: 3,
            },
        ] {
            assert_eq!(State::decode(&state.encode()), Some(state));
        }
        assert_eq!(State::decode("garbage"), None);
        assert_eq!(State::decode("1;x;0"), None);
    }
}
