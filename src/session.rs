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
//! Screen: access list ─► pass cache ─► greet wait (teaser, pregreet, DNSBL)
//!   ├─► Handoff ─► backend pool ─► relay ─► Closed
//!   ├─► Enforce (built-in engine, every RCPT refused) ─► Closed
//!   └─► Closed (drop: 521)
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use doorman_gate_api::{Action, Client, ClientNames, Command, Envelope, Rejection, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::cache::Entry;
use crate::cache::Test;
use crate::config::{ActionName, AfterPass, DeepTestConfig, DeepTestsSection};
use crate::config::{ListenerConfig, ProxyMode};
use crate::gates::{AtConnect, Waits};
use crate::handoff::gated::{relay_gated, Gated, Gates};
use crate::handoff::{read_reply, relay, Connected, RelayError, REPLY_TIMEOUT};
use crate::limits::{Place, Refusal, STRESS_GREET_WAIT};
use crate::log::{self, Stage};
use crate::metrics::Outcome as Counted;
use crate::proxy::{self, starts_like_header, Header, Parsed, Prefix};
use crate::screen::{Decision, Judgement, Screening, PREGREET_REPLY};
use crate::shared::{Process, Shared};
use crate::smtp::deep::{DeepTest, DeepTests, NON_SMTP_DROP_REPLY};
use crate::smtp::engine::{Engine, EngineEvent, RcptPolicy, Step as EngineStep};
use crate::smtp::health::{self, Step};
use crate::smtp::line::{next_line, Line};
use crate::smtp::reply;

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
    /// The proxy's own health check.
    HealthCheck,
    /// The real client is known: run the tests.
    Screen(Client),
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
}

/// The passes so far, waiting for the deep tests.
#[derive(Clone, Debug)]
struct PendingPass {
    previous: Option<Entry>,
    entry: Entry,
}

/// A client connection and what doorman knows about it.
pub struct Session {
    stream: TcpStream,
    peer: SocketAddr,
    /// The listener's configured address (the connection's own local
    /// address is looked up only for a client that is not behind a proxy).
    listening: SocketAddr,
    mode: ProxyMode,
    shared: Arc<Shared>,
    process: Process,
    /// The counted places this client holds (given back when it ends).
    places: Vec<Place>,
    /// The screening place, held during the greet wait and the engine.
    screening: Option<Place>,
    /// Bytes received but not yet used: the rest of a PROXY header, then the
    /// client's first bytes.
    buffer: BytesMut,
}

impl Session {
    /// A session for an accepted connection on `listener`.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        listener: &ListenerConfig,
        shared: Arc<Shared>,
        process: Process,
    ) -> Self {
        Self {
            stream,
            peer: canonical(peer),
            listening: listener.address,
            mode: listener.proxy,
            shared,
            process,
            places: Vec::new(),
            screening: None,
            buffer: BytesMut::new(),
        }
    }

    /// Runs the connection to its end, or until `cut` (the end of the
    /// shutdown grace period): a client that doorman itself is talking to
    /// (the built-in engine, a health check) then gets a 421 first.
    pub async fn run(mut self, cut: CancellationToken) {
        let _ = self.stream.set_nodelay(true);
        let mut phase = self.first_phase();
        loop {
            let speaking = matches!(phase, Phase::Engine(_) | Phase::HealthCheck);
            // Each phase's future is boxed, so a connection only ever holds
            // the state of the phase it is in: a client waiting in the greet
            // phase does not carry the relay's or the engine's state.
            let step: Pin<Box<dyn Future<Output = Phase> + Send + '_>> = match phase {
                Phase::AwaitHeader => Box::pin(self.read_proxy_header()),
                Phase::HealthCheck => Box::pin(self.health_check()),
                Phase::Screen(client) => Box::pin(self.screen(client)),
                Phase::Handoff { client, teased } => Box::pin(self.hand_off(client, teased)),
                Phase::Engine(run) => Box::pin(self.engine(*run)),
                Phase::Closed => return,
            };
            let next = tokio::select! {
                next = step => Some(next),
                _ = cut.cancelled() => None,
            };
            match next {
                Some(next) => phase = next,
                None => {
                    if speaking {
                        // Boxed: every connection's task would carry it.
                        Box::pin(self.send(reply::SHUTTING_DOWN)).await;
                    }
                    return;
                }
            }
        }
    }

    fn first_phase(&self) -> Phase {
        if self.shared.config.proxy_hosts.contains(self.peer.ip()) {
            return Phase::AwaitHeader;
        }
        let local = canonical(self.stream.local_addr().unwrap_or(self.listening));
        match self.mode {
            ProxyMode::Required => {
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

    /// Reads the header of a listed proxy within `proxy.timeout`.
    async fn read_proxy_header(&mut self) -> Phase {
        let deadline = Instant::now() + self.shared.config.proxy.timeout;
        loop {
            match proxy::parse(&self.buffer) {
                Ok(Parsed::Complete { header, length }) => {
                    let _ = self.buffer.split_to(length);
                    if self.buffer.is_empty() {
                        // A waiting client holds no buffer until it talks.
                        self.buffer = BytesMut::new();
                    }
                    return self.after_header(header);
                }
                Ok(Parsed::Incomplete) => {}
                Err(error) => {
                    self.count(Counted::ProxyRefused);
                    log::proxy_invalid(self.peer, &error, &self.buffer);
                    self.send(reply::INVALID_PROXY_HEADER).await;
                    return Phase::Closed;
                }
            }
            self.buffer.reserve(256);
            match timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Err(_) => {
                    self.count(Counted::ProxyRefused);
                    log::proxy_timeout(self.peer);
                    self.send(reply::PROXY_TIMED_OUT).await;
                    return Phase::Closed;
                }
                Ok(Ok(0)) => {
                    log::proxy_eof(self.peer, &self.buffer);
                    return Phase::Closed;
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    log::proxy_read_error(self.peer, &error);
                    return Phase::Closed;
                }
            }
        }
    }

    /// A v2 LOCAL header, or a header whose source is itself a listed proxy,
    /// is a health check; any other header names the real client.
    fn after_header(&self, header: Header) -> Phase {
        match header {
            Header::Local => Phase::HealthCheck,
            Header::Proxied { source, .. }
                if self.shared.config.proxy_hosts.contains(source.ip()) =>
            {
                Phase::HealthCheck
            }
            Header::Proxied {
                source,
                destination,
                tlvs,
            } => Phase::Screen(Client {
                address: source,
                destination,
                tlvs,
            }),
        }
    }

    /// Answers a health check: a single-line 220 when a backend is alive
    /// (421 when none is), then HELO/EHLO/NOOP/RSET/QUIT. Logged at debug
    /// level only.
    async fn health_check(&mut self) -> Phase {
        self.count(Counted::HealthCheck);
        let alive = self.shared.pool.any_healthy();
        log::health_check(self.peer, alive);
        if !alive {
            self.send(reply::SERVER_PORTS_BUSY).await;
            return Phase::Closed;
        }
        let hostname = self.shared.config.hostname.clone();
        self.send(&reply::health_banner(&hostname)).await;
        for _ in 0..health::MAX_COMMANDS {
            let line = loop {
                match next_line(&mut self.buffer, HEALTH_LINE_LIMIT) {
                    Ok(Some(line)) => break line,
                    Ok(None) => {}
                    Err(_) => {
                        self.send(&reply::service_unavailable(&hostname)).await;
                        log::health_check_ended(self.peer, "line too long");
                        return Phase::Closed;
                    }
                }
                match self.read_within(HEALTH_COMMAND_TIMEOUT).await {
                    Read::TimedOut => {
                        self.send(&reply::timeout_exceeded(&hostname)).await;
                        log::health_check_ended(self.peer, "timeout");
                        return Phase::Closed;
                    }
                    Read::Closed => {
                        log::health_check_ended(self.peer, "hang-up");
                        return Phase::Closed;
                    }
                    Read::Data => {}
                }
            };
            match health::answer(&line, &hostname) {
                Step::Reply(text) => self.send(&text).await,
                Step::ReplyAndClose(text) => {
                    self.send(&text).await;
                    return Phase::Closed;
                }
            }
        }
        self.send(&reply::service_unavailable(&hostname)).await;
        log::health_check_ended(self.peer, "too many commands");
        Phase::Closed
    }

    /// Runs the tests: the connect gates, the pass cache, then the greet
    /// wait with the pregreet watch and the wait gates, and the verdict.
    async fn screen(&mut self, client: Client) -> Phase {
        log::connect(client.address, client.destination);
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let pipeline = &shared.pipeline;
        let mut screening = Screening::default();
        match pipeline.connect(&client, &self.process.metrics) {
            AtConnect::Permit => {
                self.count(Counted::Allowlisted);
                return Phase::Handoff {
                    client,
                    teased: false,
                };
            }
            AtConnect::Drop(rejection) => {
                return Box::pin(self.drop_client(&client, &rejection)).await
            }
            AtConnect::Go(failures) => failures.into_iter().for_each(|r| screening.fail(r)),
        }
        match self.process.limits.admit(client.ip(), &config.limits) {
            Ok((total, per_client)) => self.places.extend([total, per_client]),
            Err(refusal) => return Box::pin(self.refuse(&client, refusal)).await,
        }
        let now = SystemTime::now();
        // Awaits other than the greet wait's are boxed: the future a waiting
        // client holds is as large as its largest await, and the cache
        // lookup (Redis, redb) or a reply's write would otherwise set that.
        let previous = Box::pin(shared.cache.get(client.ip())).await;
        self.process.metrics.cache_lookup(previous.is_some());
        let passed = |name: &str| {
            previous
                .as_ref()
                .is_some_and(|entry| entry.passed_gate(name, now))
        };
        let banner = config.greet_banner();
        let pregreet_due = pipeline.pregreet && !banner.is_empty() && !passed("pregreet");
        let waits_due = pipeline.wait_gates().any(|name| !passed(name));
        let deep_due: Vec<DeepTest> = deep_tests(&config.deep_tests)
            .into_iter()
            .filter(|(deep, _, _)| pipeline.deep && !passed(deep.name()))
            .map(|(deep, _, _)| deep)
            .collect();
        if !screening.failed() && !pregreet_due && !waits_due && deep_due.is_empty() {
            if previous.is_some() {
                self.count(Counted::PassOld);
                log::pass(client.address, false);
            } else {
                self.count(Counted::Untested);
            }
            if pipeline.needs_dialogue(None) {
                return Phase::Engine(Box::new(EngineRun {
                    client,
                    rcpt: RcptPolicy::Pass,
                    pregreeted: false,
                    deep: DeepTests::new(Vec::new(), &config.deep_tests.forbidden_commands),
                    pass: None,
                    score: None,
                    names: ClientNames::default(),
                }));
            }
            return Phase::Handoff {
                client,
                teased: false,
            };
        }

        // A returning client (its record is within retention) is tested
        // again without a screening place: a flood that fills the limit
        // must not lock out known senders whose passes lapsed.
        // Only a client without a record counts towards its network's
        // connection rate: cached clients are never rate-limited.
        if previous.is_none() {
            let place = self
                .process
                .limits
                .rate(client.ip(), &config.limits)
                .and_then(|()| self.process.limits.screen(client.ip(), &config.limits));
            match place {
                Ok(place) => self.screening = Some(place),
                Err(refusal) => return Box::pin(self.refuse(&client, refusal)).await,
            }
        }
        let wait = if self.process.limits.stressed() {
            config.greet.wait.min(STRESS_GREET_WAIT)
        } else {
            config.greet.wait
        };
        let started = Instant::now();
        let deadline = started + wait;
        if pregreet_due {
            Box::pin(self.send(&format!("220-{banner}\r\n"))).await;
        }
        let mut waits = pipeline.start_waits(&client, |name| !passed(name));
        let mut pregreeted = false;
        loop {
            if !self.buffer.is_empty() && !pregreeted {
                if starts_like_header(&self.buffer) == Prefix::Header {
                    return Box::pin(self.proxy_not_allowed(&client)).await;
                }
                if pregreet_due {
                    pregreeted = true;
                    self.process.metrics.test("pregreet", false);
                    log::pregreet(client.address, &self.buffer, started.elapsed());
                    let rejection =
                        Rejection::new(config.greet.action.into(), PREGREET_REPLY.to_string());
                    if rejection.action == Action::Drop {
                        return Box::pin(self.drop_client(&client, &rejection)).await;
                    }
                    screening.fail(rejection);
                }
            }
            // The wait ends as soon as its verdict cannot change: every
            // gate's answers are in, and the pregreet test is decided (the
            // client talked, or no test is due) or the full score allowlists
            // the client. A partial score never ends it (postscreen waits
            // for every reply before it allowlists).
            let answered = waits.is_complete();
            if answered
                && (!pregreet_due
                    || pregreeted
                    || (!screening.failed() && self.allowlisted(&waits, &client)))
            {
                break;
            }
            let watching = self.buffer.len() < EARLY_BYTES_CAP;
            tokio::select! {
                _ = sleep_until(deadline) => break,
                _ = waits.progress(), if !answered => {}
                read = self.stream.read_buf(&mut self.buffer), if watching => match read {
                    Ok(0) | Err(_) => {
                        self.count(Counted::Hangup);
                        log::hangup(client.address, started.elapsed(), Stage::BeforeHandshake);
                        log::disconnect(client.address);
                        return Phase::Closed;
                    }
                    Ok(_) => {}
                },
            }
        }

        if let Some(rejection) = self.judge_waits(&waits, &client, &mut screening) {
            return Box::pin(self.drop_client(&client, &rejection)).await;
        }
        let names = waits.names();
        drop(waits);
        if pregreet_due && !pregreeted {
            self.process.metrics.test("pregreet", true);
            screening.pass("pregreet", config.greet.ttl);
        }
        // Only an enforced pregreet leaves the client without the engine's
        // 220 line: postscreen clears an ignored pregreet's failure at the
        // end of the wait, and then greets as usual.
        let pregreeted = pregreeted && config.greet.action == ActionName::Enforce;
        match screening.decide(previous.clone(), SystemTime::now()) {
            Decision::Enforce(rejection) => {
                self.count(Counted::Enforced);
                // Every deep test runs too, enabled or not, to improve the
                // logging (postscreen's "opportunistic" tests).
                let all = if pipeline.deep {
                    vec![
                        DeepTest::Pipelining,
                        DeepTest::NonSmtpCommand,
                        DeepTest::BareNewline,
                    ]
                } else {
                    Vec::new()
                };
                Phase::Engine(Box::new(EngineRun {
                    client,
                    rcpt: RcptPolicy::Refuse(rejection.enforce_reply()),
                    pregreeted,
                    deep: DeepTests::new(all, &config.deep_tests.forbidden_commands),
                    pass: None,
                    score: screening.score(),
                    names,
                }))
            }
            // A doubtful client (or every client, for a gate that asks)
            // talks to the engine up to its RCPTs, like one with deep tests
            // due, so the engine gates see its envelope.
            Decision::HandOff { pass }
                if !deep_due.is_empty()
                    || (!screening.failed()
                        && pipeline.needs_dialogue(Some(screening.score().unwrap_or(0)))) =>
            {
                Phase::Engine(Box::new(EngineRun {
                    client,
                    rcpt: RcptPolicy::Pass,
                    pregreeted,
                    deep: DeepTests::new(deep_due, &config.deep_tests.forbidden_commands),
                    pass: pass.map(|entry| PendingPass { previous, entry }),
                    score: screening.score(),
                    names,
                }))
            }
            Decision::HandOff { pass } => {
                match pass {
                    Some(entry) => {
                        self.count(if previous.is_none() {
                            Counted::PassNew
                        } else {
                            Counted::PassOld
                        });
                        shared.cache.put(client.ip(), entry);
                        log::pass(client.address, previous.is_none());
                    }
                    None if screening.is_undecided() && !screening.failed() => {
                        self.count(Counted::Undecided)
                    }
                    None => self.count(Counted::Ignored),
                }
                Phase::Handoff {
                    client,
                    teased: pregreet_due,
                }
            }
        }
    }

    /// Judges the wait gates' summed score, as postscreen judges its DNSBL
    /// score: a listing is logged and recorded (returned when its action is
    /// `drop`), a complete score passes each gate (or allowlists every
    /// test), and a partial one leaves the client undecided.
    fn judge_waits(
        &self,
        waits: &Waits,
        client: &Client,
        screening: &mut Screening,
    ) -> Option<Rejection> {
        let scores = waits.scores();
        if scores.is_empty() {
            return None;
        }
        let metrics = &self.process.metrics;
        let judgement = self
            .shared
            .thresholds
            .judge(scores.iter().map(|(_, score)| score), client.ip());
        let (Judgement::Listed { rank, .. }
        | Judgement::Allowlisted { rank }
        | Judgement::Clean { rank }) = judgement;
        screening.scored(rank);
        match judgement {
            Judgement::Listed { rank, reply_text } => {
                for (name, score) in &scores {
                    metrics.test(name, score.points() <= 0);
                }
                log::dnsbl_rank(client.address, rank);
                let rejection = Rejection::new(self.shared.config.dnsbl.action.into(), reply_text);
                if rejection.action == Action::Drop {
                    return Some(rejection);
                }
                screening.fail(rejection);
            }
            _ if !waits.is_complete() => screening.undecided(),
            judgement => {
                for (name, score) in &scores {
                    metrics.test(name, true);
                    if let Some(ttl) = score.ttl {
                        screening.pass(name, ttl);
                    }
                }
                if matches!(judgement, Judgement::Allowlisted { .. }) && !screening.failed() {
                    let ttl = scores.iter().filter_map(|(_, score)| score.ttl).min();
                    screening.allowlist(ttl.unwrap_or(self.shared.config.dnsbl.min_ttl));
                }
            }
        }
        None
    }

    /// Whether the wait gates' complete score allowlists the client.
    fn allowlisted(&self, waits: &Waits, client: &Client) -> bool {
        let scores = waits.scores();
        matches!(
            self.shared
                .thresholds
                .judge(scores.iter().map(|(_, score)| score), client.ip()),
            Judgement::Allowlisted { .. }
        )
    }

    /// A client that is not a listed proxy sent a PROXY header.
    async fn proxy_not_allowed(&mut self, client: &Client) -> Phase {
        self.count(Counted::ProxyRefused);
        log::proxy_not_allowed(client.address, &self.buffer);
        self.send(&reply::proxy_not_allowed(client.address.ip()))
            .await;
        Phase::Closed
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

    /// The built-in engine's dialogue: deep tests on every line, the
    /// engine's replies, and at RCPT a refusal or, for a client that passed,
    /// the replay into a backend (or postscreen's 450, with `reconnect`).
    async fn engine(&mut self, mut run: EngineRun) -> Phase {
        let config = Arc::clone(&self.shared.config);
        if !run.pregreeted {
            let banner = config.greet_banner();
            let banner = if banner.is_empty() {
                format!("{} ESMTP", config.hostname)
            } else {
                banner
            };
            self.send(&format!("220 {banner}\r\n")).await;
        }
        let client = run.client.clone();
        // A client that may be replayed into a backend is promised what the
        // backend offers; one that is refused gets postscreen's list.
        let keywords = match run.rcpt {
            RcptPolicy::Pass => self.shared.pool.ehlo_keywords(),
            RcptPolicy::Refuse(_) => None,
        };
        let mut engine = Engine::new(
            &config.hostname,
            run.rcpt.clone(),
            config.engine.command_limit,
            keywords,
        );
        let started = Instant::now();
        loop {
            let step: EngineStep = match next_line(&mut self.buffer, config.engine.line_length) {
                Err(_) => engine.line_too_long(),
                Ok(Some(line)) => {
                    for violation in run.deep.inspect(&line, &self.buffer, engine.after()) {
                        log::deep_violation(client.address, &violation);
                        self.process.metrics.test(violation.test.name(), false);
                        match deep_action(&config.deep_tests, violation.test) {
                            Action::Drop => {
                                let reply = if violation.test == DeepTest::NonSmtpCommand {
                                    NON_SMTP_DROP_REPLY.to_string()
                                } else {
                                    format!("521 {}\r\n", violation.test.reply_text())
                                };
                                self.count(Counted::Dropped);
                                self.send(&reply).await;
                                log::disconnect(client.address);
                                return Phase::Closed;
                            }
                            Action::Enforce => {
                                run.pass = None;
                                engine
                                    .refuse_with(format!("550 {}\r\n", violation.test.reply_text()))
                            }
                            // postscreen counts an ignored deep-test failure
                            // as a pass until the shortest TTL of any test.
                            Action::Ignore => {}
                        }
                    }
                    match self.ask_gates(&engine, &line, &client, &run).await {
                        Some(rejection) if rejection.action == Action::Drop => {
                            self.count(Counted::Dropped);
                            self.send(&rejection.drop_reply()).await;
                            log::disconnect(client.address);
                            return Phase::Closed;
                        }
                        Some(rejection) => engine.refuse(&line, rejection.enforce_reply()),
                        None => engine.command(&line),
                    }
                }
                Ok(None) => match self.read_within(config.engine.command_time).await {
                    Read::Data => continue,
                    Read::TimedOut => engine.timed_out(),
                    Read::Closed => {
                        self.count(Counted::Hangup);
                        log::hangup(client.address, started.elapsed(), Stage::AfterHandshake);
                        log::disconnect(client.address);
                        return Phase::Closed;
                    }
                },
            };
            match step.event {
                Some(EngineEvent::Passed(transaction)) => {
                    self.record_deep_passes(&mut run);
                    match config.deep_tests.after_pass {
                        // A client in the engine only for the gates (no
                        // deep test due) is always replayed.
                        _ if config.deep_tests.after_pass == AfterPass::Replay
                            || run.deep.enabled().is_empty() =>
                        {
                            let mut envelope = engine.envelope();
                            envelope.score = run.score;
                            envelope.names = run.names.clone();
                            envelope.recipients.push(transaction.refused.to.clone());
                            let mut lines: Vec<Vec<u8>> =
                                transaction.helo_line.into_iter().collect();
                            lines.push(transaction.mail_line);
                            lines.push(transaction.rcpt_line);
                            return self.replay(client, lines, Some(envelope)).await;
                        }
                        _ => {
                            let reply = reply::RCPT_DEFERRED.to_string();
                            let mut refused = transaction.refused;
                            refused.reply = reply.trim_end().to_string();
                            self.send(&reply).await;
                            log::noqueue_rcpt(client.address, &refused);
                            engine.refuse_with(reply);
                            run.pass = None;
                            continue;
                        }
                    }
                }
                Some(EngineEvent::HandOffAt(command)) => {
                    // STARTTLS or AUTH: only the backend can answer them, so
                    // the unfinished deep tests are not remembered.
                    if let Some(pass) = run.pass.take() {
                        self.store_pass(&client, pass.previous, pass.entry);
                    }
                    let mut lines: Vec<Vec<u8>> = engine.helo_line().into_iter().collect();
                    lines.push(command);
                    return self.replay(client, lines, None).await;
                }
                _ => {}
            }
            self.send(&step.reply).await;
            match &step.event {
                Some(EngineEvent::Refused(refused)) => log::noqueue_rcpt(client.address, refused),
                Some(EngineEvent::NoValidRcpt(verb)) => log::no_valid_rcpt(client.address, verb),
                Some(EngineEvent::Limit(limit)) => {
                    log::command_limit(client.address, *limit, engine.after())
                }
                _ => {}
            }
            if step.close {
                log::disconnect(client.address);
                return Phase::Closed;
            }
        }
    }

    /// Asks the engine gates about `line` when it is a HELO/EHLO, MAIL or
    /// RCPT the engine would take: the refusal to answer it with, if a gate
    /// refuses it (an `ignore` refusal is only logged by its gate).
    async fn ask_gates(
        &self,
        engine: &Engine,
        line: &Line,
        client: &Client,
        run: &EngineRun,
    ) -> Option<Rejection> {
        let (stage, argument) = engine.question(line)?;
        let mut envelope = engine.envelope();
        envelope.score = run.score;
        envelope.names = run.names.clone();
        let command = Command {
            stage,
            argument: &argument,
            envelope: &envelope,
        };
        match self.shared.pipeline.command(client, command).await {
            Verdict::Reject(rejection) if rejection.action != Action::Ignore => Some(rejection),
            _ => None,
        }
    }

    /// The client reached RCPT with no deep test failed under `enforce`:
    /// each enabled deep test passed, and the cache learns it with the
    /// test's TTL, or with the shortest TTL of any test when it failed
    /// under `ignore` (postscreen's "temporarily allowlist until something
    /// expires").
    fn record_deep_passes(&mut self, run: &mut EngineRun) {
        let Some(pass) = run.pass.take() else {
            return;
        };
        let now = SystemTime::now();
        let mut entry = pass.entry;
        let config = &self.shared.config;
        for (deep, test, settings) in deep_tests(&config.deep_tests) {
            if !run.deep.enabled().contains(&deep) {
                continue;
            }
            if run.deep.has_failed(deep) {
                entry.record(test, now, config.shortest_ttl());
            } else {
                self.process.metrics.test(deep.name(), true);
                entry.record(test, now, settings.ttl());
            }
        }
        self.store_pass(&run.client, pass.previous, entry);
    }

    /// Remembers a pass and logs `PASS NEW` (or `PASS OLD`).
    fn store_pass(&mut self, client: &Client, previous: Option<Entry>, entry: Entry) {
        self.count(if previous.is_none() {
            Counted::PassNew
        } else {
            Counted::PassOld
        });
        self.shared.cache.put(client.ip(), entry);
        log::pass(client.address, previous.is_none());
    }

    /// Hands a client that is mid-dialogue to a backend: the backend's
    /// greeting is consumed, the client's own `lines` (HELO/EHLO, MAIL,
    /// RCPT; or EHLO and STARTTLS/AUTH) are sent one by one, and the client
    /// gets the backend's answer to its pending command, or the first
    /// refusal, so it never gets a reply it did not ask for. Then relays.
    /// With `gated`, the envelope so far, the engine gates go on judging
    /// the client's MAIL and RCPT commands until its DATA (see
    /// [`relay_gated`]).
    async fn replay(
        &mut self,
        client: Client,
        lines: Vec<Vec<u8>>,
        gated: Option<Envelope>,
    ) -> Phase {
        self.connect_and_relay(client, false, lines, gated).await
    }

    /// Connects the client to a backend and relays until both sides are
    /// done. A client that saw the teaser gets the backend's greeting only
    /// when it is a 220; otherwise doorman completes the greeting itself and
    /// refuses the next command.
    async fn hand_off(&mut self, client: Client, teased: bool) -> Phase {
        self.connect_and_relay(client, teased, Vec::new(), None)
            .await
    }

    /// The handoff itself: a backend, its greeting (forwarded for a plain
    /// handoff, consumed for a replay), the replayed `lines`, the relay.
    async fn connect_and_relay(
        &mut self,
        client: Client,
        teased: bool,
        lines: Vec<Vec<u8>>,
        gated: Option<Envelope>,
    ) -> Phase {
        self.screening = None;
        let shared = Arc::clone(&self.shared);
        let Connected {
            stream: mut backend,
            lease: _lease,
            greeting,
            mut pending,
        } = match shared.pool.connect(&client).await {
            Ok(connected) => connected,
            Err(_) => {
                self.count(Counted::NoBackend);
                log::all_server_ports_busy(client.address);
                return self.refuse_busy(teased).await;
            }
        };
        let replaying = !lines.is_empty();
        let welcome = greeting.starts_with(b"220");
        if !replaying && (welcome || !teased) {
            // A plain handoff gets the backend's greeting as it is, its own
            // refusal of the client included.
            self.send_bytes(&greeting).await;
        } else if !welcome {
            log::backend_refused(client.address, backend.peer_addr().ok(), &greeting);
            self.count(Counted::NoBackend);
            return self.refuse_busy(teased).await;
        }
        let count = lines.len();
        for (index, line) in lines.into_iter().enumerate() {
            let answer = match backend.write_all(&line).await {
                Ok(()) => read_reply(&mut backend, &mut pending, REPLY_TIMEOUT).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(answer) if index + 1 == count => self.send_bytes(&answer).await,
                Ok(answer) if answer.starts_with(b"2") => {}
                Ok(refusal) => {
                    log::replay_refused(client.address, &line, &refusal);
                    self.send_bytes(&refusal).await;
                    break;
                }
                Err(error) => {
                    log::relay_error(client.address, &error);
                    return self.refuse_busy(false).await;
                }
            }
        }
        if let Some(envelope) = gated {
            let gates = Gates {
                pipeline: &shared.pipeline,
                client: &client,
                envelope,
                line_limit: shared.config.engine.line_length,
                command_time: shared.config.engine.command_time,
            };
            let gated = relay_gated(
                &mut self.stream,
                &mut self.buffer,
                &mut backend,
                &mut pending,
                gates,
            )
            .await;
            match gated {
                Ok(Gated::HandOver) => {}
                Ok(Gated::Closed) => return Phase::Closed,
                Err(RelayError::ProxyHeader(input)) => {
                    return Box::pin(self.refuse_header(&client, &input)).await
                }
                Err(RelayError::Io(error)) => {
                    log::relay_error(client.address, &error);
                    return Phase::Closed;
                }
            }
        }
        if !pending.is_empty() {
            self.send_bytes(&pending).await;
        }
        let early = std::mem::take(&mut self.buffer);
        match relay(&mut self.stream, backend, early).await {
            Ok(()) => {}
            Err(RelayError::ProxyHeader(input)) => {
                return self.refuse_header(&client, &input).await;
            }
            Err(RelayError::Io(error)) => log::relay_error(client.address, &error),
        }
        Phase::Closed
    }

    /// A client sent a PROXY header after the handoff: refused, never
    /// forwarded.
    async fn refuse_header(&mut self, client: &Client, input: &[u8]) -> Phase {
        self.count(Counted::ProxyRefused);
        log::proxy_not_allowed(client.address, input);
        self.send(&reply::proxy_not_allowed(client.address.ip()))
            .await;
        Phase::Closed
    }

    /// No backend: `421 4.3.2 All server ports are busy`. After the teaser
    /// the 421 cannot follow a `220-` line, so doorman first completes the
    /// greeting and gives the 421 to the client's next command, as postscreen
    /// does.
    async fn refuse_busy(&mut self, teased: bool) -> Phase {
        if teased {
            let hostname = self.shared.config.hostname.clone();
            self.send(&format!("220 {hostname} ESMTP\r\n")).await;
            let limit = self.shared.config.engine.line_length;
            while matches!(next_line(&mut self.buffer, limit), Ok(None)) {
                if !matches!(self.read_within(HEALTH_COMMAND_TIMEOUT).await, Read::Data) {
                    break;
                }
            }
        }
        self.send(reply::SERVER_PORTS_BUSY).await;
        Phase::Closed
    }

    fn count(&self, outcome: Counted) {
        self.process.metrics.connection(outcome);
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
        let _ = timeout(WRITE_TIMEOUT, self.stream.write_all(bytes)).await;
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

/// The deep tests that are enabled, with their cache test and settings.
fn deep_tests(section: &DeepTestsSection) -> Vec<(DeepTest, Test, &DeepTestConfig)> {
    [
        (DeepTest::Pipelining, Test::Pipelining, &section.pipelining),
        (
            DeepTest::NonSmtpCommand,
            Test::NonSmtpCommand,
            &section.non_smtp_command,
        ),
        (
            DeepTest::BareNewline,
            Test::BareNewline,
            &section.bare_newline,
        ),
    ]
    .into_iter()
    .filter(|(_, _, settings)| settings.enable)
    .collect()
}

/// A deep test's action, with postscreen's defaults: pipelining enforce,
/// non-SMTP commands drop, bare newlines ignore.
fn deep_action(section: &DeepTestsSection, test: DeepTest) -> Action {
    match test {
        DeepTest::Pipelining => section.pipelining.action_or(ActionName::Enforce),
        DeepTest::NonSmtpCommand => section.non_smtp_command.action_or(ActionName::Drop),
        DeepTest::BareNewline => section.bare_newline.action_or(ActionName::Ignore),
    }
    .into()
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}
