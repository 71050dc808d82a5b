//! One client connection, start to finish.
//!
//! This is the one place where a connection does I/O and waits, and every
//! wait has a deadline. The connection moves through the [`Phase`]s:
//!
//! ```text
//! accept ─► peer listed? ─yes─► AwaitHeader ─► Screen(real client)
//!   │                              ├─► HealthCheck (v2 LOCAL, or the proxy's own address)
//!   │                              └─► Closed (421: timed out / invalid header)
//!   ├─no, listener "required" ─► Closed (no byte)
//!   └─no ─► Screen(peer)
//! Screen: access list ─► pass cache ─► Wait (teaser, pregreet, DNSBL)
//!   ⇅ Park (only the first bytes or the deadline left: the waiting room)
//!   ├─► Handoff ─► backend pool ─► relay ─► Closed
//!   ├─► Enforce (built-in engine, every RCPT refused) ─► Closed
//!   └─► Closed (drop: 521)
//! ```
//!
//! It is the one place that does a client's I/O; it names no gate (the
//! pipeline does). The client's socket ([`ClientSocket`]) joins tokio's
//! reactor only when the session first has to wait for it.

mod backend_side;
mod command;
mod conversation;
mod engine;
mod handoff;
mod header;
mod message;
mod parked;
mod relay_data;
mod relay_mode;

use parked::Parked;
mod screen;
mod socket;
pub use socket::ClientSocket;
#[cfg(test)]
mod tests;

use screen::GreetWait;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use doorman_gate_api::{Action, Client, ClientNames, Command, Envelope, Rejection, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::cache::Entry;
use crate::config::{ListenerConfig, ProxyMode};
use crate::deep::{AfterPass, DeepTest, DeepTests};
use crate::gates::{AtConnect, Waits};
use crate::handoff::users::UserRoute;
use crate::handoff::{
    read_reply, relay, Availability, Connected, Ended, RelayError, TlsHandoff, REPLY_TIMEOUT,
};
use crate::limits::{Place, Refusal, STRESS_GREET_WAIT};
use crate::log::{self, HangupPhase};
use crate::metrics::Outcome as Counted;
use crate::proxy::{self, starts_like_header, Header, Parsed, Prefix};
use crate::shared::{ConfigState, ProcessState};
use crate::smtp::engine::{Engine, EngineEvent, RcptPolicy, Step as EngineStep};
use crate::smtp::health::{self, CheckReply};
use crate::smtp::line::{next_line, replay_groups, Line};
use crate::smtp::reply;
use crate::tls::channel::write_flushed;
use crate::tls::Channel;
use crate::verdict::{Decision, Judgement, TestRecord, PREGREET_STATUS, PREGREET_TEXT};
use crate::waiting_room::{Resumable, Woken};
use conversation::Judged;
use handoff::{Answer, Replay};

/// How long doorman waits for each command of a health check.
const HEALTH_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest command line a health check may send.
const HEALTH_LINE_LIMIT: usize = 512;
/// How long a reply may take to leave, so a peer that does not read cannot
/// hold a session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many early bytes doorman reads during the greet wait; more stay in
/// the socket.
const EARLY_BYTES_CAP: usize = 4096;

/// Where a connection is.
#[derive(Debug)]
enum Phase {
    /// A listed proxy must send its PROXY header.
    AwaitHeader,
    /// The proxy's own health check; the address it checks, when its
    /// header named one (a v1 check line).
    HealthCheck(Option<SocketAddr>),
    /// The real client is known: run the tests.
    Screen(Client),
    /// The greet wait.
    Wait(Box<GreetWait>),
    /// The greet wait goes on in the waiting room, without a task.
    Park(Box<GreetWait>),
    /// Hand the client to a backend; `teased` when it saw the `220-` teaser,
    /// so the backend's greeting must complete it.
    Handoff {
        /// The client.
        client: Client,
        /// Whether the teaser was sent.
        teased: bool,
    },
    /// The built-in engine: it refuses every RCPT after a failed test, or
    /// runs the deep tests and, at the first RCPT, hands a client that
    /// passed them to a backend by replaying its dialogue.
    Engine(Box<EngineRun>),
    /// Nothing more to do.
    Closed,
}

impl Phase {
    /// Whether the phase talks with the client (rather than reading its
    /// PROXY header or screening it): its socket joins the reactor first.
    fn talks(&self) -> bool {
        matches!(
            self,
            Phase::HealthCheck(_) | Phase::Wait(_) | Phase::Handoff { .. } | Phase::Engine(_)
        )
    }
}

/// What the built-in engine is to do with one client.
#[derive(Debug)]
struct EngineRun {
    client: Client,
    rcpt: RcptPolicy,
    /// Whether the client pregreeted (it then gets no 220 line).
    pregreeted: bool,
    deep: DeepTests,
    /// The cache entry to complete with the deep tests' passes at RCPT;
    /// `None` when a test already failed.
    pass: Option<PendingPass>,
    /// The wait gates' summed score, when the client was scored.
    score: Option<i32>,
    /// The client's names, when a wait gate learned them.
    names: ClientNames,
    /// Whether the engine gates judge the client's commands (not for one a
    /// connect gate permitted, which skips every further test).
    judged: Judged,
    /// The transaction the client's accepted MAIL opened (see
    /// [`next_transaction`]).
    transaction: u64,
}

/// A number for a new message transaction, unique in the process: what
/// the gates see as `Envelope::transaction` from one accepted MAIL on.
fn next_transaction() -> u64 {
    static TRANSACTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    TRANSACTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The passes so far, waiting for the deep tests.
#[derive(Clone, Debug)]
struct PendingPass {
    previous: Option<Entry>,
    entry: Entry,
}

/// A client's socket: plain, or TLS once the engine started it.
pub type ClientStream = Channel<ClientSocket>;

/// A client connection and what doorman knows about it; `S` is its
/// socket (`()` while the waiting room holds the socket).
pub struct Session<S = ClientStream> {
    stream: S,
    peer: SocketAddr,
    /// The listener's configured address (the connection's own local
    /// address is looked up only for a client that is not behind a proxy).
    listening: SocketAddr,
    mode: ProxyMode,
    shared: Arc<ConfigState>,
    process: Arc<ProcessState>,
    /// The client's place in the total and per-client counts (given back
    /// when it ends).
    admitted: Option<Place>,
    /// The screening place, held during the greet wait and the engine.
    screening: Option<Place>,
    /// Bytes received but not yet used: the rest of a PROXY header, then the
    /// client's first bytes.
    buffer: BytesMut,
    /// The backend cluster the client goes to, resolved once, when the
    /// real client is known (`""`: the default cluster).
    cluster: String,
    /// The 4xx and 5xx replies the client has had (smtpd's error count).
    errors: usize,
    /// Whether the session's outcome is counted in the metrics (once).
    counted: AtomicBool,
}

impl Session {
    /// A session for an accepted connection on `listener`.
    pub fn new(
        stream: ClientSocket,
        peer: SocketAddr,
        listener: &ListenerConfig,
        shared: Arc<ConfigState>,
        process: Arc<ProcessState>,
    ) -> Self {
        Self {
            stream: Channel::Plain(stream),
            peer: canonical(peer),
            listening: listener.address,
            mode: listener.proxy,
            shared,
            process,
            admitted: None,
            screening: None,
            buffer: BytesMut::new(),
            cluster: String::new(),
            errors: 0,
            counted: AtomicBool::new(false),
        }
    }

    /// Runs the connection to its end, or until `cut` (the end of the
    /// shutdown grace period): a client that doorman itself is talking to
    /// (the built-in engine, a health check) then gets a 421 first. The
    /// `token` keeps the session counted, in the waiting room too.
    pub fn run(
        self,
        cut: CancellationToken,
        token: TaskTrackerToken,
    ) -> impl Future<Output = ()> + Send {
        let first = self.first_phase();
        self.run_from(first, cut, token)
    }

    /// The phases from `phase` on. (An `async` block, not an `async fn`:
    /// it uses its captures in place, where an `async fn` would keep a
    /// second copy of its arguments in every task.)
    #[allow(clippy::manual_async_fn)]
    fn run_from(
        mut self,
        mut phase: Phase,
        cut: CancellationToken,
        token: TaskTrackerToken,
    ) -> impl Future<Output = ()> + Send {
        async move {
            // Whether the built-in engine was the last to talk to the client.
            let mut in_engine = false;
            loop {
                let speaking = matches!(phase, Phase::Engine(_) | Phase::HealthCheck(_));
                if phase.talks() {
                    if let Channel::Plain(socket) = &mut self.stream {
                        socket.register();
                    }
                }
                if !matches!(phase, Phase::Closed) {
                    in_engine = matches!(phase, Phase::Engine(_));
                }
                // Each phase's future is boxed, so a connection only ever holds
                // the state of the phase it is in: a client waiting in the greet
                // phase does not carry the relay's or the engine's state.
                let step: Pin<Box<dyn Future<Output = Phase> + Send + '_>> = match phase {
                    Phase::AwaitHeader => Box::pin(self.read_proxy_header()),
                    Phase::HealthCheck(checked) => Box::pin(self.health_check(checked)),
                    Phase::Screen(client) => Box::pin(self.screen(client)),
                    Phase::Wait(waiting) => Box::pin(self.wait(waiting)),
                    Phase::Handoff { client, teased } => Box::pin(self.hand_off(client, teased)),
                    Phase::Engine(run) => Box::pin(self.engine(*run)),
                    Phase::Park(waiting) => return self.park(waiting, cut, token),
                    Phase::Closed => {
                        // A session that ended without an outcome of its
                        // own still counts once.
                        self.count(if in_engine {
                            Counted::Engine
                        } else {
                            Counted::Hangup
                        });
                        return;
                    }
                };
                let next = tokio::select! {
                    next = step => Some(next),
                    _ = cut.cancelled() => None,
                };
                match next {
                    Some(next) => phase = next,
                    None => {
                        self.count(Counted::Shutdown);
                        if speaking {
                            // Boxed: every connection's task would carry it.
                            Box::pin(self.send(reply::SHUTTING_DOWN)).await;
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Hands the client to the waiting room, or, without one (or when its
    /// socket cannot leave the runtime), ends the session.
    fn park(self, waiting: Box<GreetWait>, cut: CancellationToken, token: TaskTrackerToken) {
        let Some(room) = self.process.room.clone() else {
            return;
        };
        let (stream, mut session) = self.with_stream(());
        // A parked client holds no buffer (it has sent nothing).
        session.buffer = BytesMut::new();
        let Some(stream) = stream.into_plain() else {
            return;
        };
        match stream.into_std() {
            Ok(stream) => {
                session.process.metrics.parked();
                room.park(
                    stream,
                    waiting.deadline().into_std(),
                    Box::new(Parked {
                        session,
                        waiting: *waiting,
                        cut,
                        token,
                        home: tokio::runtime::Handle::current(),
                    }),
                )
            }
            Err(error) => log::waiting_room_failed(&error),
        }
    }
    fn first_phase(&self) -> Phase {
        if self.shared.config.proxy_hosts.contains(self.peer.ip()) {
            return Phase::AwaitHeader;
        }
        let local = self
            .stream
            .plain()
            .and_then(|stream| stream.local_addr().ok())
            .map_or(self.listening, canonical);
        match self.mode {
            ProxyMode::Required => {
                self.count(Counted::ProxyRefused);
                log::not_a_proxy(self.peer, local);
                Phase::Closed
            }
            ProxyMode::Optional => Phase::Screen(Client {
                address: self.peer,
                destination: local,
                tlvs: Vec::new(),
            }),
        }
    }
}

/// What a client's socket must be for the phases that do not need a TCP
/// socket as such: any byte stream, plain or (inside [`Channel`]) TLS; in
/// tests, an in-process duplex stream.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for S {}

impl<S: ClientIo> Session<Channel<S>> {
    /// A client that is not a listed proxy sent a PROXY header (`input`),
    /// before its handoff or in the middle of the relay: Haraka's soft
    /// refusal, and the connection closes.
    async fn refuse_header(&mut self, client: &Client, input: &[u8]) -> Phase {
        self.count(Counted::ProxyRefused);
        log::proxy_not_allowed(client.address, input);
        self.send(&reply::proxy_not_allowed(client.address.ip()))
            .await;
        Phase::Closed
    }

    /// Remembers the client's passes (`previous`: what was kept before),
    /// counts and logs `PASS NEW` or `PASS OLD`.
    fn store_pass(&mut self, client: &Client, previous: Option<Entry>, entry: Entry) {
        self.count(if previous.is_none() {
            Counted::PassNew
        } else {
            Counted::PassOld
        });
        self.remember(client, entry);
        log::pass(client.address, previous.is_none());
    }

    /// The one place a client's passes are written to the pass cache.
    fn remember(&self, client: &Client, entry: Entry) {
        self.shared.cache.put(client.ip(), entry);
    }

    /// A limit refused the client: postscreen's reply and log line.
    async fn refuse(&mut self, client: &Client, refusal: Refusal) -> Phase {
        self.count(Counted::Limited);
        let reply = match refusal {
            Refusal::PerClient => {
                log::too_many_connections(client.address);
                reply::TOO_MANY_CONNECTIONS.to_string()
            }
            Refusal::Screening => {
                log::screening_busy(client.address);
                reply::SCREENING_PORTS_BUSY.to_string()
            }
            Refusal::NetworkScreening(network) => {
                log::network_screening_busy(client.address, network);
                reply::SCREENING_PORTS_BUSY.to_string()
            }
            Refusal::Rate(count) => {
                log::connection_rate_exceeded(client.address, count);
                reply::too_many_connections_from(&self.shared.config.hostname, client.ip())
            }
            Refusal::AggregateRate(network, count) => {
                log::aggregate_rate_exceeded(client.address, network, count);
                reply::too_many_connections_from(&self.shared.config.hostname, client.ip())
            }
            Refusal::Total => {
                log::total_busy(client.address);
                reply::SERVER_PORTS_BUSY.to_string()
            }
        };
        self.send(&reply).await;
        Phase::Closed
    }

    /// The `drop` action: the test's 521 reply, then close.
    async fn drop_client(&mut self, client: &Client, rejection: &Rejection) -> Phase {
        self.count(Counted::Dropped);
        self.send(&rejection.drop_reply()).await;
        log::disconnect(client.address);
        Phase::Closed
    }

    /// Counts the session's outcome, the first one only: a session is
    /// counted once in `doorman_connections_total`.
    fn count(&self, outcome: Counted) {
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.process.metrics.connection(outcome);
        }
    }

    /// Reads more client bytes within `limit`.
    async fn read_within(&mut self, limit: Duration) -> Read {
        self.buffer.reserve(512);
        match timeout(limit, self.stream.read_buf(&mut self.buffer)).await {
            Err(_) => Read::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
            Ok(Ok(_)) => Read::Data,
        }
    }

    /// Sends a reply; a peer that is gone or does not read is not an error
    /// here, the session ends anyway.
    async fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes()).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        if matches!(bytes.first(), Some(b'4' | b'5')) {
            self.errors += 1;
        }
        let _ = timeout(WRITE_TIMEOUT, write_flushed(&mut self.stream, bytes)).await;
    }
}

impl<S> Session<S> {
    /// The same session on `stream`, and the socket it had.
    fn with_stream<T>(self, stream: T) -> (S, Session<T>) {
        let Session {
            stream: had,
            peer,
            listening,
            mode,
            shared,
            process,
            admitted,
            screening,
            buffer,
            cluster,
            errors,
            counted,
        } = self;
        let session = Session {
            stream,
            peer,
            listening,
            mode,
            shared,
            process,
            admitted,
            screening,
            buffer,
            cluster,
            errors,
            counted,
        };
        (had, session)
    }
}

/// The outcome of a read with a deadline.
enum Read {
    /// Bytes arrived.
    Data,
    /// The peer closed or the socket failed.
    Closed,
    /// Nothing arrived in time.
    TimedOut,
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}
