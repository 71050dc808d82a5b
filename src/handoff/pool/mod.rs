//! The backend pool: balancing, active and passive health, connection
//! limits, and the connection itself.
//!
//! Each backend is checked every `check_interval` the way doorman's own
//! clients reach it: the check header (a v2 `LOCAL`, or a v1 line with
//! doorman's own addresses), a 2xx banner, QUIT. `fall` failed checks take
//! it out, `rise` good ones bring it back, and a failed client connect
//! counts as a failed check. The first round runs before doorman serves, so
//! a dead backend is known from the start. A client goes to the backends in
//! the order [`balance::order`] gives, skipping those at `max_connections`,
//! and falls over to the next one within its connection.

mod health;
mod live;

pub use live::{BackendLive, Carried};

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use doorman_gate_api::Client;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::backend_io::{
    connect, probe, read_reply, start_tls, xclient_dialogue, TlsHandoff, REPLY_TIMEOUT,
};
use super::balance::{self, Affinity, Candidate};
use super::users::{UserMap, UserRoute};
use crate::config::{BackendConfig, BackendTls, Balance, ClusterSection, PoolSection, SendProxy};
use crate::director::Director;
use crate::log;
use crate::proxy::write;
use crate::tls::backend::BackendTlsClient;
use crate::tls::{Channel, TlsError};
use tokio_util::sync::CancellationToken;

/// No backend took the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no backend accepted the connection")]
pub struct NoBackend;

/// One backend and what doorman knows of it: its config, and its running
/// state ([`BackendLive`], which a reload carries over).
#[derive(Debug)]
pub struct BackendState {
    /// Its config.
    pub config: BackendConfig,
    /// How doorman starts TLS with it.
    tls: BackendTlsClient,
    /// What doorman learned of it while it runs.
    live: Arc<BackendLive>,
}

impl std::ops::Deref for BackendState {
    type Target = BackendLive;

    fn deref(&self) -> &BackendLive {
        &self.live
    }
}

/// A backend's state for metrics, logs and `doorman backend list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    /// The backend's address.
    pub address: SocketAddr,
    /// Whether health checks say it is up.
    pub healthy: bool,
    /// Its active client connections.
    pub active: usize,
    /// Its weight now (the operator's, else the config's).
    pub weight: u32,
    /// Its cluster (`""`: the default one).
    pub cluster: String,
    /// Whether it takes no new clients.
    pub draining: bool,
}

/// Whether the pool (or a cluster of it) can take a client now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// A backend is up and takes new clients.
    Ready,
    /// Backends are up, but every one is drained (or weighs 0): live
    /// sessions finish, new clients would be refused.
    Drained,
    /// No backend is up.
    Down,
}

/// A client's place at a backend; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    backend: Arc<BackendState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A backend connection that already knows the real client and has
/// greeted it.
#[derive(Debug)]
pub struct Connected {
    /// The connection, in TLS when the client's is and the backend takes
    /// STARTTLS.
    pub stream: Channel<TcpStream>,
    /// The client's place at the backend.
    pub lease: Lease,
    /// The backend's greeting (after XCLIENT, its fresh one): a 220, or the
    /// backend's own refusal of this client.
    pub greeting: Vec<u8>,
    /// Bytes the backend sent after its greeting.
    pub pending: BytesMut,
    /// Cancelled when the backend is flushed: the session ends.
    pub flush: CancellationToken,
    /// The backend's address.
    pub backend: SocketAddr,
    /// How it learns the client.
    pub send_proxy: SendProxy,
    /// Its EHLO keywords at its last good check (empty when unknown).
    pub keywords: Vec<String>,
}

/// The backends of one config.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Arc<BackendState>>,
    settings: PoolSection,
    hostname: String,
    tick: AtomicUsize,
    /// The backends' runtime state.
    director: Arc<Director>,
    /// The `[cluster.NAME]` sections.
    clusters: BTreeMap<String, ClusterSection>,
    /// Users' backends, for clusters balanced by recipient.
    users: UserMap,
    /// Cancelled when a reload replaced this pool: its checks stop (the
    /// new pool checks the backends it kept).
    retired: CancellationToken,
}

impl Pool {
    /// A pool over `backends`; all count as healthy until the first checks.
    /// Fails when a backend's TLS settings (its CA file) cannot be used.
    pub fn new(
        backends: Vec<BackendConfig>,
        settings: PoolSection,
        clusters: BTreeMap<String, ClusterSection>,
        hostname: &str,
        director: Arc<Director>,
        users: UserMap,
        carried: &Carried,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            backends: backends
                .into_iter()
                .map(|config| BackendState::new(config, carried).map(Arc::new))
                .collect::<Result<_, TlsError>>()?,
            settings,
            hostname: hostname.to_string(),
            tick: AtomicUsize::new(0),
            director,
            clusters,
            users,
            retired: CancellationToken::new(),
        })
    }

    /// Whether a client of `cluster` (of any cluster: `None`) could get a
    /// backend now: one is up and takes new clients (not drained, weight
    /// above 0); else whether the ones up are all drained, or none is up.
    /// The answer for HAProxy's checks, the agent and `/healthz`.
    pub fn availability(&self, cluster: Option<&str>) -> Availability {
        let mut availability = Availability::Down;
        for backend in &self.backends {
            if !backend.healthy.load(Ordering::SeqCst)
                || cluster.is_some_and(|c| backend.config.cluster != c)
            {
                continue;
            }
            let state = self.director.state(backend.config.address);
            if !state.drained && state.weight.unwrap_or(backend.config.weight) > 0 {
                return Availability::Ready;
            }
            availability = Availability::Drained;
        }
        availability
    }

    /// Every backend's state.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.backends
            .iter()
            .map(|b| {
                let state = self.director.state(b.config.address);
                BackendStatus {
                    address: b.config.address,
                    healthy: b.healthy.load(Ordering::SeqCst),
                    active: b.active.load(Ordering::SeqCst),
                    weight: state.weight.unwrap_or(b.config.weight),
                    cluster: b.config.cluster.clone(),
                    draining: state.drained || state.weight == Some(0),
                }
            })
            .collect()
    }

    /// The backends' addresses, in config order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.config.address).collect()
    }

    /// Connects `client` to the best backend of `cluster` that takes it,
    /// falling over to the next ones. `tls`: the client's TLS session,
    /// which doorman terminated; a backend whose STARTTLS fails counts as
    /// one that failed to connect.
    pub async fn connect(
        &self,
        client: &Client,
        cluster: &str,
        route: Option<UserRoute<'_>>,
        tls: Option<TlsHandoff<'_>>,
    ) -> Result<Connected, NoBackend> {
        for index in self.ranked(client, cluster, route.as_ref()).await {
            let backend = &self.backends[index];
            let active = backend.active.fetch_add(1, Ordering::SeqCst);
            let lease = Lease {
                backend: Arc::clone(backend),
            };
            if backend.config.max_connections > 0 && active >= backend.config.max_connections {
                continue;
            }
            match open(backend, client, &self.hostname, tls).await {
                Ok((stream, greeting, pending)) => {
                    if let Ok(mut served) = backend.served.lock() {
                        *served = Some(std::time::Instant::now());
                    }
                    if let Some(route) = &route {
                        self.users
                            .remember(
                                route,
                                backend.config.address,
                                self.flushes(backend.config.address),
                            )
                            .await;
                    }
                    return Ok(Connected {
                        stream,
                        lease,
                        greeting,
                        pending,
                        flush: self.director.flush_token(backend.config.address),
                        backend: backend.config.address,
                        send_proxy: backend.config.send_proxy,
                        keywords: backend
                            .keywords
                            .lock()
                            .ok()
                            .and_then(|k| k.clone())
                            .unwrap_or_default(),
                    });
                }
                Err(error) => {
                    log::backend_unreachable(backend.config.address, &error);
                    self.record(backend, false);
                }
            }
        }
        Err(NoBackend)
    }

    /// The backend a user of a cluster balanced by recipient goes to now,
    /// remembered for it: the one its next transaction would reach.
    pub async fn backend_for(&self, client: &Client, route: &UserRoute<'_>) -> Option<SocketAddr> {
        let first = *self
            .ranked(client, route.cluster, Some(route))
            .await
            .first()?;
        let address = self.backends[first].config.address;
        self.users
            .remember(route, address, self.flushes(address))
            .await;
        Some(address)
    }

    /// What `doorman user lookup` shows: the backend the user is
    /// remembered on (if any), and the one the hash gives now.
    pub async fn user_lookup(
        &self,
        client: &Client,
        route: &UserRoute<'_>,
    ) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let remembered = self.users.remembered(route, |b| self.flushes(b)).await;
        let hashed = self
            .order(client, route.cluster, Some(route), false)
            .first()
            .map(|&i| self.backends[i].config.address);
        (remembered, hashed)
    }

    /// How many times `backend` was flushed, fleet-wide.
    fn flushes(&self, backend: SocketAddr) -> u64 {
        self.director.state(backend).flushes
    }

    /// The users' assignments.
    pub fn users(&self) -> &UserMap {
        &self.users
    }

    /// `doorman user move`: the user's next transaction goes to `backend`,
    /// on every instance that shares the store. `false`: `backend` is not
    /// one of the cluster's.
    pub async fn move_user(&self, route: &UserRoute<'_>, backend: SocketAddr) -> bool {
        let known = self
            .backends
            .iter()
            .any(|b| b.config.address == backend && b.config.cluster == route.cluster);
        if known {
            self.users
                .remember(route, backend, self.flushes(backend))
                .await;
            self.users.count("moved");
        }
        known
    }

    /// The usable backends of `cluster` for this client (or user), best
    /// first.
    async fn ranked(
        &self,
        client: &Client,
        cluster: &str,
        route: Option<&UserRoute<'_>>,
    ) -> Vec<usize> {
        let mut order = self.order(client, cluster, route, false);
        if let Some(route) = route {
            let home = self
                .order(client, cluster, Some(route), true)
                .first()
                .map(|&i| self.backends[i].config.address);
            self.users
                .reorder(
                    route,
                    &mut order,
                    |i| self.backends[i].config.address,
                    |b| self.flushes(b),
                    home,
                )
                .await;
        }
        order
    }

    /// The balancer's ranking of `cluster`'s usable backends (with
    /// `every`, of all of them, as if each were up and had room).
    fn order(
        &self,
        client: &Client,
        cluster: &str,
        route: Option<&UserRoute<'_>>,
        every: bool,
    ) -> Vec<usize> {
        let candidates: Vec<Candidate> = self
            .backends
            .iter()
            .map(|b| {
                let active = b.active.load(Ordering::SeqCst);
                let state = self.director.state(b.config.address);
                let weight = state.weight.unwrap_or(b.config.weight);
                Candidate {
                    key: b.config.address.to_string(),
                    weight,
                    active,
                    usable: b.config.cluster == cluster
                        && weight > 0
                        && (every
                            || b.healthy.load(Ordering::SeqCst)
                                && !state.drained
                                && (b.config.max_connections == 0
                                    || active < b.config.max_connections)),
                }
            })
            .collect();
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let (balance, affinity) = match route {
            Some(route) => (Balance::Recipient, Affinity::User(route.user)),
            None => {
                let balance = self
                    .clusters
                    .get(cluster)
                    .and_then(|section| section.balance)
                    .filter(|balance| *balance != Balance::Recipient)
                    .unwrap_or(self.settings.balance);
                (balance, Affinity::Client(client.ip()))
            }
        };
        balance::order(balance, &candidates, affinity, tick)
    }
}

impl BackendState {
    /// A backend from its config, counted healthy until its first check.
    /// Fails when its TLS settings (its CA file) cannot be used.
    fn new(config: BackendConfig, carried: &Carried) -> Result<Self, TlsError> {
        Ok(Self {
            tls: BackendTlsClient::new(&config)?,
            live: carried.get(&config.address).cloned().unwrap_or_default(),
            config,
        })
    }

    /// Whether a client whose TLS doorman terminated reaches this backend
    /// over STARTTLS: as configured, else when its EHLO announces it.
    fn takes_starttls(&self) -> bool {
        match self.config.tls {
            Some(BackendTls::Starttls) => true,
            Some(BackendTls::None) => false,
            None => self.announces_starttls.load(Ordering::Relaxed),
        }
    }
}

/// Connects to one backend and tells it the real client: a PROXY header,
/// or the XCLIENT dialogue (whose fresh greeting is returned).
/// Connects, tells the backend who the client is, and reads its greeting.
/// A backend that dies or hangs before greeting is an error, so the client,
/// which has seen nothing of it yet, goes to the next backend.
async fn open(
    state: &BackendState,
    client: &Client,
    hostname: &str,
    tls: Option<TlsHandoff<'_>>,
) -> io::Result<(Channel<TcpStream>, Vec<u8>, BytesMut)> {
    let backend = &state.config;
    let mut stream = connect(backend).await?;
    let starttls = tls.filter(|handoff| match handoff.summary {
        Some(_) => state.takes_starttls(),
        None => state.config.tls == Some(BackendTls::Starttls),
    });
    // A client whose TLS ends here, going on in plain text: a v2 header
    // says what its TLS was (HAProxy's SSL TLV).
    let ssl = match (tls.and_then(|handoff| handoff.summary), starttls) {
        (Some(summary), None) => Some(write::ssl_tlv(summary)),
        _ => None,
    };
    let (greeting, mut pending) = match backend.send_proxy {
        SendProxy::Xclient => (
            xclient_dialogue(&mut stream, backend, client, hostname).await?,
            BytesMut::new(),
        ),
        send_proxy => {
            let header = match send_proxy {
                SendProxy::V2 => {
                    let tlvs: Vec<(u8, &[u8])> = ssl
                        .as_deref()
                        .map(|value| (write::PP2_TYPE_SSL, value))
                        .into_iter()
                        .collect();
                    write::encode_v2_with_tlvs(client.address, client.destination, &tlvs, false)?
                }
                SendProxy::V1 => write::encode_v1(client.address, client.destination),
                _ => Vec::new(),
            };
            if !header.is_empty() {
                stream.write_all(&header).await?;
            }
            let mut pending = BytesMut::new();
            let greeting = read_reply(&mut stream, &mut pending, REPLY_TIMEOUT).await?;
            (greeting, pending)
        }
    };
    match starttls {
        Some(handoff) if greeting.starts_with(b"220") => {
            let stream = start_tls(&state.tls, stream, &mut pending, handoff.ehlo).await?;
            Ok((stream, greeting, pending))
        }
        _ => Ok((Channel::Plain(stream), greeting, pending)),
    }
}
