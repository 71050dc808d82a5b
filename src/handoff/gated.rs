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
//!
//! For a cluster balanced by recipient the relay goes on for the whole
//! session: each RCPT whose user belongs to another backend gets `452 4.5.3
//! Too many recipients`, which MTAs (Postfix, Exim) answer by sending those
//! recipients in a transaction of their own, and DATA and BDAT bodies are
//! copied through (up to their end) so the next transaction is read too.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use doorman_gate_api::{Action, Client, Command, Envelope, Stage, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::backend_io::{read_reply, REPLY_TIMEOUT};
use super::pool::Pool;
use super::relay::RelayError;
use super::users::UserRoute;
use crate::config::RecipientKey;
use crate::gates::Pipeline;
use crate::log;
use crate::proxy::{starts_like_header, Prefix};
use crate::smtp::line::next_line;
use crate::smtp::reply;

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
    /// For a cluster balanced by recipient: where each RCPT belongs.
    pub route: Option<RecipientRoute<'a>>,
}

/// The backend a session balanced by recipient is connected to, and how a
/// RCPT's user is routed.
pub struct RecipientRoute<'a> {
    /// The pool that knows users' backends.
    pub pool: &'a Pool,
    /// The cluster.
    pub cluster: &'a str,
    /// What a user is.
    pub key: RecipientKey,
    /// How long a user's backend is remembered.
    pub expire: Duration,
    /// The backend this session is connected to.
    pub backend: std::net::SocketAddr,
}

/// How long a DATA or BDAT body may pause between two reads.
const BODY_TIMEOUT: Duration = Duration::from_secs(300);

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
        if gates.route.is_some() && (verb == "DATA" || verb == "BDAT") {
            if !body(client, buffer, backend, pending, &line, &raw).await? {
                return Ok(Gated::Closed);
            }
            continue;
        }
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
        if let (Some(route), Some((Stage::Rcpt, recipient))) = (&gates.route, &asked) {
            let user = route.key.of(recipient);
            let owner = UserRoute {
                cluster: route.cluster,
                user: &user,
                expire: route.expire,
            };
            match route.pool.backend_for(gates.client, &owner).await {
                Some(elsewhere) if elsewhere != route.backend => {
                    log::recipient_elsewhere(gates.client.address, recipient, elsewhere);
                    route.pool.users().count("split");
                    client
                        .write_all(reply::TOO_MANY_RECIPIENTS.as_bytes())
                        .await?;
                    continue;
                }
                _ => {}
            }
        }
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

/// Copies one DATA or BDAT command and its body to the backend, and the
/// backend's replies to the client; `false` when either side went away.
async fn body<C, B>(
    client: &mut C,
    buffer: &mut BytesMut,
    backend: &mut B,
    pending: &mut BytesMut,
    line: &crate::smtp::line::Line,
    raw: &[u8],
) -> Result<bool, RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (verb, argument) = line.split();
    backend.write_all(raw).await?;
    if verb == "DATA" {
        let go_ahead = read_reply(backend, pending, REPLY_TIMEOUT).await?;
        client.write_all(&go_ahead).await?;
        if !go_ahead.starts_with(b"354") {
            return Ok(true);
        }
        if !copy_until_end_of_data(client, buffer, backend).await? {
            return Ok(false);
        }
    } else {
        let size = argument
            .split_whitespace()
            .next()
            .and_then(|size| size.parse::<u64>().ok());
        if let Some(size) = size {
            if !copy_exactly(client, buffer, backend, size).await? {
                return Ok(false);
            }
        }
    }
    let reply = read_reply(backend, pending, BODY_TIMEOUT).await?;
    client.write_all(&reply).await?;
    Ok(true)
}

/// Copies a DATA body up to and with its `CRLF.CRLF`; what follows stays
/// in `buffer`.
async fn copy_until_end_of_data<C, B>(
    client: &mut C,
    buffer: &mut BytesMut,
    backend: &mut B,
) -> Result<bool, RelayError>
where
    C: AsyncRead + Unpin,
    B: AsyncWrite + Unpin,
{
    // As if the DATA line's own CRLF came just before.
    let mut window = [0u8, 0, 0, b'\r', b'\n'];
    loop {
        let end = buffer.iter().position(|&byte| {
            window = [window[1], window[2], window[3], window[4], byte];
            &window == b"\r\n.\r\n"
        });
        let take = end.map_or(buffer.len(), |end| end + 1);
        backend.write_all(&buffer.split_to(take)).await?;
        if end.is_some() {
            return Ok(true);
        }
        if !read_more(client, buffer).await? {
            return Ok(false);
        }
    }
}

/// Copies `size` body bytes of a BDAT chunk; what follows stays in
/// `buffer`.
async fn copy_exactly<C, B>(
    client: &mut C,
    buffer: &mut BytesMut,
    backend: &mut B,
    mut size: u64,
) -> Result<bool, RelayError>
where
    C: AsyncRead + Unpin,
    B: AsyncWrite + Unpin,
{
    while size > 0 {
        if buffer.is_empty() && !read_more(client, buffer).await? {
            return Ok(false);
        }
        let take = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        backend.write_all(&buffer.split_to(take)).await?;
        size -= take as u64;
    }
    Ok(true)
}

/// Reads more of the client's bytes; `false` when it closed or paused
/// longer than [`BODY_TIMEOUT`].
async fn read_more<C: AsyncRead + Unpin>(
    client: &mut C,
    buffer: &mut BytesMut,
) -> Result<bool, RelayError> {
    buffer.reserve(16 * 1024);
    match timeout(BODY_TIMEOUT, client.read_buf(buffer)).await {
        Ok(Ok(0)) | Err(_) => Ok(false),
        Ok(Ok(_)) => Ok(true),
        Ok(Err(error)) => Err(error.into()),
    }
}
