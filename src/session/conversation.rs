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

use super::command::Incoming;
use super::*;
use crate::config::RecipientKey;
use crate::smtp::address::{parse_path, PathError};
use crate::smtp::response::without_keywords;

/// The most recipients of one transaction, as smtpd's
/// `smtpd_recipient_limit`.
pub(super) const RECIPIENT_LIMIT: usize = 1000;

/// EHLO keywords a relayed client is never shown: the ones that would let
/// it speak for doorman, and STARTTLS, which would take its conversation
/// out of doorman's sight.
const HIDDEN_KEYWORDS: [&str; 3] = ["XCLIENT", "XFORWARD", "STARTTLS"];

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

/// The backend side of a relayed conversation.
pub(super) struct BackendSide<B> {
    /// The connection.
    pub stream: B,
    /// Bytes the backend sent that are not read yet.
    pub pending: BytesMut,
    /// Its address, for log lines and routing.
    pub address: SocketAddr,
}

impl<B: AsyncRead + AsyncWrite + Unpin> BackendSide<B> {
    /// Writes `bytes` within the write deadline.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match timeout(WRITE_TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the backend does not read",
            )),
        }
    }

    /// Sends `line` and reads the backend's whole reply within `limit`.
    pub async fn ask(&mut self, line: &[u8], limit: Duration) -> io::Result<Vec<u8>> {
        self.write(line).await?;
        read_reply(&mut self.stream, &mut self.pending, limit).await
    }
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
        let address = talk.client.address;
        loop {
            if starts_like_header(&self.buffer) == Prefix::Header {
                let input = std::mem::take(&mut self.buffer);
                return self.refuse_header(&talk.client, &input).await;
            }
            // The backend is watched too: one that gives up on the client
            // (its own timeout, a 421) ends the session now.
            let said = talk.backend.pending.len();
            let incoming = tokio::select! {
                incoming = self.next_command() => incoming,
                read = talk.backend.stream.read_buf(&mut talk.backend.pending) => {
                    let unsolicited = talk.backend.pending.split_off(said);
                    self.send_bytes(&unsolicited).await;
                    if matches!(read, Ok(n) if n > 0) && unsolicited.starts_with(b"421") {
                        continue;
                    }
                    return Phase::Closed;
                }
            };
            let line = match incoming {
                Incoming::Line(line) => line,
                Incoming::Closed => return Phase::Closed,
                Incoming::TimedOut => {
                    log::command_limit(address, "TIME", &talk.last);
                    let hostname = self.shared.config.hostname.clone();
                    self.send(&reply::timeout_exceeded(&hostname)).await;
                    return Phase::Closed;
                }
                Incoming::TooLong => {
                    log::command_limit(address, "LENGTH", &talk.last);
                    let hostname = self.shared.config.hostname.clone();
                    self.send(&reply::service_unavailable(&hostname)).await;
                    return Phase::Closed;
                }
            };
            talk.last = line.verb();
            match self.relay_command(talk, line).await {
                Next::Go => {}
                Next::Close => return Phase::Closed,
            }
        }
    }

    /// One command of a relayed conversation.
    async fn relay_command<B>(&mut self, talk: &mut Conversation<B>, line: Line) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let config = Arc::clone(&self.shared.config);
        if line.text.iter().any(|&b| b == 0 || b == b'\r') {
            self.send(reply::BAD_SYNTAX).await;
            return Next::Go;
        }
        if line.bare_newline && config.engine.bare_newline == crate::smtp::body::BareNewline::Reject
        {
            log::bare_newline(talk.client.address, "a command");
            let code = config.engine.bare_newline_reject_code;
            self.send(&reply::bare_newline(code, &config.hostname))
                .await;
            return Next::Go;
        }
        let (verb, argument) = line.split();
        let mut raw = line.text;
        raw.extend_from_slice(b"\r\n");
        match verb.as_str() {
            "XCLIENT" | "XFORWARD" => {
                log::speaks_for_doorman(talk.client.address, &verb);
                self.send(reply::INSUFFICIENT_AUTHORIZATION).await;
                Next::Go
            }
            "STARTTLS" if self.stream.tls().is_some() => {
                self.send(reply::TLS_ALREADY_ACTIVE).await;
                Next::Go
            }
            "STARTTLS" => {
                self.send(reply::NOT_IMPLEMENTED).await;
                Next::Go
            }
            "MAIL" => self.mail(talk, &argument, &raw).await,
            "RCPT" => self.rcpt(talk, &argument, &raw).await,
            "DATA" => self.data(talk, &raw).await,
            "BDAT" => self.bdat(talk, &argument, &raw).await,
            "AUTH" => self.auth(talk, &raw).await,
            _ => {
                let Some(answer) = self.forward(talk, &verb, &raw, REPLY_TIMEOUT).await else {
                    return Next::Close;
                };
                let accepted = answer.starts_with(b"2");
                match verb.as_str() {
                    "EHLO" | "HELO" => {
                        self.send_bytes(&without_keywords(&answer, &HIDDEN_KEYWORDS))
                            .await;
                        if accepted {
                            talk.envelope.helo = argument.split_whitespace().next().map(Into::into);
                            talk.envelope.esmtp = verb == "EHLO";
                            end_transaction(&mut talk.envelope);
                        }
                    }
                    _ => {
                        self.send_bytes(&answer).await;
                        if verb == "RSET" && accepted {
                            end_transaction(&mut talk.envelope);
                        }
                    }
                }
                if verb == "QUIT" {
                    return Next::Close;
                }
                Next::Go
            }
        }
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
        log::backend_lost(talk.client.address, talk.backend.address, stage, error);
        let text = if stage == "END-OF-MESSAGE" {
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
        let sender = match parse_path(argument, "FROM:") {
            Ok(path) => path.address,
            Err(PathError::Syntax) => return self.answer(reply::MAIL_SYNTAX).await,
            Err(PathError::Address) => return self.answer(reply::SENDER_SYNTAX).await,
        };
        if let Some(next) = self.judge(talk, Stage::Mail, &sender).await {
            return next;
        }
        let Some(answer) = self.forward(talk, "MAIL", raw, REPLY_TIMEOUT).await else {
            return Next::Close;
        };
        self.send_bytes(&answer).await;
        if answer.starts_with(b"2") {
            end_transaction(&mut talk.envelope);
            talk.envelope.sender = Some(sender);
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
        // Without a sender the backend refuses it (503): nothing to judge.
        if talk.envelope.sender.is_some() {
            if talk.envelope.recipients.len() >= RECIPIENT_LIMIT {
                return self.answer(reply::RECIPIENT_LIMIT).await;
            }
            if self.routed_elsewhere(talk, &recipient).await {
                return self.answer(reply::TOO_MANY_RECIPIENTS).await;
            }
            if let Some(next) = self.judge(talk, Stage::Rcpt, &recipient).await {
                return next;
            }
        }
        let Some(answer) = self.forward(talk, "RCPT", raw, REPLY_TIMEOUT).await else {
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
    async fn judge<B>(
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
