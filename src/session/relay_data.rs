//! Relay mode's DATA: doorman's own 354, the header block held and
//! checked before the backend sees a byte, doorman's `Received:` header
//! on top, the message through the framer, and the backend's own reply to
//! its end (or `451 4.3.0` when the backend is lost), logged as Postfix's
//! before-queue proxy logs it and counted.

use super::conversation::{end_transaction, Conversation, Next};
use super::message::END_OF_MESSAGE;
use super::*;
use crate::config::Config;
use crate::log::Whatsup;
use crate::metrics::RelayResult;
use crate::smtp::body::{DataFramer, Framed};
use crate::smtp::header_block::{HeaderHold, HeaderRefusal, Held};
use crate::smtp::received::{message_id, received_header, Protocol, Trace};

/// How the rest of a message went, after its header block.
enum Rest {
    /// It is all with the backend.
    Whole,
    /// The session ends on the client's side (it left, or paused too long
    /// and was told).
    Client(Next),
    /// A bare CR or LF under `bare_newline = "reject"`: the backend is
    /// inside DATA and cannot take the message back.
    BareNewline,
    /// The backend stopped taking it; the body was read to its end.
    Lost(io::Error),
}

/// How a held message ends before the backend's reply.
enum Outcome {
    /// doorman refused it before the backend saw it; the client gets this
    /// reply.
    Refused(String),
    /// doorman refused it while the backend was inside DATA: the client
    /// gets this reply and the session ends with the backend's
    /// connection, so the partial message is never queued.
    RefusedInData(String),
    /// The backend refused DATA; the client gets its reply.
    Rejected(Vec<u8>),
    /// The backend was lost; the client gets `451 4.3.0`.
    Lost(io::Error),
    /// The backend has the whole message; its reply is awaited.
    Sent,
}

impl<S: ClientIo> Session<Channel<S>> {
    /// DATA in relay mode (see the module docs).
    pub(super) async fn relay_data<B>(&mut self, talk: &mut Conversation<B>) -> Next
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
            (_, Framed::Rejected) => Err(bare_newline(&config)),
            // (A message that ended is judged whole by the verdict: its
            // end line is no part of its header block.)
            (Held::TooLarge, Framed::More) => Err(reply::HEADER_TOO_LARGE.to_string()),
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
                Rest::Whole => {}
                // The client left or was cut off (and told): the backend's
                // unfinished message goes with the connection.
                Rest::Client(next) => return next,
                Rest::BareNewline => outcome = Outcome::RefusedInData(bare_newline(&config)),
                Rest::Lost(error) => outcome = Outcome::Lost(error),
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
    /// after the client's body was read to its end.
    async fn relay_rest<B>(
        &mut self,
        talk: &mut Conversation<B>,
        framer: &mut DataFramer,
        mut framed: Framed,
        first: BytesMut,
    ) -> Rest
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let limit = talk.reply_time();
        let mut failed = None;
        let mut out = first;
        loop {
            if failed.is_none() && !out.is_empty() {
                match talk.backend.write_within(&out, limit).await {
                    Ok(()) => self.process.metrics.relay_bytes(out.len()),
                    Err(error) => failed = Some(error),
                }
            }
            out.clear();
            match framed {
                Framed::More => {}
                Framed::End => break,
                Framed::Rejected => return Rest::BareNewline,
            }
            if let Some(next) = self.read_body(talk, "DATA").await {
                return Rest::Client(next);
            }
            framed = framer.feed(&mut self.buffer, &mut out);
        }
        match failed {
            Some(error) => Rest::Lost(error),
            None => Rest::Whole,
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
                        log::proxy_end_of_message(talk.client.address, &answer, &whatsup(talk));
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
                log::proxy_end_of_message(talk.client.address, &answer, &whatsup(talk));
                self.send_bytes(&answer).await;
                (RelayResult::Rejected, self.relay_reset(talk).await)
            }
            Outcome::Refused(text) => {
                log::message_refused(talk.client.address, &text, &whatsup(talk));
                self.send(&text).await;
                (RelayResult::Refused, self.relay_reset(talk).await)
            }
            Outcome::RefusedInData(text) => {
                log::message_refused(talk.client.address, &text, &whatsup(talk));
                self.send(&text).await;
                (RelayResult::Refused, Next::Close)
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

/// The refusal of a message with a bare CR or LF under `bare_newline =
/// "reject"`.
fn bare_newline(config: &Config) -> String {
    reply::bare_newline(config.engine.bare_newline_reject_code, &config.hostname)
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
