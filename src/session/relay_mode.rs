//! Relay mode (`send_proxy = "received"`), for backends that can be told
//! the client neither by a PROXY header nor by XCLIENT: doorman speaks to
//! them as Postfix's before-queue proxy does (`smtpd_proxy_filter`).
//!
//! - At the client's first accepted RCPT doorman connects, sends its own
//!   EHLO (STARTTLS first when the backend's `tls` says so), then the
//!   client's MAIL and RCPT one at a time; the backend's replies to them go
//!   to the client as they are. A backend that cannot be reached or
//!   refuses doorman's EHLO: `451 4.3.0 Error: queue file write error` (or
//!   its own 4xx); the next RCPT tries again.
//! - The conversation then goes on as every read conversation does, with
//!   doorman answering EHLO/HELO itself (the backend has doorman's) and no
//!   AUTH or BDAT.
//! - DATA ([`super::relay_data`]) gets doorman's own 354. The header
//!   block is held back and checked (hops, size) before the backend sees a
//!   byte; then DATA goes to the backend, doorman's `Received:` header
//!   first, then the message as the framer gives it. The client's end of
//!   DATA gets the backend's own reply, so nothing is accepted that the
//!   backend did not accept. A backend lost or too slow (`[relay] timeout`)
//!   at any step gets the client `451 4.3.0`, never a 250 and never a bare
//!   close.

use doorman_gate_api::Stage;

use super::conversation::{end_transaction, BackendSide, Conversation, Next};
use super::handoff::{accepted, Answer, Replay};
use super::*;
use crate::handoff::TlsHandoff;
use crate::log::RefusedRcpt;
use crate::smtp::address::parse_path;
use crate::smtp::engine::Transaction;
use crate::smtp::response::without_keywords;

/// What relay mode keeps for one client's conversation.
#[derive(Debug)]
pub(super) struct RelayMode {
    /// doorman's reply to the client's EHLO (the engine's).
    pub ehlo_reply: String,
    /// Whether the transaction's MAIL asked for SMTPUTF8.
    pub smtputf8: bool,
    /// How long the backend may take over each step.
    pub timeout: Duration,
}

impl<S: ClientIo> Session<Channel<S>> {
    /// The client's first accepted RCPT, in relay mode: the backend is
    /// opened and brought to where the client is, then the conversation is
    /// read to its end (`Some`: the phase after). `None`: no backend took
    /// it; the client has its 4xx, and its next RCPT tries again.
    pub(super) async fn relay_replay(
        &mut self,
        engine: &mut Engine,
        run: &EngineRun,
        transaction: Transaction,
        envelope: Envelope,
    ) -> Option<Phase> {
        let client = run.client.clone();
        let config = Arc::clone(&self.shared.config);
        let limit = config.relay.timeout;
        let refused_rcpt = transaction.refused.clone();
        let ehlo = format!("EHLO {}\r\n", config.hostname).into_bytes();
        let summary = self.stream.tls();
        let handoff = TlsHandoff {
            summary: summary.as_ref(),
            ehlo: &ehlo,
        };
        let shared = Arc::clone(&self.shared);
        let Ok(connected) = shared
            .pool
            .connect(&client, &self.cluster, None, Some(handoff))
            .await
        else {
            return self
                .relay_unavailable(client.address, refused_rcpt, None)
                .await;
        };
        let Connected {
            stream,
            lease: _lease,
            pending,
            flush,
            backend: address,
            greeting,
            ..
        } = connected;
        let mut backend = BackendSide {
            stream,
            pending,
            address,
        };
        let greeted = match greeting.starts_with(b"220") {
            true => backend.ask_at_once(&ehlo, limit).await,
            false => Ok(greeting),
        };
        match greeted {
            Ok(answer) if answer.starts_with(b"250") => {}
            Ok(answer) => {
                log::backend_refused(client.address, Some(address), &answer);
                return self
                    .relay_unavailable(client.address, refused_rcpt, Some(&answer))
                    .await;
            }
            Err(error) => {
                log::relay_error(client.address, &error);
                return self
                    .relay_unavailable(client.address, refused_rcpt, None)
                    .await;
            }
        }
        // The engine took the MAIL line only once it parsed.
        let (_, argument) = Line::from_bytes(&transaction.mail_line).split();
        let smtputf8 =
            parse_path(&argument, "FROM:").is_ok_and(|path| path.parameter("SMTPUTF8").is_some());
        // MAIL and RCPT one at a time, as Postfix's proxy sends them.
        let replay = Replay {
            lines: vec![transaction.mail_line, transaction.rcpt_line],
            answer: Answer::Last,
            judged: run.judged,
        };
        let (stream, pending) = (&mut backend.stream, &mut backend.pending);
        let refused = match self
            .send_replay(&client, stream, pending, replay, false, limit)
            .await
        {
            Ok(refused) => refused,
            Err(error) => {
                log::relay_error(client.address, &error);
                return self
                    .relay_unavailable(client.address, refused_rcpt, None)
                    .await;
            }
        };
        self.screening = None;
        let mut talk = Conversation {
            client,
            backend,
            envelope: accepted(envelope, refused, 2),
            judged: run.judged,
            routing: None,
            last: "RCPT".to_string(),
            chunking: false,
            relay: Some(Box::new(RelayMode {
                // STARTTLS now would take the conversation out of sight.
                ehlo_reply: String::from_utf8_lossy(&without_keywords(
                    engine.ehlo_reply().as_bytes(),
                    &["STARTTLS"],
                ))
                .into_owned(),
                smtputf8,
                timeout: limit,
            })),
        };
        Some(self.converse_until_flushed(&mut talk, flush).await)
    }

    /// No backend takes the client's RCPT: it gets Postfix's before-queue
    /// reply (or the backend's own 4xx, not a 421), logged as a RCPT
    /// refusal; its next RCPT tries the backends again.
    async fn relay_unavailable(
        &mut self,
        client: SocketAddr,
        mut refused: RefusedRcpt,
        said: Option<&[u8]>,
    ) -> Option<Phase> {
        let text = match said {
            Some(reply) if reply.starts_with(b"4") && !reply.starts_with(b"421") => {
                String::from_utf8_lossy(reply).into_owned()
            }
            _ => reply::QUEUE_WRITE_ERROR.to_string(),
        };
        self.send(&text).await;
        refused.reply = text.trim_end().replace("\r\n", " ");
        log::noqueue_rcpt(client, &refused);
        None
    }

    /// The commands relay mode answers differently from the other read
    /// conversations: EHLO/HELO (doorman's own answer; the backend keeps
    /// doorman's greeting and gets RSET), DATA, and AUTH (never offered).
    /// `None`: the command goes the common way.
    pub(super) async fn relay_mode_command<B>(
        &mut self,
        talk: &mut Conversation<B>,
        verb: &str,
        argument: &str,
    ) -> Option<Next>
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        talk.relay.as_ref()?;
        match verb {
            "EHLO" | "HELO" if argument.is_empty() => {
                Some(self.answer(&reply::helo_syntax(verb)).await)
            }
            "EHLO" | "HELO" => {
                if let Some(next) = self.judge(talk, Stage::Helo, argument).await {
                    return Some(next);
                }
                let relay = talk.relay.as_mut()?;
                let text = if verb == "EHLO" {
                    relay.ehlo_reply.clone()
                } else {
                    reply::helo(&self.shared.config.hostname)
                };
                let limit = relay.timeout;
                if self.forward(talk, verb, b"RSET\r\n", limit).await.is_none() {
                    return Some(Next::Close);
                }
                // The whole argument, as the engine keeps it; the trace
                // header neuters it.
                talk.envelope.helo = Some(argument.to_string());
                talk.envelope.esmtp = verb == "EHLO";
                end_transaction(&mut talk.envelope);
                Some(self.answer(&text).await)
            }
            "DATA" if !argument.is_empty() => Some(self.answer(reply::DATA_SYNTAX).await),
            "DATA" if talk.envelope.sender.is_none() => Some(self.answer(reply::NEED_RCPT).await),
            "DATA" if talk.envelope.recipients.is_empty() => {
                Some(self.answer(reply::NO_VALID_RECIPIENTS).await)
            }
            "DATA" => Some(self.relay_data(talk).await),
            "AUTH" => Some(self.answer(reply::AUTH_NOT_ENABLED).await),
            _ => None,
        }
    }
}
