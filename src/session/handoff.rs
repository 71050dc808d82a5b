//! Handing a client to a backend: a plain handoff or a replay, the gated
//! relay, the relay, and the refusals when no backend takes it.

use super::*;

impl<S: ClientIo> Session<Channel<S>> {
    /// Hands a client that is mid-dialogue to a backend: the backend's
    /// greeting is consumed, the client's own `lines` (HELO/EHLO, MAIL,
    /// RCPT; or EHLO and STARTTLS/AUTH) are sent one by one, and the client
    /// gets the backend's answer to its pending command, or the first
    /// refusal, so it never gets a reply it did not ask for. Then relays.
    /// With `gated`, the envelope so far, the engine gates go on judging
    /// the client's MAIL and RCPT commands until its DATA (see
    /// [`relay_gated`]).
    pub(super) async fn replay(
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
    pub(super) async fn hand_off(&mut self, client: Client, teased: bool) -> Phase {
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
        let cluster = shared
            .config
            .cluster_for(client.destination, self.listening);
        // A client in TLS reaches the backend over STARTTLS, which wants an
        // EHLO before it: the client's own, else doorman's.
        let summary = self.stream.tls();
        let ehlo = match (&summary, lines.first()) {
            (None, _) => Vec::new(),
            (Some(_), Some(line)) if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"EHLO ") => {
                line.clone()
            }
            (Some(_), _) => format!("EHLO {}\r\n", shared.config.hostname).into_bytes(),
        };
        let tls = summary.as_ref().map(|summary| TlsHandoff {
            summary,
            ehlo: &ehlo,
        });
        // A cluster balanced by recipient: the transaction's first
        // recipient's user picks the backend.
        let by_recipient = shared.config.by_recipient(cluster);
        let user = by_recipient
            .zip(
                gated
                    .as_ref()
                    .and_then(|envelope| envelope.recipients.first()),
            )
            .map(|(section, recipient)| section.key.of(recipient));
        let route = by_recipient
            .zip(user.as_deref())
            .map(|(section, user)| UserRoute {
                cluster,
                user,
                expire: section.user_expire,
            });
        let Connected {
            stream: mut backend,
            lease: _lease,
            greeting,
            mut pending,
            flush,
            backend: address,
        } = match shared.pool.connect(&client, cluster, route, tls).await {
            Ok(connected) => connected,
            Err(_) => {
                self.count(Counted::NoBackend);
                log::all_server_ports_busy(client.address, cluster);
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
            let address = backend.plain().and_then(|stream| stream.peer_addr().ok());
            log::backend_refused(client.address, address, &greeting);
            self.count(Counted::NoBackend);
            return self.refuse_busy(teased).await;
        }
        let count = lines.len();
        let pipelining = shared.pool.ehlo_keywords().is_some_and(|keywords| {
            keywords
                .iter()
                .any(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
        });
        let mut index = 0;
        let mut refused = false;
        for group in replay_groups(lines, pipelining) {
            if let Err(error) = backend.write_all(&group.concat()).await {
                log::relay_error(client.address, &error);
                return self.refuse_busy(false).await;
            }
            for line in group {
                match read_reply(&mut backend, &mut pending, REPLY_TIMEOUT).await {
                    // The reply to a command pipelined behind a refused one.
                    Ok(_) if refused => {}
                    Ok(answer) if index + 1 == count => self.send_bytes(&answer).await,
                    Ok(answer) if answer.starts_with(b"2") => {}
                    Ok(refusal) => {
                        log::replay_refused(client.address, &line, &refusal);
                        self.send_bytes(&refusal).await;
                        refused = true;
                    }
                    Err(error) => {
                        log::relay_error(client.address, &error);
                        return self.refuse_busy(false).await;
                    }
                }
                index += 1;
            }
            if refused {
                break;
            }
        }
        if let Some(envelope) = gated {
            let gates = Gates {
                pipeline: &shared.pipeline,
                client: &client,
                envelope,
                line_limit: shared.config.engine.line_length,
                command_time: shared.config.engine.command_time,
                route: by_recipient.map(|section| RecipientRoute {
                    pool: &shared.pool,
                    cluster,
                    key: section.key,
                    expire: section.user_expire,
                    backend: address,
                }),
            };
            let gated = tokio::select! {
                gated = relay_gated(
                    &mut self.stream,
                    &mut self.buffer,
                    &mut backend,
                    &mut pending,
                    gates,
                ) => Some(gated),
                _ = flush.cancelled() => None,
            };
            let Some(gated) = gated else {
                // doorman is speaking here: it says why it closes.
                log::flushed(client.address);
                self.send(reply::FLUSHED).await;
                return Phase::Closed;
            };
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
        let relayed = tokio::select! {
            relayed = relay(&mut self.stream, &mut backend, early) => relayed,
            _ = flush.cancelled() => {
                log::flushed(client.address);
                Ok(())
            }
        };
        match relayed {
            Ok(()) => {}
            Err(RelayError::ProxyHeader(input)) => {
                return self.refuse_header(&client, &input).await;
            }
            Err(RelayError::Io(error)) => log::relay_error(client.address, &error),
        }
        Phase::Closed
    }

    /// No backend: `421 4.3.2 All server ports are busy`. After the teaser
    /// the 421 cannot follow a `220-` line, so doorman first completes the
    /// greeting and gives the 421 to the client's next command, as postscreen
    /// does.
    async fn refuse_busy(&mut self, teased: bool) -> Phase {
        if teased {
            let hostname = self.shared.config.hostname.clone();
            self.send(&reply::plain_banner(&hostname)).await;
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
}
