//! The built-in engine's dialogue: deep tests on every line, the engine
//! gates at HELO, MAIL and RCPT, and at RCPT a refusal or the replay.

use super::command::Incoming;
use super::*;
use crate::smtp::engine::Transaction;
use crate::smtp::response::keyword_name;

impl<S: ClientIo> Session<Channel<S>> {
    /// The built-in engine (see [`Session::dialogue`]). A client that
    /// leaves before its passes are recorded at RCPT (QUIT, a hang-up, a
    /// greylisted RCPT) still has its pregreet pass remembered, as
    /// postscreen remembers each test a client finished, so its next visit
    /// skips the greet wait. The score's tests are judged again: selective
    /// greylisting relies on it.
    pub(super) async fn engine(&mut self, mut run: EngineRun) -> Phase {
        let phase = self.dialogue(&mut run).await;
        if let Some(pass) = run.pass.take() {
            let mut kept = pass.previous.unwrap_or_default();
            let later = pass
                .entry
                .expiry("pregreet")
                .filter(|at| kept.expiry("pregreet").is_none_or(|before| *at > before));
            if let Some(at) = later {
                kept.record_until("pregreet", at);
                self.remember(&run.client, kept);
            }
        }
        phase
    }

    /// The built-in engine's dialogue: deep tests on every line, the
    /// engine's replies, and at RCPT a refusal or, for a client that passed,
    /// the replay into a backend (or postscreen's 450, with `reconnect`).
    async fn dialogue(&mut self, run: &mut EngineRun) -> Phase {
        let config = Arc::clone(&self.shared.config);
        if !run.pregreeted {
            let banner = config.greet_banner();
            let banner = if banner.is_empty() {
                format!("{} ESMTP", config.hostname)
            } else {
                banner
            };
            self.send(&reply::greeting(&banner)).await;
        }
        let client = run.client.clone();
        let mut engine = self.new_engine(run);
        let started = Instant::now();
        loop {
            let step: EngineStep = match self.next_command().await {
                Incoming::TooLong => engine.line_too_long(),
                Incoming::Line(line) => match self.answer_line(&mut engine, run, &line).await {
                    Ok(step) => step,
                    Err(phase) => return phase,
                },
                Incoming::TimedOut => engine.timed_out(),
                Incoming::Closed => {
                    self.count(Counted::Hangup);
                    log::hangup(
                        client.address,
                        started.elapsed(),
                        HangupPhase::AfterHandshake,
                    );
                    log::disconnect(client.address);
                    return Phase::Closed;
                }
            };
            match step.event {
                Some(EngineEvent::Passed(transaction)) => {
                    match self.passed(&mut engine, run, *transaction).await {
                        Some(phase) => return phase,
                        None => continue,
                    }
                }
                Some(EngineEvent::HandOffAt(command)) => {
                    return self.hand_off_at(&engine, run, command).await
                }
                _ => {}
            }
            self.send(&step.reply).await;
            if step.event == Some(EngineEvent::StartTls) {
                if !self.start_tls(&client).await {
                    log::disconnect(client.address);
                    return Phase::Closed;
                }
                engine.tls_started();
                continue;
            }
            match &step.event {
                Some(EngineEvent::Refused(refused)) => log::noqueue_rcpt(client.address, refused),
                Some(EngineEvent::NoValidRcpt(verb)) => log::no_valid_rcpt(client.address, verb),
                Some(EngineEvent::Limit(limit)) => {
                    log::command_limit(client.address, limit.as_str(), engine.after())
                }
                _ => {}
            }
            if step.close {
                log::disconnect(client.address);
                return Phase::Closed;
            }
        }
    }

    /// The engine for `run`: a client that may be replayed into a backend
    /// is promised what every backend of its cluster offers; one that is
    /// refused gets postscreen's list. STARTTLS is the engine's own when
    /// `[tls]` is set.
    fn new_engine(&self, run: &EngineRun) -> Engine {
        let config = &self.shared.config;
        let keywords = match run.rcpt {
            RcptPolicy::Pass => self.replay_keywords(),
            RcptPolicy::Refuse(_) => None,
        };
        let mut engine = Engine::new(
            &config.hostname,
            run.rcpt.clone(),
            config.engine.command_limit,
            keywords,
        );
        if self.shared.tls.is_some() {
            engine.offer_starttls();
        }
        engine
    }

    /// The client reached RCPT with its tests passed: its passes are
    /// remembered, and it is replayed into a backend (`Some`, the phase
    /// after), or told postscreen's 450 under `after_pass = "reconnect"`
    /// (`None`: the dialogue goes on).
    async fn passed(
        &mut self,
        engine: &mut Engine,
        run: &mut EngineRun,
        transaction: Transaction,
    ) -> Option<Phase> {
        self.record_deep_passes(run);
        // A client in the engine only for the gates (no deep test due) is
        // always replayed.
        if self.shared.config.deep_tests.after_pass == AfterPass::Replay
            || run.deep.enabled().is_empty()
        {
            let mut envelope = self.envelope(engine, run);
            envelope.recipients.push(transaction.refused.to.clone());
            if self.shared.pool.relays(&self.cluster) {
                return self.relay_replay(engine, run, transaction, envelope).await;
            }
            let mut lines: Vec<Vec<u8>> = transaction.helo_line.into_iter().collect();
            lines.push(transaction.mail_line);
            lines.push(transaction.rcpt_line);
            let replay = Replay {
                lines,
                answer: Answer::Last,
                judged: run.judged,
            };
            return Some(
                self.replay(run.client.clone(), replay, Some(envelope))
                    .await,
            );
        }
        let reply = reply::RCPT_DEFERRED.to_string();
        let mut refused = transaction.refused;
        refused.reply = reply.trim_end().to_string();
        self.send(&reply).await;
        log::noqueue_rcpt(run.client.address, &refused);
        engine.refuse_with(reply);
        run.pass = None;
        None
    }

    /// The client sent STARTTLS or AUTH that only the backend can answer.
    /// AUTH: the backend is brought to the client's EHLO and the
    /// conversation reads the exchange and everything after it (AUTH
    /// stores no pass; the pregreet test the client finished is kept, as
    /// after any leave). STARTTLS, offered only where nothing after it
    /// needs reading: the unfinished deep tests are not remembered, and the
    /// rest is copied.
    async fn hand_off_at(
        &mut self,
        engine: &Engine,
        run: &mut EngineRun,
        command: Vec<u8>,
    ) -> Phase {
        let client = run.client.clone();
        let mut lines: Vec<Vec<u8>> = engine.helo_line().into_iter().collect();
        if command.len() >= 4 && command[..4].eq_ignore_ascii_case(b"AUTH") {
            let mut rest = BytesMut::from(&command[..]);
            rest.extend_from_slice(&self.buffer);
            self.buffer = rest;
            // Only the greeting is replayed: the backend has no
            // transaction open.
            let mut envelope = self.envelope(engine, run);
            envelope.sender = None;
            let replay = Replay {
                lines,
                answer: Answer::Nothing,
                judged: run.judged,
            };
            return self.replay(client, replay, Some(envelope)).await;
        }
        if let Some(pass) = run.pass.take() {
            self.store_pass(&client, pass.previous, pass.entry);
        }
        lines.push(command);
        let replay = Replay {
            lines,
            answer: Answer::Last,
            judged: Judged::NotGated,
        };
        self.replay(client, replay, None).await
    }

    /// The engine's step for one command line: the deep tests look at it,
    /// a line no backend may see as it is is refused (for a client that may
    /// be replayed), then the engine gates, then the engine. `Err`: the
    /// session ends (a `drop`).
    async fn answer_line(
        &mut self,
        engine: &mut Engine,
        run: &mut EngineRun,
        line: &Line,
    ) -> Result<EngineStep, Phase> {
        let config = Arc::clone(&self.shared.config);
        let client = run.client.clone();
        for violation in run.deep.inspect(line, &self.buffer, engine.after()) {
            log::deep_violation(client.address, violation.test.log_name(), &violation.detail);
            self.process.metrics.test(violation.test.name(), false);
            match config.deep_tests.action(violation.test) {
                Action::Drop => {
                    let reply = violation.test.drop_reply();
                    self.count(Counted::Dropped);
                    self.send(&reply).await;
                    log::disconnect(client.address);
                    return Err(Phase::Closed);
                }
                Action::Enforce => {
                    run.pass = None;
                    engine.refuse_with(violation.test.refusal(Action::Enforce).enforce_reply())
                }
                // postscreen counts an ignored deep-test failure
                // as a pass until the shortest TTL of any test.
                Action::Ignore => {}
            }
        }
        // What may be replayed is held to the conversation's rule: a line
        // no backend may see as it is is refused here, never stored for
        // the replay.
        let unrelayable = match run.rcpt {
            RcptPolicy::Pass => line.unrelayable().and_then(reply::unrelayable),
            RcptPolicy::Refuse(_) => None,
        };
        if let Some(text) = unrelayable {
            return Ok(engine.refuse(line, text.to_string()));
        }
        Ok(match self.ask_gates(engine, line, &client, run).await {
            Some(rejection) if rejection.action == Action::Drop => {
                self.count(Counted::Dropped);
                self.send(&rejection.drop_reply()).await;
                log::disconnect(client.address);
                return Err(Phase::Closed);
            }
            Some(rejection) => engine.refuse(line, rejection.enforce_reply()),
            None => {
                let step = engine.command(line);
                if step.reply == reply::MAIL_OK {
                    run.transaction = next_transaction();
                }
                step
            }
        })
    }

    /// The EHLO keywords a client of the engine is promised: what every
    /// backend of its cluster offers. Without `[tls]`, STARTTLS (the
    /// backend's) is offered only when nothing after the handoff needs
    /// reading: no gate judges commands, the cluster is not balanced by
    /// recipient, and no backend of it trusts doorman's own address.
    fn replay_keywords(&self) -> Option<Vec<String>> {
        let shared = &self.shared;
        let cluster = self.cluster.as_str();
        let mut keywords = shared.pool.ehlo_keywords(cluster)?;
        let relays = shared.pool.relays(cluster);
        let read_after = shared.pipeline.judges_commands()
            || shared.config.by_recipient(cluster).is_some()
            || shared.pool.trusts_doorman(cluster)
            || relays;
        if read_after {
            keywords.retain(|k| keyword_name(k) != "STARTTLS");
        }
        if relays {
            // Relay mode takes no AUTH (the backend would authenticate
            // doorman) and no BDAT (its header goes into DATA).
            keywords.retain(|k| !matches!(keyword_name(k).as_str(), "AUTH" | "CHUNKING"));
        }
        Some(keywords)
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
        if run.judged == Judged::NotGated {
            return None;
        }
        let (stage, argument) = engine.question(line)?;
        let envelope = self.envelope(engine, run);
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

    /// The dialogue so far, with what the session knows beside it: the
    /// score, the client's names, its TLS session.
    fn envelope(&self, engine: &Engine, run: &EngineRun) -> Envelope {
        let mut envelope = engine.envelope();
        envelope.score = run.score;
        envelope.names = run.names.clone();
        envelope.encryption = self.stream.tls().as_ref().map(Into::into);
        envelope.transaction = run.transaction;
        envelope
    }

    /// The engine said `220 2.0.0 Ready to start TLS`: plain text the
    /// client sent behind STARTTLS is thrown away, and the handshake runs
    /// within `[tls] handshake_timeout`. False when it failed (logged, and
    /// the connection is done).
    async fn start_tls(&mut self, client: &Client) -> bool {
        if !self.buffer.is_empty() {
            log::plaintext_after_starttls(client.address, &self.buffer);
            self.buffer = BytesMut::new();
        }
        let (Some(tls), Some(plain)) = (self.shared.tls.clone(), self.stream.take_plain()) else {
            return false;
        };
        match tls.accept(plain).await {
            Ok(session) => {
                self.stream = Channel::Tls(Box::new(session.into()));
                let summary = self.stream.tls();
                let version = summary.as_ref().map_or("none", |summary| summary.protocol);
                self.process.metrics.tls_handshake("ok", version);
                if let Some(summary) = &summary {
                    log::tls_established(client.address, summary);
                }
                true
            }
            Err(error) => {
                self.process.metrics.tls_handshake(error.label(), "none");
                log::tls_failed(client.address, &error, error.smtpd_ended());
                false
            }
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
        for deep in config.deep_tests.enabled() {
            if !run.deep.enabled().contains(&deep) {
                continue;
            }
            if run.deep.has_failed(deep) {
                entry.record_gate(deep.name(), now, config.shortest_ttl());
            } else {
                self.process.metrics.test(deep.name(), true);
                entry.record_gate(deep.name(), now, config.deep_tests.ttl(deep));
            }
        }
        self.store_pass(&run.client, pass.previous, entry);
    }
}
