//! The relay between a client and its backend.
//!
//! Bytes flow both ways until both sides are done; a half-close on one side
//! is passed on to the other. Once the backend has finished (an smtpd
//! closes after QUIT or its own timeouts), the client gets [`LINGER`] to
//! finish too, so a client that never closes cannot hold the session, and
//! a write that makes no progress for [`WRITE_STALL`] (a peer that stops
//! reading) ends it too. The
//! client's first bytes are checked before any of them reach the backend:
//! a PROXY header there (from a peer that is not listed, or a second header
//! behind a listed proxy's) would let a client choose the address a backend
//! believes, so it ends the session.
//!
//! Both directions are polled in one future over any stream, plain or TLS
//! (as tokio's `copy_bidirectional`): nothing is split or locked, and a TLS
//! session is flushed whenever its reader has nothing more for now.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::{starts_like_header, Prefix};

/// The bytes one direction reads at a time.
const CHUNK: usize = 8192;

/// How long a client may stay after its backend has finished.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a write may make no progress (a peer that stops reading)
/// before the relay ends.
pub const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides finished.
    Done,
    /// The backend went away while the client waited for its reply (it
    /// had sent bytes the backend never answered): the client was given
    /// the relay's `lost` reply before the close.
    BackendLost,
}

/// Why a relay ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The client's first bytes were a PROXY header; they are returned for
    /// the log and were not forwarded.
    #[error("client sent a PROXY header")]
    ProxyHeader(Vec<u8>),
    /// A socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where one direction of the relay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pumping {
    /// Nothing written yet: the first bytes must show they are no PROXY
    /// header (the client's direction only).
    Guarded,
    /// Reading and writing.
    Copying,
    /// The reader ended; what was read is written and flushed.
    Ended,
}

/// One direction: a buffer that only reads write (no zeroing per
/// connection), and where it is.
struct Pump {
    buffer: BytesMut,
    state: Pumping,
    unflushed: bool,
    /// Running while a write makes no progress.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When this direction last read bytes, on the relay's clock.
    last_read: u64,
    /// Whether the reader ended while the other side waited, and the
    /// relay's reply for that was written.
    lost: bool,
    /// Whether the last line of the last bytes read is a reply that ends the
    /// session (`221`, `421`).
    goodbye: bool,
    /// Whether a TLS record was read (the two ends started TLS through the
    /// copy), so no plain-text reply may be added any more.
    binary: bool,
    /// Whether a write to the other side failed (it reset or went away).
    write_failed: bool,
}

impl Pump {
    fn new(buffer: BytesMut, guarded: bool) -> Self {
        Self {
            buffer,
            state: if guarded {
                Pumping::Guarded
            } else {
                Pumping::Copying
            },
            unflushed: false,
            stall: None,
            last_read: 0,
            lost: false,
            goodbye: false,
            binary: false,
            write_failed: false,
        }
    }

    /// A write that cannot go on now: the relay ends once it has made no
    /// progress for [`WRITE_STALL`].
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL)));
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer stopped reading",
        )
        .into()))
    }

    /// The reader ended (closed or reset). Decided now, not before the
    /// poll (the answer and the end may arrive in one): when the other
    /// side's last bytes came after this side's, `at_end`'s reply goes
    /// after the last bytes. Whether it did.
    fn end(&mut self, at_end: Option<(&[u8], u64)>) -> bool {
        self.state = Pumping::Ended;
        match at_end {
            Some((reply, other_read)) if other_read > self.last_read => {
                self.buffer.extend_from_slice(reply);
                self.lost = true;
                true
            }
            _ => false,
        }
    }

    /// Copies from `from` to `to`; ready once `from` has ended and all of
    /// it is written and flushed. Each read ticks `clock`. `at_end`, if
    /// any, is a reply and when the other direction last read: when `from`
    /// ends after the other side's last bytes (nothing answered them), the
    /// reply is written after the last bytes.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        (from, to): (&mut R, &mut W),
        clock: &mut u64,
        at_end: Option<(&[u8], u64)>,
    ) -> Poll<Result<(), RelayError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.state == Pumping::Guarded {
                match starts_like_header(&self.buffer) {
                    Prefix::Header => {
                        return Poll::Ready(Err(RelayError::ProxyHeader(self.buffer.to_vec())))
                    }
                    Prefix::Other => self.state = Pumping::Copying,
                    Prefix::Undecided => {}
                }
            }
            if self.state != Pumping::Guarded {
                while !self.buffer.is_empty() {
                    let written = match Pin::new(&mut *to).poll_write(cx, &self.buffer) {
                        Poll::Ready(Ok(0)) => Err(io::Error::from(io::ErrorKind::WriteZero)),
                        Poll::Ready(written) => written,
                        Poll::Pending => return self.stalled(cx),
                    };
                    let written = match written {
                        Ok(written) => written,
                        Err(error) => {
                            self.write_failed = true;
                            return Poll::Ready(Err(error.into()));
                        }
                    };
                    self.stall = None;
                    self.buffer.advance(written);
                    self.unflushed = true;
                }
            }
            if self.state == Pumping::Ended {
                return match Pin::new(&mut *to).poll_flush(cx) {
                    Poll::Ready(flushed) => Poll::Ready(flushed.map_err(Into::into)),
                    Poll::Pending => self.stalled(cx),
                };
            }
            if self.buffer.is_empty() {
                self.buffer.clear();
            }
            self.buffer.reserve(CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *from), cx, &mut self.buffer) {
                Poll::Pending => {
                    if self.unflushed {
                        match Pin::new(&mut *to).poll_flush(cx) {
                            Poll::Ready(flushed) => flushed?,
                            Poll::Pending => return self.stalled(cx),
                        }
                        self.unflushed = false;
                        self.stall = None;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    self.end(at_end);
                }
                Poll::Ready(Ok(read)) => {
                    *clock += 1;
                    self.last_read = *clock;
                    let fresh = &self.buffer[self.buffer.len() - read..];
                    self.goodbye = ends_in_goodbye(fresh);
                    // A TLS record: content type 20-23, then version 3.x.
                    self.binary |= matches!(fresh, [20..=23, 3, ..]);
                }
                // A peer that resets (a killed backend) ends as one that
                // closes, for the side that waits for its answer.
                Poll::Ready(Err(error)) => {
                    if !self.end(at_end) {
                        return Poll::Ready(Err(error.into()));
                    }
                }
            }
        }
    }
}

/// Whether the last line of `fresh` (one read) is a reply that ends the
/// session (`221`, `421`): pipelined replies come in one read, the
/// goodbye last (`250 ...`, `221 ...` for `RSET`, `QUIT`).
fn ends_in_goodbye(fresh: &[u8]) -> bool {
    let lines = fresh.strip_suffix(b"\n").unwrap_or(fresh);
    let last = lines
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(lines, |end| &lines[end + 1..]);
    last.starts_with(b"221") || last.starts_with(b"421")
}

/// Relays between `client` and `backend`. `early` holds bytes the client
/// sent before the handoff; they go first, once they show they are no
/// PROXY header. A backend that ends while the client waits for its
/// reply (the client's last bytes came after the backend's) gives the
/// client `lost` before the close ([`Ended::BackendLost`]).
pub async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    early: BytesMut,
    lost: &[u8],
) -> Result<Ended, RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // Bytes the client sent before the handoff count as its last read:
    // the backend has answered nothing of them yet.
    let mut clock = u64::from(!early.is_empty());
    let mut up = Pump::new(early, true);
    up.last_read = clock;
    let mut down = Pump::new(BytesMut::new(), false);
    let ended = |down: &Pump| match down.lost {
        true => Ended::BackendLost,
        false => Ended::Done,
    };
    let (mut up_done, mut down_done) = (false, false);
    // The first side to finish is passed on as a half-close; the second
    // needs none: both sockets are closed right after, and the close
    // sends the FIN.
    let mut closing: Option<bool> = None;
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| loop {
        if let Some(to_client) = closing {
            let shut = if to_client {
                Pin::new(&mut *client).poll_shutdown(cx)
            } else {
                Pin::new(&mut *backend).poll_shutdown(cx)
            };
            // A peer already gone cannot take a half-close; the other
            // direction still ends the relay.
            if ready!(shut).is_err() {
                return Poll::Ready(Ok(ended(&down)));
            }
            closing = None;
            // The client was told the backend is gone: nothing it sends
            // now goes anywhere, so it gets no linger.
            if down.lost {
                return Poll::Ready(Ok(Ended::BackendLost));
            }
        }
        if !down_done {
            // Only into a plain SMTP stream, and not after the backend's
            // own goodbye.
            let plain = !up.binary && !down.binary && !down.goodbye;
            let at_end = (!up_done && plain).then_some((lost, up.last_read));
            if let Poll::Ready(done) = down.poll_copy(cx, (backend, client), &mut clock, at_end) {
                done?;
                down_done = true;
                if up_done {
                    return Poll::Ready(Ok(ended(&down)));
                }
                closing = Some(true);
                linger = Some(Box::pin(tokio::time::sleep(LINGER)));
                continue;
            }
        }
        if !up_done {
            if let Poll::Ready(done) = up.poll_copy(cx, (client, backend), &mut clock, None) {
                // The client's bytes could not reach the backend (a killed
                // backend resets before its read side tells): the client
                // waits for an answer to them, so it gets the lost reply,
                // as when the backend's end is read; once (a reply already
                // queued for a read reset is left to go out alone).
                let plain = !up.binary && !down.binary && !down.goodbye;
                if done.is_err() && up.write_failed && plain && !down_done {
                    if !down.lost {
                        down.buffer.extend_from_slice(lost);
                        down.lost = true;
                        down.state = Pumping::Ended;
                    }
                    up_done = true;
                    continue;
                }
                done?;
                up_done = true;
                if down_done {
                    return Poll::Ready(Ok(ended(&down)));
                }
                closing = Some(false);
                continue;
            }
        }
        if let Some(linger) = &mut linger {
            ready!(linger.as_mut().poll(cx));
            return Poll::Ready(Ok(ended(&down)));
        }
        return Poll::Pending;
    })
    .await
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
