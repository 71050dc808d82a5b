//! The screening of one client: the connect gates, the pass cache, the
//! greet wait with the pregreet watch and the wait gates, and the verdict.

use super::*;

impl Session {
    /// Runs the tests: the connect gates, the pass cache, then the greet
    /// wait with the pregreet watch and the wait gates, and the verdict.
    pub(super) async fn screen(&mut self, client: Client) -> Phase {
        log::connect(client.address, client.destination);
        let shared = Arc::clone(&self.shared);
        self.cluster = shared
            .config
            .cluster_for(client.destination, self.listening)
            .to_string();
        let config = &shared.config;
        let pipeline = &shared.pipeline;
        let mut screening = TestRecord::default();
        // A cluster balanced by recipient sees every client's first RCPT:
        // even one that skips every test talks to the engine up to it.
        let by_recipient = self.engine_for_everyone();
        match pipeline.connect(&client, &self.process.metrics) {
            AtConnect::Permit => {
                self.count(Counted::Allowlisted);
                if by_recipient {
                    return untested_in_engine(client, config, Judged::NotGated);
                }
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
            Ok(place) => self.admitted = Some(place),
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
        let deep_due: Vec<DeepTest> = config
            .deep_tests
            .enabled()
            .filter(|deep| pipeline.deep && !passed(deep.name()))
            .collect();
        if !screening.failed() && !pregreet_due && !waits_due && deep_due.is_empty() {
            if previous.is_some() {
                self.count(Counted::PassOld);
                log::pass(client.address, false);
            } else {
                // No test due, but no record either: its network's
                // connection rate still counts it.
                if let Err(refusal) = self.process.limits.rate(client.ip(), &config.limits) {
                    return Box::pin(self.refuse(&client, refusal)).await;
                }
                self.count(Counted::Untested);
            }
            if pipeline.needs_dialogue(None) || by_recipient {
                return untested_in_engine(client, config, Judged::ByGates);
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
        let started = Instant::now();
        if pregreet_due {
            Box::pin(self.send(&reply::teaser(&banner))).await;
        }
        let waits = pipeline.start_waits(&client, |name| !passed(name));
        Phase::Wait(Box::new(GreetWait {
            client,
            screening,
            previous: previous.map(Box::new),
            pregreet_due,
            pregreeted: false,
            readable: false,
            deep_due,
            waits,
            started,
            deadline: started + self.greet_wait_time(),
        }))
    }

    /// The greet wait and its verdict; or, when only the client's first
    /// bytes (or the deadline) are left to wait for, the waiting room.
    pub(super) async fn wait(&mut self, mut waiting: Box<GreetWait>) -> Phase {
        match self.greet_wait(&mut waiting).await {
            WaitEnd::Over => {}
            WaitEnd::Park => return Phase::Park(waiting),
            WaitEnd::Ended(phase) => return phase,
        }
        if let Some(rejection) =
            self.judge_waits(&waiting.waits, &waiting.client, &mut waiting.screening)
        {
            return Box::pin(self.drop_client(&waiting.client, &rejection)).await;
        }
        let names = waiting.waits.names();
        let GreetWait {
            client,
            mut screening,
            previous,
            pregreet_due,
            pregreeted,
            deep_due,
            ..
        } = *waiting;
        if pregreet_due && !pregreeted {
            self.process.metrics.test("pregreet", true);
            screening.pass("pregreet", self.shared.config.greet.ttl);
        }
        let due = Due {
            pregreet: pregreet_due,
            pregreeted,
            deep: deep_due,
        };
        self.verdict(client, &screening, previous.map(|entry| *entry), due, names)
    }

    /// Watches for a pregreet while the wait gates look the client up,
    /// until the deadline or until the verdict cannot change; or until
    /// only the client's first bytes or the deadline are left to wait for,
    /// when the waiting room can hold the client for less.
    async fn greet_wait(&mut self, waiting: &mut GreetWait) -> WaitEnd {
        let config = Arc::clone(&self.shared.config);
        let client = &waiting.client;
        loop {
            if !self.buffer.is_empty() && !waiting.pregreeted {
                if starts_like_header(&self.buffer) == Prefix::Header {
                    let input = std::mem::take(&mut self.buffer);
                    return WaitEnd::Ended(Box::pin(self.refuse_header(client, &input)).await);
                }
                if waiting.pregreet_due {
                    waiting.pregreeted = true;
                    self.process.metrics.test("pregreet", false);
                    log::pregreet(client.address, &self.buffer, waiting.started.elapsed());
                    let rejection =
                        Rejection::new(config.greet.action, PREGREET_STATUS, PREGREET_TEXT);
                    if rejection.action == Action::Drop {
                        return WaitEnd::Ended(
                            Box::pin(self.drop_client(client, &rejection)).await,
                        );
                    }
                    waiting.screening.fail(rejection);
                }
            }
            // The wait ends as soon as its verdict cannot change: every
            // gate's answers are in, and the pregreet test is decided (the
            // client talked, or no test is due) or the full score allowlists
            // the client. A partial score never ends it (postscreen waits
            // for every reply before it allowlists).
            let answered = waiting.waits.is_complete();
            if answered
                && (!waiting.pregreet_due
                    || waiting.pregreeted
                    || (!waiting.screening.failed() && self.allowlisted(&waiting.waits, client)))
            {
                return WaitEnd::Over;
            }
            // Only the client's first bytes or the deadline can end it now.
            if answered
                && !waiting.readable
                && self.process.room.is_some()
                && waiting.deadline.saturating_duration_since(Instant::now()) >= PARK_AFTER
            {
                return WaitEnd::Park;
            }
            let watching = self.buffer.len() < EARLY_BYTES_CAP;
            tokio::select! {
                _ = sleep_until(waiting.deadline) => return WaitEnd::Over,
                _ = waiting.waits.progress(), if !answered => {}
                read = self.stream.read_buf(&mut self.buffer), if watching => match read {
                    Ok(0) | Err(_) => {
                        self.count(Counted::Hangup);
                        log::hangup(client.address, waiting.started.elapsed(), HangupPhase::BeforeHandshake);
                        log::disconnect(client.address);
                        return WaitEnd::Ended(Phase::Closed);
                    }
                    Ok(_) => {}
                },
            }
        }
    }

    /// Whether every client of the session's cluster talks to the engine,
    /// even one that skips every test: the cluster is balanced by
    /// recipient (its first RCPT picks the backend), its backends are in
    /// relay mode (doorman writes every message's trace), or doorman offers
    /// STARTTLS and the cluster has an XCLIENT backend (whose conversation
    /// doorman reads, so only doorman's own STARTTLS keeps it in sight).
    fn engine_for_everyone(&self) -> bool {
        let shared = &self.shared;
        shared.config.by_recipient(&self.cluster).is_some()
            || shared.pool.relays(&self.cluster)
            || (shared.tls.is_some() && shared.pool.trusts_doorman(&self.cluster))
    }

    /// The greet wait's length: `[greet] wait`, shorter under stress.
    fn greet_wait_time(&self) -> Duration {
        let wait = self.shared.config.greet.wait;
        if self.process.limits.stressed() {
            wait.min(STRESS_GREET_WAIT)
        } else {
            wait
        }
    }

    /// What happens to the client after the greet wait: the engine (a
    /// failure enforced, deep tests due, or a gate that wants its
    /// envelope) or a backend, its pass remembered.
    fn verdict(
        &mut self,
        client: Client,
        screening: &TestRecord,
        previous: Option<Entry>,
        due: Due,
        names: ClientNames,
    ) -> Phase {
        let shared = Arc::clone(&self.shared);
        let (config, pipeline) = (&shared.config, &shared.pipeline);
        // Only an enforced pregreet leaves the client without the engine's
        // 220 line: postscreen clears an ignored pregreet's failure at the
        // end of the wait, and then greets as usual.
        let pregreeted = due.pregreeted && config.greet.action == Action::Enforce;
        let by_recipient = self.engine_for_everyone();
        match screening.decide(previous.clone(), SystemTime::now()) {
            Decision::Enforce(rejection) => {
                self.count(Counted::Enforced);
                // Every deep test runs too, enabled or not, to improve the
                // logging (postscreen's "opportunistic" tests).
                let all = if pipeline.deep {
                    DeepTest::ALL.to_vec()
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
                    judged: Judged::ByGates,
                    transaction: 0,
                }))
            }
            // A doubtful client (or every client, for a gate that asks)
            // talks to the engine up to its RCPTs, like one with deep tests
            // due, so the engine gates see its envelope.
            // (An ignored failure does not spare a doubtful client.)
            Decision::HandOff { pass }
                if !due.deep.is_empty()
                    || pipeline.needs_dialogue(Some(screening.score().unwrap_or(0)))
                    || by_recipient =>
            {
                Phase::Engine(Box::new(EngineRun {
                    client,
                    rcpt: RcptPolicy::Pass,
                    pregreeted,
                    deep: DeepTests::new(due.deep, &config.deep_tests.forbidden_commands),
                    pass: pass.map(|entry| PendingPass { previous, entry }),
                    score: screening.score(),
                    names,
                    judged: Judged::ByGates,
                    transaction: 0,
                }))
            }
            Decision::HandOff { pass } => {
                match pass {
                    Some(entry) => self.store_pass(&client, previous, entry),
                    None if screening.is_undecided() && !screening.failed() => {
                        self.count(Counted::Undecided)
                    }
                    None => self.count(Counted::Ignored),
                }
                Phase::Handoff {
                    client,
                    teased: due.pregreet,
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
        screening: &mut TestRecord,
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
        screening.scored(judgement.rank());
        match judgement {
            Judgement::Listed { rank, reply } => {
                for (name, score) in &scores {
                    metrics.test(name, score.points() <= 0);
                }
                log::dnsbl_rank(client.address, rank);
                let rejection = Rejection {
                    action: self.shared.config.score.action,
                    reply,
                };
                if rejection.action == Action::Drop {
                    return Some(rejection);
                }
                screening.fail(rejection);
            }
            Judgement::Undecided { .. } => screening.undecided(),
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
                    screening.allowlist(ttl.unwrap_or(self.shared.config.shortest_ttl()));
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
}

/// A client in the greet wait, and what its screening learned so far.
#[derive(Debug)]
pub(super) struct GreetWait {
    client: Client,
    screening: TestRecord,
    /// The client's pass-cache record (boxed: most waiting clients are new).
    previous: Option<Box<Entry>>,
    /// The teaser went out: the pregreet test runs.
    pregreet_due: bool,
    /// The client talked before its turn.
    pregreeted: bool,
    /// The waiting room handed the client back readable: its bytes (or
    /// hang-up) are read before it may park again.
    readable: bool,
    /// The deep tests due after the wait.
    deep_due: Vec<DeepTest>,
    waits: Waits,
    started: Instant,
    deadline: Instant,
}

impl GreetWait {
    /// The waiting room handed the client back: `readable`, or at its
    /// deadline.
    pub(super) fn woken(&mut self, readable: bool) {
        self.readable = readable;
    }

    /// When the greet wait ends at the latest.
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// How the greet wait ended.
enum WaitEnd {
    /// Its verdict is in (or the deadline passed).
    Over,
    /// Only the client's first bytes or the deadline can end it: the
    /// waiting room can hold the client.
    Park,
    /// The connection ended (a hang-up, a drop, a PROXY header).
    Ended(Phase),
}

/// The least time left in a greet wait worth parking the client for.
const PARK_AFTER: Duration = Duration::from_millis(500);

/// Which tests the greet wait ran and the engine still has to.
struct Due {
    /// The teaser went out (the pregreet test ran).
    pregreet: bool,
    /// The client talked before its turn.
    pregreeted: bool,
    /// The deep tests due.
    deep: Vec<DeepTest>,
}

/// The engine for a client that skips every test but must reach its first
/// RCPT there (a gate asks for every client, or its cluster is balanced by
/// recipient): no teaser, no deep test, replayed at its first RCPT;
/// `judged` says whether the engine gates judge it (not for a client a
/// connect gate permitted).
fn untested_in_engine(client: Client, config: &crate::config::Config, judged: Judged) -> Phase {
    Phase::Engine(Box::new(EngineRun {
        client,
        rcpt: RcptPolicy::Pass,
        pregreeted: false,
        deep: DeepTests::new(Vec::new(), &config.deep_tests.forbidden_commands),
        pass: None,
        score: None,
        names: ClientNames::default(),
        judged,
        transaction: 0,
    }))
}
