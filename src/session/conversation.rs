//! The client's conversation after the handoff, read command by command to
//! its end.
//!
//! Every client that met the engine, and every client of a backend that
//! trusts doorman's own address to speak for clients (`send_proxy =
//! "xclient"`), is relayed here rather than copied: each command line comes through the
//! session's one reader ([`Session::next_command`], one deadline for the
//! whole line), and
//! - XCLIENT and XFORWARD get smtpd's `550 5.7.0` from doorman and never
//!   reach the backend; STARTTLS is never passed on (doorman could not
//!   read what followed), and the backend's EHLO replies lose those
//!   keywords;
//! - MAIL and RCPT are parsed as smtpd parses them (a bad address gets
//!   smtpd's 501 from doorman), and for a client that met the engine they
//!   meet the engine gates in every transaction, pipelined or not, unless
//!   the backend accepted its AUTH;
//! - DATA bodies go through the framer ([`crate::smtp::body`]), so the
//!   backend sees the message end where doorman does and nowhere else, and
//!   BDAT chunks are copied by their count;
//! - every write has a deadline, and a backend lost while the client waits
//!   gets a clean 4xx, never a bare close.

use doorman_gate_api::Stage;

pub(super) use super::backend_side::BackendSide;
use super::command::Incoming;
use super::message::END_OF_MESSAGE;
use super::relay_mode::RelayMode;
use super::*;
use crate::config::{BareNewline, RecipientKey};
use crate::smtp::address::{parse_path, PathError};
use crate::smtp::response::without_keywords;

/// The most recipients of one transaction, as smtpd's
/// `smtpd_recipient_limit`.
pub(super) const RECIPIENT_LIMIT: usize = 1000;

/// EHLO keywords a relayed client is never shown: the ones that would let
/// it speak for doorman, and STARTTLS, which would take its conversation
/// out of doorman's sight.
const HIDDEN_KEYWORDS: [&str; 3] = ["XCLIENT", "XFORWARD", "STARTTLS"];

/// The other commands a relayed client's backend gets as they are; any
/// verb not named here or handled on its own is answered `502` by doorman,
/// so nothing doorman does not understand reaches the backend.
const FORWARDED: [&str; 6] = ["RSET", "NOOP", "QUIT", "VRFY", "HELP", "ETRN"];

/// How long the rest of a backend's unsolicited reply may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a backend may take to answer the end of a message (Postfix's
/// `smtp_data_done_timeout`).
pub(super) const END_OF_DATA_TIMEOUT: Duration = Duration::from_secs(600);

/// Who judges a relayed client's MAIL and RCPT commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Judged {
    /// The client met the engine: the engine gates judge them.
    ByGates,
    /// The backend accepted the client's AUTH: they pass, as
    /// `permit_sasl_authenticated` lets them pass in smtpd.
    Authenticated,
    /// A client that passed without the engine: only the rules every
    /// client meets.
    NotGated,
}

/// A cluster balanced by recipient: how a RCPT's user is routed.
#[derive(Clone, Debug)]
pub(super) struct Routing {
    /// The cluster.
    pub cluster: String,
    /// What a user is.
    pub key: RecipientKey,
    /// How long a user's backend is remembered.
    pub expire: Duration,
}

/// One relayed conversation's state.
pub(super) struct Conversation<B> {
    /// The client.
    pub client: Client,
    /// The backend.
    pub backend: BackendSide<B>,
    /// The transaction so far, for the gates (its sender and recipients
    /// are the ones the backend accepted).
    pub envelope: Envelope,
    /// Who judges MAIL and RCPT.
    pub judged: Judged,
    /// Routing by recipient, for such a cluster.
    pub routing: Option<Routing>,
    /// The client's last command verb (`CONNECT` before any), for the
    /// limit lines.
    pub last: String,
    /// Whether the backend announced CHUNKING (BDAT goes to no other).
    pub chunking: bool,
    /// Relay mode's state, for a backend that learns the client from
    /// doorman's `Received:` header.
    pub relay: Option<Box<RelayMode>>,
}

impl<B> Conversation<B> {
    /// How long the backend may take to answer a command: `[relay]
    /// timeout` in relay mode.
    pub fn reply_time(&self) -> Duration {
        self.relay
            .as_ref()
            .map_or(REPLY_TIMEOUT, |relay| relay.timeout)
    }
}

/// Whether the conversation goes on after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Read the next command.
    Go,
    /// The session is over.
    Close,
}

impl<S: ClientIo> Session<Channel<S>> {
    /// Relays the conversation to its end (see the module docs).
    pub(super) async fn converse<B>(&mut self, talk: &mut Conversation<B>) -> Phase
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        loop {
            let limit = self.shared.config.engine.hard_error_limit;
            if limit > 0 && self.errors >= limit {
                log::too_many_errors(talk.client.address, &talk.last);
                let text = reply::too_many_errors(&self.shared.config.hostname);
                self.send(&text).await;
                return Phase::Closed;
            }
            if starts_like_header(&self.buffer) == Prefix::Header {
                let input = std::mem::take(&mut self.buffer);
                return self.refuse_header(&talk.client, &input).await;
            }
            // The backend is watched too: one that gives up on the client
            // (its own timeout, a 421) ends the session now.
            let incoming = tokio::select! {
                incoming = self.next_command() => incoming,
                read = talk.backend.stream.read_buf(&mut talk.backend.pending) => {
                    self.unsolicited(talk, read).await;
                    return Phase::Closed;
                }
            };
            let line = match self.take_line(talk, incoming).await {
                Ok(line) => line,
                Err(next) => match next {
                    Next::Go => continue,
                    Next::Close => return Phase::Closed,
                },
            };
            if line.verb() == "PROXY" {
                return self.refuse_header(&talk.client, &line.text).await;
            }
            talk.last = line.verb();
            if self.relay_command(talk, line).await == Next::Close {
                return Phase::Closed;
            }
        }
    }

    /// The backend spoke (or closed) while doorman waited for the
    /// client: its whole `421` goes to the client, as smtpd's own goodbye;
    /// anything else is a backend lost. The session ends either way.
    async fn unsolicited<B>(&mut self, talk: &mut Conversation<B>, read: io::Result<usize>)
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let backend = &mut talk.backend;
        let said = match read {
            Ok(n) if n > 0 => {
                read_reply(&mut backend.stream, &mut backend.pending, GOODBYE_TIMEOUT).await
            }
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed the connection",
            )),
            Err(error) => Err(error),
        };
        match said {
            Ok(goodbye) if goodbye.starts_with(b"421") => self.send_bytes(&goodbye).await,
            Ok(_) => {
                let error = io::Error::new(io::ErrorKind::InvalidData, "unsolicited reply");
                self.backend_lost(talk, &talk.last.clone(), &error).await;
            }
            Err(error) => self.backend_lost(talk, &talk.last.clone(), &error).await,
        }
    }

    /// The line the client sent, if it may go on: a time or length limit
    /// ends the session (logged, with postscreen's reply), and a line no
    /// backend may see as it is gets smtpd's refusal from doorman.
    pub(super) async fn take_line<B>(
        &mut self,
        talk: &Conversation<B>,
        incoming: Incoming,
    ) -> Result<Line, Next> {
        let config = Arc::clone(&self.shared.config);
        let (limit, text) = match incoming {
            Incoming::Line(line) => {
                let refusal = line
                    .unrelayable()
                    .and_then(reply::unrelayable)
                    .map(str::to_string);
                let refusal = refusal.or_else(|| {
                    (line.bare_newline && config.engine.bare_newline == BareNewline::Reject).then(
                        || {
                            log::bare_newline(talk.client.address, "a command");
                            let code = config.engine.bare_newline_reject_code;
                            reply::bare_newline(code, &config.hostname)
                        },
                    )
                });
                return match refusal {
                    None => Ok(line),
                    Some(text) => {
                        self.send(&text).await;
                        Err(Next::Go)
                    }
                };
            }
            Incoming::Closed => return Err(Next::Close),
            Incoming::TimedOut => ("TIME", reply::timeout_exceeded(&config.hostname)),
            Incoming::TooLong => ("LENGTH", reply::service_unavailable(&config.hostname)),
        };
        log::command_limit(talk.client.address, limit, &talk.last);
        self.send(&text).await;
        Err(Next::Close)
    }

    /// One command of a relayed conversation.
    async fn relay_command<B>(&mut self, talk: &mut Conversation<B>, line: Line) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (verb, argument) = line.split();
        if let Some(next) = self.relay_mode_command(talk, &verb, &argument).await {
            return next;
        }
        let mut raw = line.text;
        raw.extend_from_slice(b"\r\n");
        let limit = talk.reply_time();
        match verb.as_str() {
            "XCLIENT" | "XFORWARD" => {
                log::speaks_for_doorman(talk.client.address, &verb);
                self.answer(reply::INSUFFICIENT_AUTHORIZATION).await
            }
            "STARTTLS" if self.stream.tls().is_some() => {
                self.answer(reply::TLS_ALREADY_ACTIVE).await
            }
            "STARTTLS" => self.answer(reply::NOT_IMPLEMENTED).await,
            "MAIL" => self.mail(talk, &argument, &raw).await,
            "RCPT" => self.rcpt(talk, &argument, &raw).await,
            "DATA" => self.data(talk, &raw).await,
            "BDAT" => self.bdat(talk, &argument, &raw).await,
            "AUTH" => self.auth(talk, &raw).await,
            "EHLO" | "HELO" => self.greeting(talk, &verb, &argument, &raw, limit).await,
            verb if FORWARDED.contains(&verb) => {
                let Some(answer) = self.forward(talk, verb, &raw, limit).await else {
                    return Next::Close;
                };
                self.send_bytes(&answer).await;
                match verb {
                    "QUIT" => Next::Close,
                    "RSET" if answer.starts_with(b"2") => {
                        end_transaction(&mut talk.envelope);
                        Next::Go
                    }
                    _ => Next::Go,
                }
            }
            _ => self.answer(reply::NOT_RECOGNIZED).await,
        }
    }

    /// EHLO or HELO: the backend's reply without the keywords a relayed
    /// client may not use; an accepted one starts the dialogue over.
    async fn greeting<B>(
        &mut self,
        talk: &mut Conversation<B>,
        verb: &str,
        argument: &str,
        raw: &[u8],
        limit: Duration,
    ) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if let Some(next) = self.judge(talk, Stage::Helo, argument).await {
            return next;
        }
        let Some(answer) = self.forward(talk, verb, raw, limit).await else {
            return Next::Close;
        };
        self.send_bytes(&without_keywords(&answer, &HIDDEN_KEYWORDS))
            .await;
        if answer.starts_with(b"2") {
            talk.envelope.helo = argument
                .split([' ', '\t'])
                .find(|name| !name.is_empty())
                .map(Into::into);
            talk.envelope.esmtp = verb == "EHLO";
            end_transaction(&mut talk.envelope);
        }
        Next::Go
    }

    /// Sends `raw` to the backend and reads its reply; `None` (the client
    /// told, the loss logged) when the backend is gone or too slow.
    pub(super) async fn forward<B>(
        &mut self,
        talk: &mut Conversation<B>,
        stage: &str,
        raw: &[u8],
        limit: Duration,
    ) -> Option<Vec<u8>>
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match talk.backend.ask(raw, limit).await {
            Ok(answer) => Some(answer),
            Err(error) => {
                self.backend_lost(talk, stage, &error).await;
                None
            }
        }
    }

    /// The backend was lost while the client waited at `stage`: the client
    /// is told before the close (Postfix's before-queue proxy reply after
    /// the end of a message, else smtpd's 421), and it is logged.
    pub(super) async fn backend_lost<B>(
        &mut self,
        talk: &Conversation<B>,
        stage: &str,
        error: &io::Error,
    ) {
        let (client, backend) = (talk.client.address, talk.backend.address);
        let relay = talk.relay.is_some();
        if relay && error.kind() == io::ErrorKind::TimedOut {
            log::backend_timeout(client, backend, stage);
        } else {
            log::backend_lost(client, backend, stage, error);
        }
        self.process.metrics.backend_lost(stage);
        // Relay mode answers every loss as Postfix's before-queue proxy.
        let text = if stage == END_OF_MESSAGE || relay {
            reply::QUEUE_WRITE_ERROR.to_string()
        } else {
            reply::lost_backend(&self.shared.config.hostname)
        };
        self.send(&text).await;
    }

    /// MAIL: parsed, put to the gates, then to the backend.
    async fn mail<B>(&mut self, talk: &mut Conversation<B>, argument: &str, raw: &[u8]) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let path = match parse_path(argument, "FROM:") {
            Ok(path) => path,
            Err(PathError::Syntax) => return self.answer(reply::MAIL_SYNTAX).await,
            Err(PathError::Address) => return self.answer(reply::SENDER_SYNTAX).await,
        };
        if let Some(next) = self.judge(talk, Stage::Mail, &path.address).await {
            return next;
        }
        let limit = talk.reply_time();
        let Some(answer) = self.forward(talk, "MAIL", raw, limit).await else {
            return Next::Close;
        };
        self.send_bytes(&answer).await;
        if answer.starts_with(b"2") {
            if let Some(relay) = talk.relay.as_mut() {
                relay.smtputf8 = path.parameter("SMTPUTF8").is_some();
            }
            end_transaction(&mut talk.envelope);
            talk.envelope.sender = Some(path.address);
            talk.envelope.transaction = next_transaction();
        }
        Next::Go
    }

    /// RCPT: parsed, bounded, routed, put to the gates, then to the
    /// backend.
    async fn rcpt<B>(&mut self, talk: &mut Conversation<B>, argument: &str, raw: &[u8]) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let recipient = match parse_path(argument, "TO:") {
            Ok(path) if !path.address.is_empty() => path.address,
            Ok(_) | Err(PathError::Address) => return self.answer(reply::RECIPIENT_SYNTAX).await,
            Err(PathError::Syntax) => return self.answer(reply::RCPT_SYNTAX).await,
        };
        // Every RCPT is judged, whatever doorman believes of the
        // transaction: any disagreement with the backend must fail closed.
        if talk.envelope.recipients.len() >= RECIPIENT_LIMIT {
            return self.answer(reply::RECIPIENT_LIMIT).await;
        }
        // The gates first: a recipient they refuse is routed nowhere, so
        // it writes no user assignment.
        if let Some(next) = self.judge(talk, Stage::Rcpt, &recipient).await {
            return next;
        }
        if self.routed_elsewhere(talk, &recipient).await {
            return self.answer(reply::TOO_MANY_RECIPIENTS).await;
        }
        let limit = talk.reply_time();
        let Some(answer) = self.forward(talk, "RCPT", raw, limit).await else {
            return Next::Close;
        };
        self.send_bytes(&answer).await;
        if answer.starts_with(b"2") && talk.envelope.sender.is_some() {
            talk.envelope.recipients.push(recipient);
        }
        Next::Go
    }

    /// Whether a RCPT's user belongs to another backend of a cluster
    /// balanced by recipient (logged and counted).
    async fn routed_elsewhere<B>(&self, talk: &Conversation<B>, recipient: &str) -> bool {
        let Some(routing) = &talk.routing else {
            return false;
        };
        let user = routing.key.of(recipient);
        let owner = UserRoute {
            cluster: &routing.cluster,
            user: &user,
            expire: routing.expire,
        };
        let pool = &self.shared.pool;
        match pool.backend_for(&talk.client, &owner).await {
            Some(elsewhere) if elsewhere != talk.backend.address => {
                log::recipient_elsewhere(talk.client.address, recipient, elsewhere);
                pool.users().count("split");
                true
            }
            _ => false,
        }
    }

    /// Puts a MAIL or RCPT to the engine gates, for a client that met the
    /// engine and has not authenticated: `Some` when a gate refused it
    /// (the client has its reply).
    pub(super) async fn judge<B>(
        &mut self,
        talk: &Conversation<B>,
        stage: Stage,
        argument: &str,
    ) -> Option<Next> {
        if talk.judged != Judged::ByGates {
            return None;
        }
        let command = Command {
            stage,
            argument,
            envelope: &talk.envelope,
        };
        let Verdict::Reject(rejection) = self.shared.pipeline.command(&talk.client, command).await
        else {
            return None;
        };
        match rejection.action {
            Action::Ignore => None,
            Action::Drop => {
                self.count(Counted::Dropped);
                self.send(&rejection.drop_reply()).await;
                log::disconnect(talk.client.address);
                Some(Next::Close)
            }
            Action::Enforce => Some(self.answer(&rejection.enforce_reply()).await),
        }
    }

    /// Answers the client from doorman; the conversation goes on.
    pub(super) async fn answer(&mut self, text: &str) -> Next {
        self.send(text).await;
        Next::Go
    }
}

/// The transaction is over (RSET, a new greeting, the end of a message):
/// the next MAIL starts a new one.
pub(super) fn end_transaction(envelope: &mut Envelope) {
    envelope.sender = None;
    envelope.recipients.clear();
}
