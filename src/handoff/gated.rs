//! The relay after a replay, while the engine gates still judge commands.
//!
//! A client replayed into its backend has had doorman's EHLO reply, which
//! never announces PIPELINING, so it sends one command and waits for the
//! reply. Until the client's DATA, BDAT, STARTTLS, AUTH or QUIT, each of its
//! lines is read here: MAIL and RCPT are first put to the gates (a refused
//! one is answered here and never reaches the backend), and every other
//! command goes to the backend, whose reply goes back to the client. From
//! the first command that carries data or changes the channel, the plain
//! relay takes over, with the bytes not read yet.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use doorman_gate_api::{Action, Client, Command, Envelope, Stage, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::backend_io::{read_reply, REPLY_TIMEOUT};
use super::relay::RelayError;
use crate::gates::Pipeline;
use crate::proxy::{starts_like_header, Prefix};
use crate::smtp::line::next_line;

/// Verbs after which only the plain relay may go on.
const HAND_OVER: [&str; 5] = ["DATA", "BDAT", "STARTTLS", "AUTH", "QUIT"];

/// The most recipients of one transaction the envelope keeps (the gates
/// see the count up to here).
const MAX_RECIPIENTS: usize = 1000;

/// Where the gated relay stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Gated {
    /// The plain relay goes on; the client's unread bytes are in the buffer.
    HandOver,
    /// The client closed, or stayed silent too long.
    Closed,
}

/// What the gated relay works with.
pub struct Gates<'a> {
    /// The gates.
    pub pipeline: &'a Pipeline,
    /// The client they judge.
    pub client: &'a Client,
    /// The dialogue so far; MAIL and RSET update it.
    pub envelope: Envelope,
    /// The longest command line.
    pub line_limit: usize,
    /// How long the client may take for one command.
    pub command_time: Duration,
}

/// Runs the gated relay until the plain relay may take over (see the
/// module docs). `buffer` holds the client's bytes not read yet, `pending`
/// the backend's.
pub async fn relay_gated<C, B>(
    client: &mut C,
    buffer: &mut BytesMut,
    backend: &mut B,
    pending: &mut BytesMut,
    mut gates: Gates<'_>,
) -> Result<Gated, RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if starts_like_header(buffer) == Prefix::Header {
            return Err(RelayError::ProxyHeader(buffer.to_vec()));
        }
        let line = match next_line(buffer, gates.line_limit) {
            Ok(Some(line)) => line,
            Ok(None) => {
                buffer.reserve(512);
                // The backend is watched too: one that gives up on the
                // client (its own timeout, a 421) ends the session now.
                let said = pending.len();
                tokio::select! {
                    read = timeout(gates.command_time, client.read_buf(buffer)) => match read {
                        Ok(Ok(0)) | Err(_) => return Ok(Gated::Closed),
                        Ok(Ok(_)) => continue,
                        Ok(Err(error)) => return Err(error.into()),
                    },
                    read = backend.read_buf(pending) => {
                        client.write_all(&pending[said..]).await?;
                        pending.truncate(said);
                        if !matches!(read, Ok(n) if n > 0) {
                            return Ok(Gated::Closed);
                        }
                    }
                }
                continue;
            }
            // Too long for a command: no gate can judge it; the backend
            // answers it.
            Err(_) => return Ok(Gated::HandOver),
        };
        let verb = line.verb();
        let mut raw = line.text.clone();
        raw.extend_from_slice(b"\r\n");
        if HAND_OVER.contains(&verb.as_str()) {
            let mut rest = BytesMut::with_capacity(raw.len() + buffer.len());
            rest.put_slice(&raw);
            rest.put_slice(buffer);
            *buffer = rest;
            return Ok(Gated::HandOver);
        }
        let asked = line.gate_question().filter(|(stage, _)| match stage {
            Stage::Helo => false,
            Stage::Mail => true,
            Stage::Rcpt => gates.envelope.sender.is_some(),
        });
        if let Some((stage, argument)) = &asked {
            let command = Command {
                stage: *stage,
                argument,
                envelope: &gates.envelope,
            };
            if let Verdict::Reject(rejection) = gates.pipeline.command(gates.client, command).await
            {
                match rejection.action {
                    Action::Ignore => {}
                    Action::Drop => {
                        client.write_all(rejection.drop_reply().as_bytes()).await?;
                        return Ok(Gated::Closed);
                    }
                    Action::Enforce => {
                        client
                            .write_all(rejection.enforce_reply().as_bytes())
                            .await?;
                        continue;
                    }
                }
            }
        }
        backend.write_all(&raw).await?;
        let reply = read_reply(backend, pending, REPLY_TIMEOUT).await?;
        client.write_all(&reply).await?;
        let accepted = reply.starts_with(b"2");
        match (verb.as_str(), asked) {
            ("MAIL", Some((_, sender))) if accepted => gates.envelope.sender = Some(sender),
            ("RCPT", Some((_, recipient)))
                if accepted && gates.envelope.recipients.len() < MAX_RECIPIENTS =>
            {
                gates.envelope.recipients.push(recipient)
            }
            ("RSET", _) | ("HELO", _) | ("EHLO", _) => {
                gates.envelope.sender = None;
                gates.envelope.recipients.clear();
            }
            _ => {}
        }
    }
}
