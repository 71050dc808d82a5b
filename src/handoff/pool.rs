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

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use doorman_gate_api::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::balance::{self, Candidate};
use super::xclient;
use crate::config::{BackendConfig, BackendTls, PoolSection, SendProxy};
use crate::director::Director;
use crate::log;
use crate::proxy::write;
use crate::smtp::response::complete_reply;
use crate::tls::backend::BackendTlsClient;
use crate::tls::{Channel, TlsError, TlsSummary};
use tokio_util::sync::CancellationToken;

/// The longest reply doorman reads from a backend.
const REPLY_LIMIT: usize = 8192;

/// How long a backend may take to greet a client, or to answer a command
/// doorman replays for one (Postfix's smtpd may look the client up in DNS
/// before its banner).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// No backend took the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no backend accepted the connection")]
pub struct NoBackend;

/// One backend and what doorman knows of it.
#[derive(Debug)]
pub struct BackendState {
    /// Its config.
    pub config: BackendConfig,
    /// How doorman starts TLS with it.
    tls: BackendTlsClient,
    /// Whether its EHLO announced STARTTLS at the last good check.
    announces_starttls: AtomicBool,
    healthy: AtomicBool,
    /// Consecutive (successes, failures) of checks.
    streak: Mutex<(u32, u32)>,
    active: AtomicUsize,
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
}

/// The backends of one config.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Arc<BackendState>>,
    settings: PoolSection,
    hostname: String,
    tick: AtomicUsize,
    /// The EHLO keywords the last good check saw.
    keywords: Arc<Mutex<Option<Vec<String>>>>,
    /// The backends' runtime state.
    director: Arc<Director>,
}

impl Pool {
    /// A pool over `backends`; all count as healthy until the first checks.
    /// Fails when a backend's TLS settings (its CA file) cannot be used.
    pub fn new(
        backends: Vec<BackendConfig>,
        settings: PoolSection,
        hostname: &str,
        director: Arc<Director>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            backends: backends
                .into_iter()
                .map(|config| {
                    Ok(Arc::new(BackendState {
                        tls: BackendTlsClient::new(&config)?,
                        config,
                        announces_starttls: AtomicBool::new(false),
                        healthy: AtomicBool::new(true),
                        streak: Mutex::new((0, 0)),
                        active: AtomicUsize::new(0),
                    }))
                })
                .collect::<Result<_, TlsError>>()?,
            settings,
            hostname: hostname.to_string(),
            tick: AtomicUsize::new(0),
            keywords: Arc::new(Mutex::new(None)),
            director,
        })
    }

    /// Checks every backend once, all at once, and takes the results as
    /// their states.
    pub async fn check_all(&self) {
        let mut checks = tokio::task::JoinSet::new();
        for backend in &self.backends {
            let backend = Arc::clone(backend);
            let keywords_slot = Arc::clone(&self.keywords);
            let hostname = self.hostname.clone();
            checks.spawn(async move {
                let healthy = match probe(&backend.config, &hostname).await {
                    Ok(found) => {
                        backend.learn(found.as_deref());
                        if let (Some(found), Ok(mut keywords)) = (found, keywords_slot.lock()) {
                            *keywords = Some(found);
                        }
                        true
                    }
                    Err(error) => {
                        log::backend_check_failed(backend.config.address, &error);
                        false
                    }
                };
                backend.healthy.store(healthy, Ordering::SeqCst);
                if !healthy {
                    log::backend_state(backend.config.address, false);
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }

    /// Starts the periodic checks; they stop when the pool is dropped.
    pub fn start_checks(self: &Arc<Self>) {
        for index in 0..self.backends.len() {
            let pool = Arc::downgrade(self);
            tokio::spawn(check_loop(pool, index, self.settings.check_interval));
        }
    }

    /// The backends' EHLO keywords, as the last good check saw them.
    pub fn ehlo_keywords(&self) -> Option<Vec<String>> {
        self.keywords.lock().ok().and_then(|k| k.clone())
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
        tls: Option<TlsHandoff<'_>>,
    ) -> Result<Connected, NoBackend> {
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
                    usable: b.healthy.load(Ordering::SeqCst)
                        && b.config.cluster == cluster
                        && !state.drained
                        && weight > 0
                        && (b.config.max_connections == 0 || active < b.config.max_connections),
                }
            })
            .collect();
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        for index in balance::order(self.settings.balance, &candidates, client.ip(), tick) {
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
                    return Ok(Connected {
                        stream,
                        lease,
                        greeting,
                        pending,
                        flush: self.director.flush_token(backend.config.address),
                    })
                }
                Err(error) => {
                    log::backend_unreachable(backend.config.address, &error);
                    self.record(backend, false);
                }
            }
        }
        Err(NoBackend)
    }

    /// Counts a check result and changes the state after `rise`/`fall`.
    fn record(&self, backend: &BackendState, success: bool) {
        let Ok(mut streak) = backend.streak.lock() else {
            return;
        };
        *streak = if success {
            (streak.0.saturating_add(1), 0)
        } else {
            (0, streak.1.saturating_add(1))
        };
        let healthy = backend.healthy.load(Ordering::SeqCst);
        if !healthy && streak.0 >= self.settings.rise {
            backend.healthy.store(true, Ordering::SeqCst);
            log::backend_state(backend.config.address, true);
        } else if healthy && streak.1 >= self.settings.fall {
            backend.healthy.store(false, Ordering::SeqCst);
            log::backend_state(backend.config.address, false);
        }
    }
}

impl BackendState {
    /// Takes what a good check learned: whether the EHLO announced
    /// STARTTLS.
    fn learn(&self, keywords: Option<&[String]>) {
        let starttls = keywords.is_some_and(|keywords| {
            keywords
                .iter()
                .any(|keyword| keyword.eq_ignore_ascii_case("STARTTLS"))
        });
        self.announces_starttls.store(starttls, Ordering::Relaxed);
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

/// A client whose TLS doorman terminated, handed to a backend.
#[derive(Clone, Copy, Debug)]
pub struct TlsHandoff<'a> {
    /// The client's TLS session.
    pub summary: &'a TlsSummary,
    /// The client's EHLO line, sent before STARTTLS too.
    pub ehlo: &'a [u8],
}

async fn check_loop(pool: Weak<Pool>, index: usize, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(pool) = pool.upgrade() else { return };
        let backend = Arc::clone(&pool.backends[index]);
        let result = probe(&backend.config, &pool.hostname).await;
        match &result {
            Ok(Some(found)) => {
                backend.learn(Some(found));
                if let Ok(mut keywords) = pool.keywords.lock() {
                    *keywords = Some(found.clone());
                }
            }
            Ok(None) => {}
            Err(error) => log::backend_check_failed(backend.config.address, error),
        }
        pool.record(&backend, result.is_ok());
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
    let starttls = tls.filter(|_| state.takes_starttls());
    // A client whose TLS ends here, going on in plain text: a v2 header
    // says what its TLS was (HAProxy's SSL TLV).
    let ssl = match (tls, starttls) {
        (Some(handoff), None) => write::ssl_tlv(handoff.summary),
        _ => Vec::new(),
    };
    let (greeting, mut pending) = match backend.send_proxy {
        SendProxy::Xclient => (
            xclient_dialogue(&mut stream, backend, client, hostname).await?,
            BytesMut::new(),
        ),
        send_proxy => {
            let header = match send_proxy {
                SendProxy::V2 if ssl.is_empty() => {
                    write::encode_v2(client.address, client.destination)?
                }
                SendProxy::V2 => write::encode_v2_with_tlvs(
                    client.address,
                    client.destination,
                    &[(write::PP2_TYPE_SSL, &ssl)],
                    false,
                )?,
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
            let stream = start_tls(state, stream, &mut pending, handoff.ehlo).await?;
            Ok((stream, greeting, pending))
        }
        _ => Ok((Channel::Plain(stream), greeting, pending)),
    }
}

/// STARTTLS with a backend that greeted: the client's own EHLO, STARTTLS,
/// and the client handshake. Nothing may follow the backend's 220 before
/// the handshake (what did would be plaintext injected into TLS).
async fn start_tls(
    state: &BackendState,
    mut stream: TcpStream,
    pending: &mut BytesMut,
    ehlo: &[u8],
) -> io::Result<Channel<TcpStream>> {
    let refused = |step: &str, reply: &[u8]| {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("STARTTLS: {step}: {}", log::escape(reply, 200)),
        )
    };
    stream.write_all(ehlo).await?;
    let reply = read_reply(&mut stream, pending, REPLY_TIMEOUT).await?;
    if !reply.starts_with(b"250") {
        return Err(refused("EHLO refused", &reply));
    }
    stream.write_all(b"STARTTLS\r\n").await?;
    let reply = read_reply(&mut stream, pending, REPLY_TIMEOUT).await?;
    if !reply.starts_with(b"220") {
        return Err(refused("STARTTLS refused", &reply));
    }
    if !pending.is_empty() {
        return Err(refused("bytes after its 220 to STARTTLS", pending));
    }
    let session = timeout(REPLY_TIMEOUT, state.tls.connect(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "STARTTLS: handshake timed out"))?
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "STARTTLS: handshake: {}",
                    log::escape(error.to_string().as_bytes(), 200)
                ),
            )
        })?;
    Ok(Channel::Tls(Box::new(tokio_rustls::TlsStream::Client(
        session,
    ))))
}

/// Banner, EHLO (XCLIENT must be announced), XCLIENT, and the fresh 220.
async fn xclient_dialogue(
    stream: &mut TcpStream,
    backend: &BackendConfig,
    client: &Client,
    hostname: &str,
) -> io::Result<Vec<u8>> {
    let mut buffer = BytesMut::with_capacity(1024);
    let refused = |step: &str, reply: &[u8]| {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("XCLIENT {step}: {}", log::escape(reply, 200)),
        )
    };
    let banner = read_reply(stream, &mut buffer, backend.connect_timeout).await?;
    if !banner.starts_with(b"2") {
        return Err(refused("banner", &banner));
    }
    stream
        .write_all(format!("EHLO {hostname}\r\n").as_bytes())
        .await?;
    let ehlo = read_reply(stream, &mut buffer, backend.connect_timeout).await?;
    let attributes = match xclient::announced(&ehlo) {
        Some(attributes) if ehlo.starts_with(b"250") => attributes,
        _ => return Err(refused("not announced in EHLO", &ehlo)),
    };
    stream
        .write_all(xclient::command(client, &attributes).as_bytes())
        .await?;
    let greeting = read_reply(stream, &mut buffer, backend.connect_timeout).await?;
    if !greeting.starts_with(b"220") {
        return Err(refused("refused", &greeting));
    }
    Ok(greeting)
}

/// Reads one whole (multi-line) reply within `limit`; bytes after it stay
/// in `buffer`.
pub async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
    limit: Duration,
) -> io::Result<Vec<u8>> {
    loop {
        match complete_reply(buffer, REPLY_LIMIT) {
            Ok(Some(reply)) => return Ok(buffer.split_to(reply.length).to_vec()),
            Ok(None) => {}
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed reply {:?}", log::escape(buffer, 200)),
                ))
            }
        }
        let read = timeout(limit, stream.read_buf(buffer))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))??;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed the connection",
            ));
        }
    }
}

async fn connect(backend: &BackendConfig) -> io::Result<TcpStream> {
    let stream = timeout(backend.connect_timeout, TcpStream::connect(backend.address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Speaks to a backend as a health check: the check header (v2 `LOCAL`, or
/// a v1 line with doorman's own endpoints), a 2xx banner, EHLO (whose
/// keywords are returned, for the built-in engine to announce), then QUIT.
async fn probe(backend: &BackendConfig, hostname: &str) -> io::Result<Option<Vec<String>>> {
    let mut stream = connect(backend).await?;
    match backend.send_proxy {
        SendProxy::V2 => stream.write_all(write::V2_LOCAL).await?,
        SendProxy::V1 => {
            let line = write::encode_v1(stream.local_addr()?, stream.peer_addr()?);
            stream.write_all(&line).await?;
        }
        SendProxy::Xclient | SendProxy::None => {}
    }
    let mut buffer = BytesMut::with_capacity(512);
    let banner = read_reply(&mut stream, &mut buffer, backend.connect_timeout).await?;
    if !banner.starts_with(b"2") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("banner {:?}", log::escape(&banner, 100)),
        ));
    }
    // The EHLO keywords are a bonus: a backend that greets but does not
    // answer EHLO is still up.
    stream
        .write_all(format!("EHLO {hostname}\r\n").as_bytes())
        .await?;
    let ehlo = read_reply(&mut stream, &mut buffer, backend.connect_timeout)
        .await
        .ok()
        .map(|ehlo| keywords(&ehlo));
    let _ = stream.write_all(b"QUIT\r\n").await;
    Ok(ehlo)
}

/// The keywords of a 250 EHLO reply (every line after the first).
fn keywords(ehlo: &[u8]) -> Vec<String> {
    if !ehlo.starts_with(b"250") {
        return Vec::new();
    }
    String::from_utf8_lossy(ehlo)
        .lines()
        .skip(1)
        .filter_map(|line| line.get(4..))
        .map(|keyword| keyword.trim().to_string())
        .filter(|keyword| !keyword.is_empty())
        .collect()
}
