//! Relay mode (`send_proxy = "received"`), for backends that can be told
//! the client neither by a PROXY header nor by XCLIENT: doorman speaks to
//! them as Postfix's before-queue proxy does (`smtpd_proxy_filter`).
//!
//! - At the client's first accepted RCPT doorman connects, sends its own
//!   EHLO (STARTTLS first when the backend's `tls` says so), then the
//!   client's MAIL and RCPT one at a time; the backend's replies to them go
//!   to the client as they are. A backend that cannot be reached or
//!   refuses doorman's EHLO: `451 4.3.0 Error: queue file write error` (or
//!   its own 4xx), and every later RCPT gets the same.
//! - The conversation then goes on as every read conversation does, with
//!   doorman answering EHLO/HELO itself (the backend has doorman's) and no
//!   AUTH or BDAT.
//! - DATA gets doorman's own 354. The header block is held back
//!   ([`HeaderHold`]) and checked (hops, size) before the backend sees a
//!   byte; then DATA goes to the backend, doorman's `Received:` header
//!   first, then the message as the framer gives it. The client's end of
//!   DATA gets the backend's own reply, so nothing is accepted that the
//!   backend did not accept. A backend lost or too slow (`[relay] timeout`)
//!   at any step gets the client `451 4.3.0`, never a 250 and never a bare
//!   close.

use super::conversation::{end_transaction, BackendSide, Conversation, Next};
use super::handoff::{accepted, Answer, Replay};
use super::message::END_OF_MESSAGE;
use super::*;
use crate::handoff::TlsHandoff;
use crate::log::Whatsup;
use crate::metrics::RelayResult;
use crate::smtp::body::{DataFramer, Framed};
use crate::smtp::engine::Transaction;
use crate::smtp::header_block::{HeaderHold, HeaderRefusal, Held};
use crate::smtp::received::{message_id, received_header, Protocol, Trace};

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

/// How a held message ends before the backend's reply.
enum Outcome {
    /// doorman refused it; the client gets this reply.
    Refused(String),
    /// The backend refused DATA; the client gets its reply.
    Rejected(Vec<u8>),
    /// The backend was lost; the client gets `451 4.3.0`.
    Lost(io::Error),
    /// The backend has the whole message; its reply is awaited.
    Sent,
}

impl<S: ClientIo> Session<Channel<S>> {
    /// The client's first accepted RCPT, in relay mode: the backend is
    /// opened and brought to where the client is, then the conversation is
    /// read to its end (`Some`: the phase after). `None`: no backend took
    /// it; the client has its 4xx, and the engine gives every later RCPT
    /// the same.
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
            self.count(Counted::NoBackend);
            log::all_server_ports_busy(client.address, &self.cluster);
            return self.relay_unavailable(engine, None).await;
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
            true => backend.ask(&ehlo, limit).await,
            false => Ok(greeting),
        };
        match greeted {
            Ok(answer) if answer.starts_with(b"250") => {}
            Ok(answer) => {
                log::backend_refused(client.address, Some(address), &answer);
                return self.relay_unavailable(engine, Some(&answer)).await;
            }
            Err(error) => {
                log::relay_error(client.address, &error);
                return self.relay_unavailable(engine, None).await;
            }
        }
        let smtputf8 = has_parameter(&transaction.mail_line, "SMTPUTF8");
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
                return self.relay_unavailable(engine, None).await;
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
                ehlo_reply: engine.ehlo_reply(),
                smtputf8,
                timeout: limit,
            })),
        };
        Some(self.converse_until_flushed(&mut talk, flush).await)
    }

    /// No backend takes the client's first RCPT: it gets Postfix's
    /// before-queue reply (or the backend's own 4xx, not a 421), and so
    /// does every later RCPT.
    async fn relay_unavailable(
        &mut self,
        engine: &mut Engine,
        said: Option<&[u8]>,
    ) -> Option<Phase> {
        let text = match said {
            Some(reply) if reply.starts_with(b"4") && !reply.starts_with(b"421") => {
                String::from_utf8_lossy(reply).into_owned()
            }
            _ => reply::QUEUE_WRITE_ERROR.to_string(),
        };
        self.send(&text).await;
        engine.refuse_with(text);
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
        let relay = talk.relay.as_mut()?;
        match verb {
            "EHLO" | "HELO" if argument.is_empty() => {
                Some(self.answer(&reply::helo_syntax(verb)).await)
            }
            "EHLO" | "HELO" => {
                let text = if verb == "EHLO" {
                    relay.ehlo_reply.clone()
                } else {
                    reply::helo(&self.shared.config.hostname)
                };
                let limit = relay.timeout;
                if self.forward(talk, verb, b"RSET\r\n", limit).await.is_none() {
                    return Some(Next::Close);
                }
                talk.envelope.helo = argument.split([' ', '\t']).next().map(Into::into);
                talk.envelope.esmtp = verb == "EHLO";
                end_transaction(&mut talk.envelope);
                Some(self.answer(&text).await)
            }
            "MAIL" => {
                relay.smtputf8 = has_parameter(argument.as_bytes(), "SMTPUTF8");
                None
            }
            "DATA" if !argument.is_empty() => Some(self.answer(reply::DATA_SYNTAX).await),
            "DATA" if talk.envelope.sender.is_none() => Some(self.answer(reply::NEED_RCPT).await),
            "DATA" if talk.envelope.recipients.is_empty() => {
                Some(self.answer(reply::NO_VALID_RECIPIENTS).await)
            }
            "DATA" => Some(self.relay_data(talk).await),
            "AUTH" => Some(self.answer(reply::NOT_RECOGNIZED).await),
            _ => None,
        }
    }

    /// DATA in relay mode (see the module docs).
    async fn relay_data<B>(&mut self, talk: &mut Conversation<B>) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let config = Arc::clone(&self.shared.config);
        let limit = talk.reply_time();
        let arrived = SystemTime::now();
        self.send(reply::START_MAIL_INPUT).await;
        let mut framer = DataFramer::new(config.engine.bare_newline);
        let mut hold = HeaderHold::new(config.relay.max_header_size);
        let mut out = BytesMut::new();
        let (held, framed) = loop {
            let framed = framer.feed(&mut self.buffer, &mut out);
            let held = hold.push(&out);
            out.clear();
            if framed != Framed::More || held != Held::More {
                break (held, framed);
            }
            if let Some(next) = self.read_body(talk, "DATA").await {
                return next;
            }
        };
        if framed == Framed::End {
            hold.message_ended();
        }
        let checked = match (held, framed) {
            (_, Framed::Rejected) => Err(reply::bare_newline(
                config.engine.bare_newline_reject_code,
                &config.hostname,
            )),
            (Held::TooLarge, _) => Err(reply::HEADER_TOO_LARGE.to_string()),
            _ => hold.verdict(config.relay.max_hops).map_err(|refusal| {
                match refusal {
                    HeaderRefusal::TooManyHops => reply::TOO_MANY_HOPS,
                    HeaderRefusal::TooLarge => reply::HEADER_TOO_LARGE,
                }
                .to_string()
            }),
        };
        let mut outcome = match checked {
            Err(text) => Outcome::Refused(text),
            Ok(()) => match talk.backend.ask(b"DATA\r\n", limit).await {
                Ok(answer) if answer.starts_with(b"354") => Outcome::Sent,
                Ok(answer) if answer.starts_with(b"4") || answer.starts_with(b"5") => {
                    Outcome::Rejected(answer)
                }
                Ok(_) => Outcome::Lost(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "DATA answered without 354",
                )),
                Err(error) => Outcome::Lost(error),
            },
        };
        if let Outcome::Sent = outcome {
            let header = self.trace_header(talk, arrived);
            let mut first = BytesMut::from(header.as_bytes());
            first.extend_from_slice(&hold.into_bytes());
            match self.relay_rest(talk, &mut framer, framed, first).await {
                Ok(None) => {}
                // The client left or was cut off (and told): the backend's
                // unfinished message goes with the connection.
                Ok(Some(next)) => return next,
                Err(error) => outcome = Outcome::Lost(error),
            }
        } else if framed == Framed::More {
            if let Some(next) = self.drain_body(talk, &mut framer).await {
                return next;
            }
        }
        self.relay_end(talk, outcome).await
    }

    /// The rest of a message after its header block went to the backend
    /// (`first`: doorman's header and the held bytes): the body through
    /// the framer to its end. A backend that stops taking it is an error,
    /// after the client's body was read to its end; `Some`: the session
    /// ends on the client's side (it left, or paused too long and was
    /// told).
    async fn relay_rest<B>(
        &mut self,
        talk: &mut Conversation<B>,
        framer: &mut DataFramer,
        mut framed: Framed,
        first: BytesMut,
    ) -> io::Result<Option<Next>>
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let limit = talk.reply_time();
        let mut failed = talk.backend.write_within(&first, limit).await.err();
        self.process.metrics.relay_bytes(first.len());
        let mut out = BytesMut::new();
        while framed == Framed::More {
            if let Some(next) = self.read_body(talk, "DATA").await {
                return Ok(Some(next));
            }
            framed = framer.feed(&mut self.buffer, &mut out);
            if failed.is_none() && !out.is_empty() {
                failed = talk.backend.write_within(&out, limit).await.err();
                self.process.metrics.relay_bytes(out.len());
            }
            out.clear();
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(None),
        }
    }

    /// Reads and drops the rest of a refused message, to its end.
    async fn drain_body<B>(
        &mut self,
        talk: &Conversation<B>,
        framer: &mut DataFramer,
    ) -> Option<Next> {
        let mut dropped = BytesMut::new();
        loop {
            if self.read_body(talk, "DATA").await.is_some() {
                return Some(Next::Close);
            }
            if framer.feed(&mut self.buffer, &mut dropped) != Framed::More {
                return None;
            }
            dropped.clear();
        }
    }

    /// The end of a relay-mode message: the client gets the backend's
    /// reply to it (or doorman's refusal, or `451 4.3.0` for a backend
    /// lost), logged as Postfix's proxy logs it and counted.
    async fn relay_end<B>(&mut self, talk: &mut Conversation<B>, outcome: Outcome) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let limit = talk.reply_time();
        let metrics = Arc::clone(&self.process);
        let (result, next) = match outcome {
            Outcome::Sent => {
                let backend = &mut talk.backend;
                match read_reply(&mut backend.stream, &mut backend.pending, limit).await {
                    Ok(answer) => {
                        log::proxy_end_of_message(&answer, &whatsup(talk));
                        self.send_bytes(&answer).await;
                        let accepted = answer.starts_with(b"2");
                        let result = match accepted {
                            true => RelayResult::Accepted,
                            false => RelayResult::Rejected,
                        };
                        (result, Next::Go)
                    }
                    Err(error) => {
                        self.backend_lost(talk, END_OF_MESSAGE, &error).await;
                        (RelayResult::Failed, Next::Close)
                    }
                }
            }
            Outcome::Lost(error) => {
                self.backend_lost(talk, END_OF_MESSAGE, &error).await;
                (RelayResult::Failed, Next::Close)
            }
            Outcome::Rejected(answer) => {
                log::proxy_end_of_message(&answer, &whatsup(talk));
                self.send_bytes(&answer).await;
                (RelayResult::Rejected, self.relay_reset(talk).await)
            }
            Outcome::Refused(text) => {
                log::message_refused(talk.client.address, &text, &whatsup(talk));
                self.send(&text).await;
                (RelayResult::Refused, self.relay_reset(talk).await)
            }
        };
        metrics.metrics.relay_message(result);
        end_transaction(&mut talk.envelope);
        next
    }

    /// The backend's transaction is dropped (a message it never saw):
    /// RSET, its reply kept from the client.
    async fn relay_reset<B>(&mut self, talk: &mut Conversation<B>) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let limit = talk.reply_time();
        match talk.backend.ask(b"RSET\r\n", limit).await {
            Ok(_) => Next::Go,
            Err(error) => {
                log::relay_error(talk.client.address, &error);
                Next::Close
            }
        }
    }

    /// doorman's `Received:` header for the message the conversation is
    /// in.
    fn trace_header<B>(&self, talk: &Conversation<B>, arrived: SystemTime) -> String {
        let envelope = &talk.envelope;
        let smtputf8 = talk.relay.as_ref().is_some_and(|relay| relay.smtputf8);
        let protocol = match (envelope.esmtp, smtputf8) {
            (false, _) => Protocol::Smtp,
            (true, false) => Protocol::Esmtp,
            (true, true) => Protocol::Utf8Smtp,
        };
        let summary = self.stream.tls();
        let id = message_id(envelope.transaction, arrived);
        received_header(&Trace {
            helo: envelope.helo.as_deref(),
            name: envelope.names.verified.as_deref(),
            address: talk.client.ip(),
            tls: summary.as_ref(),
            hostname: &self.shared.config.hostname,
            protocol,
            id: &id,
            recipients: &envelope.recipients,
            date: arrived,
        })
    }
}

/// The envelope's part of Postfix's proxy log lines.
fn whatsup<B>(talk: &Conversation<B>) -> Whatsup<'_> {
    let envelope = &talk.envelope;
    Whatsup {
        sender: envelope.sender.as_deref().unwrap_or_default(),
        recipient: envelope.recipients.last().map(String::as_str),
        proto: if envelope.esmtp { "ESMTP" } else { "SMTP" },
        helo: envelope.helo.as_deref(),
    }
}

/// Whether a MAIL line (or its argument) carries the ESMTP parameter
/// `name`, in any case.
fn has_parameter(line: &[u8], name: &str) -> bool {
    String::from_utf8_lossy(line)
        .split_ascii_whitespace()
        .skip(1)
        .any(|word| {
            let keyword = word.split_once('=').map_or(word, |(keyword, _)| keyword);
            keyword.eq_ignore_ascii_case(name)
        })
}

#[cfg(test)]
mod tests {
    use super::has_parameter;

    #[test]
    fn parameters_are_found_in_any_case_but_not_in_the_address() {
        assert!(has_parameter(b"MAIL FROM:<a@b> smtputf8\r\n", "SMTPUTF8"));
        assert!(has_parameter(
            b"FROM:<a@b> BODY=8BITMIME SMTPUTF8",
            "SMTPUTF8"
        ));
        assert!(!has_parameter(b"MAIL FROM:<SMTPUTF8@b>\r\n", "SMTPUTF8"));
        assert!(!has_parameter(
            b"MAIL FROM:<a@b> BODY=8BITMIME\r\n",
            "SMTPUTF8"
        ));
    }
}
