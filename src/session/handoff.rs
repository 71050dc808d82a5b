//! Handing a client to a backend: a plain handoff or a replay, then the
//! conversation read to its end or the byte copy, and the refusals when no
//! backend takes it.

use super::conversation::{self, BackendSide, Conversation, Judged, Routing};
use super::*;
use crate::config::SendProxy;
use crate::smtp::response::announces;

/// The stage a backend lost in the byte copy is logged and counted at:
/// doorman does not read that conversation, so it knows no command.
const COPY_STAGE: &str = "RELAY";

/// The client's lines replayed into a backend.
pub(super) struct Replay {
    /// The lines, with CRLF.
    pub lines: Vec<Vec<u8>>,
    /// Whether the client waits for the answer to the last one.
    pub answer: Answer,
    /// Whether the engine gates judge the rest of the conversation.
    pub judged: Judged,
}

/// Whether the client waits for the backend's answer to a replay's last
/// line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// It does: the answer goes to it.
    Last,
    /// It does not (the replay only brings the backend where the client
    /// is, and the client's pending command follows).
    Nothing,
}

impl<S: ClientIo> Session<Channel<S>> {
    /// Hands a client that is mid-dialogue to a backend: the backend's
    /// greeting is consumed, the client's own `lines` (HELO/EHLO, MAIL,
    /// RCPT; or EHLO and STARTTLS) are sent, and the client gets the
    /// backend's answer to its pending command (the last line; none with
    /// `Answer::Nothing`), or the first refusal, so it never gets a reply it
    /// did not ask for. With `gated`, the envelope so far, the conversation
    /// is then read to its end and the engine gates judge every MAIL and
    /// RCPT (see [`Session::converse`]).
    pub(super) async fn replay(
        &mut self,
        client: Client,
        replay: Replay,
        gated: Option<Envelope>,
    ) -> Phase {
        self.connect_and_relay(client, false, replay, gated).await
    }

    /// Connects the client to a backend and relays until both sides are
    /// done. A client that saw the teaser gets the backend's greeting only
    /// when it is a 220; otherwise doorman completes the greeting itself and
    /// refuses the next command.
    pub(super) async fn hand_off(&mut self, client: Client, teased: bool) -> Phase {
        let replay = Replay {
            lines: Vec::new(),
            answer: Answer::Last,
            judged: Judged::NotGated,
        };
        self.connect_and_relay(client, teased, replay, None).await
    }

    /// The handoff itself: a backend, its greeting (forwarded for a plain
    /// handoff, consumed for a replay), the replayed lines, then the
    /// conversation read to its end, or the byte copy for a client nobody
    /// needs to read.
    async fn connect_and_relay(
        &mut self,
        client: Client,
        teased: bool,
        replay: Replay,
        gated: Option<Envelope>,
    ) -> Phase {
        self.screening = None;
        let connected = match self
            .connect_backend(&client, teased, &replay, gated.as_ref())
            .await
        {
            Ok(connected) => connected,
            Err(phase) => return phase,
        };
        let Connected {
            stream: mut backend,
            lease: _lease,
            mut pending,
            flush,
            backend: address,
            send_proxy,
            keywords,
            ..
        } = connected;
        // A relay-mode backend takes only what relay mode writes (its
        // clients all meet the engine): never a copy of a client's bytes.
        if send_proxy == SendProxy::Received {
            let error = io::Error::other("a relay-mode backend reached without the engine");
            log::relay_error(client.address, &error);
            return self.refuse_busy(false).await;
        }
        let last = replay.lines.last().map_or_else(
            || "CONNECT".to_string(),
            |line| Line::from_bytes(line).verb(),
        );
        let count = replay.lines.len();
        let judged = replay.judged;
        let pipelining = announces(&keywords, "PIPELINING");
        let refused = match self
            .send_replay(
                &client,
                &mut backend,
                &mut pending,
                replay,
                pipelining,
                REPLY_TIMEOUT,
            )
            .await
        {
            Ok(refused) => refused,
            Err(error) => {
                log::relay_error(client.address, &error);
                return self.refuse_busy(false).await;
            }
        };
        // A client that met the engine is read to its end, and so is every
        // client of an XCLIENT backend, which trusts doorman's own address:
        // it must never be able to speak for doorman.
        if gated.is_none() && send_proxy != SendProxy::Xclient {
            return self
                .copy_bytes(&client, address, backend, pending, flush)
                .await;
        }
        let judged = if gated.is_some() {
            judged
        } else {
            Judged::NotGated
        };
        let envelope = accepted(gated.unwrap_or_default(), refused, count);
        let routing = self
            .shared
            .config
            .by_recipient(&self.cluster)
            .map(|section| Routing {
                cluster: self.cluster.clone(),
                key: section.key,
                expire: section.user_expire,
            });
        let mut talk = Conversation {
            client,
            backend: BackendSide {
                stream: backend,
                pending,
                address,
            },
            envelope,
            judged,
            routing,
            last,
            chunking: announces(&keywords, "CHUNKING"),
            relay: None,
        };
        self.converse_until_flushed(&mut talk, flush).await
    }

    /// The conversation, until its end or until its backend is flushed:
    /// doorman is speaking then, and says why it closes.
    pub(super) async fn converse_until_flushed(
        &mut self,
        talk: &mut Conversation<Channel<TcpStream>>,
        flush: tokio_util::sync::CancellationToken,
    ) -> Phase {
        tokio::select! {
            phase = self.converse(talk) => phase,
            _ = flush.cancelled() => {
                log::flushed(talk.client.address);
                self.send(reply::FLUSHED).await;
                Phase::Closed
            }
        }
    }

    /// A backend for the client, with its greeting: forwarded to a client
    /// handed off plainly, checked for a replay. `Err`: the phase after
    /// the client was told no backend takes it.
    async fn connect_backend(
        &mut self,
        client: &Client,
        teased: bool,
        replay: &Replay,
        gated: Option<&Envelope>,
    ) -> Result<Connected, Phase> {
        let shared = Arc::clone(&self.shared);
        let cluster = self.cluster.clone();
        let cluster = cluster.as_str();
        // A client in TLS reaches the backend over STARTTLS, which wants an
        // EHLO before it: doorman's own, so that a backend's refusal there
        // is about doorman's dialogue, never the client's (the client's
        // EHLO is replayed inside TLS, where its refusal goes to it).
        let summary = self.stream.tls();
        let ehlo = match &summary {
            None => Vec::new(),
            Some(_) => format!("EHLO {}\r\n", shared.config.hostname).into_bytes(),
        };
        let tls = summary.as_ref().map(|summary| TlsHandoff {
            summary: Some(summary),
            ehlo: &ehlo,
        });
        // A cluster balanced by recipient: the transaction's first
        // recipient's user picks the backend.
        let by_recipient = shared.config.by_recipient(cluster);
        let user = by_recipient
            .zip(gated.and_then(|envelope| envelope.recipients.first()))
            .map(|(section, recipient)| section.key.of(recipient));
        let route = by_recipient
            .zip(user.as_deref())
            .map(|(section, user)| UserRoute {
                cluster,
                user,
                expire: section.user_expire,
            });
        let Ok(connected) = shared.pool.connect(client, cluster, route, tls).await else {
            self.count(Counted::NoBackend);
            log::all_server_ports_busy(client.address, cluster);
            return Err(self.refuse_busy(teased).await);
        };
        let welcome = connected.greeting.starts_with(b"220");
        if replay.lines.is_empty() && (welcome || !teased) {
            // A plain handoff gets the backend's greeting as it is, its own
            // refusal of the client included.
            self.send_bytes(&connected.greeting).await;
        } else if !welcome {
            log::backend_refused(client.address, Some(connected.backend), &connected.greeting);
            self.count(Counted::NoBackend);
            return Err(self.refuse_busy(teased).await);
        }
        Ok(connected)
    }

    /// The byte copy, for a client nobody needs to read: what the backend
    /// said after its greeting, then both directions until both are done
    /// (or the backend is flushed).
    async fn copy_bytes(
        &mut self,
        client: &Client,
        address: SocketAddr,
        mut backend: Channel<TcpStream>,
        pending: BytesMut,
        flush: tokio_util::sync::CancellationToken,
    ) -> Phase {
        if !pending.is_empty() {
            self.send_bytes(&pending).await;
        }
        let early = std::mem::take(&mut self.buffer);
        let lost = reply::lost_backend(&self.shared.config.hostname);
        let relayed = tokio::select! {
            relayed = relay(&mut self.stream, &mut backend, early, lost.as_bytes()) => relayed,
            _ = flush.cancelled() => {
                log::flushed(client.address);
                Ok(Ended::Done)
            }
        };
        match relayed {
            Ok(Ended::Done) => {}
            Ok(Ended::BackendLost) => {
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed the connection",
                );
                log::backend_lost(client.address, address, COPY_STAGE, &error);
                self.process.metrics.backend_lost(COPY_STAGE);
            }
            Err(RelayError::ProxyHeader(input)) => {
                return self.refuse_header(client, &input).await;
            }
            Err(RelayError::Io(error)) => log::relay_error(client.address, &error),
        }
        Phase::Closed
    }

    /// Sends the replayed lines, MAIL and RCPT in one write when the
    /// backend announced PIPELINING in its own EHLO, and gives the client
    /// the answer it waits for, or the first refusal.
    pub(super) async fn send_replay(
        &mut self,
        client: &Client,
        backend: &mut Channel<TcpStream>,
        pending: &mut BytesMut,
        replay: Replay,
        pipelining: bool,
        limit: Duration,
    ) -> io::Result<Option<usize>> {
        let count = replay.lines.len();
        let mut index = 0;
        let mut first_refused = None;
        for group in replay_groups(replay.lines, pipelining) {
            timeout(WRITE_TIMEOUT, write_flushed(backend, &group.concat()))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the backend does not read")
                })??;
            backend.acknowledge_at_once();
            let mut refused = false;
            for line in group {
                let answer = read_reply(backend, pending, limit).await?;
                if !answer.starts_with(b"2") {
                    first_refused = first_refused.or(Some(index));
                }
                index += 1;
                if refused {
                    // The reply to a command pipelined behind a refused one.
                } else if index == count {
                    if replay.answer == Answer::Last {
                        self.send_bytes(&answer).await;
                    }
                } else if !answer.starts_with(b"2") {
                    log::replay_refused(client.address, &line, &answer);
                    self.send_bytes(&answer).await;
                    refused = true;
                }
            }
            if refused {
                break;
            }
        }
        Ok(first_refused)
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

/// The gates' envelope after a replay: what the backend accepted of it
/// (`refused`: the index of the first of the `count` lines it refused).
pub(super) fn accepted(mut envelope: Envelope, refused: Option<usize>, count: usize) -> Envelope {
    match refused {
        Some(index) if index + 1 == count => envelope.recipients.clear(),
        Some(_) => conversation::end_transaction(&mut envelope),
        None => {}
    }
    envelope
}
