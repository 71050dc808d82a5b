//! A connection that may have started TLS: plain bytes, or a TLS session
//! over the same socket. The client's side and a backend's side are both
//! channels, so the engine, the replay and the relay read and write one
//! type whichever it is.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::TlsStream;

use super::TlsSummary;

/// A socket, before or after STARTTLS.
#[derive(Debug)]
pub enum Channel<S> {
    /// Plain text.
    Plain(S),
    /// TLS over the socket (boxed: a TLS session is tens of KiB, a plain
    /// connection should not carry its size).
    Tls(Box<TlsStream<S>>),
    /// The socket went into a handshake that failed: nothing more to read
    /// or write.
    Gone,
}

impl<S> Channel<S> {
    /// The plain socket, taken out for a handshake; the channel is `Gone`
    /// until the TLS session is put back. `None` when TLS is already on.
    pub fn take_plain(&mut self) -> Option<S> {
        match std::mem::replace(self, Channel::Gone) {
            Channel::Plain(stream) => Some(stream),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The plain socket, if TLS never started.
    pub fn plain(&self) -> Option<&S> {
        match self {
            Channel::Plain(stream) => Some(stream),
            _ => None,
        }
    }

    /// The plain socket by value, if TLS never started.
    pub fn into_plain(self) -> Option<S> {
        match self {
            Channel::Plain(stream) => Some(stream),
            _ => None,
        }
    }

    /// What the TLS session is, when there is one.
    pub fn tls(&self) -> Option<TlsSummary> {
        match self {
            Channel::Tls(stream) => match stream.as_ref() {
                TlsStream::Server(stream) => TlsSummary::of(stream.get_ref().1),
                TlsStream::Client(stream) => TlsSummary::of(stream.get_ref().1),
            },
            _ => None,
        }
    }
}

impl Channel<tokio::net::TcpStream> {
    /// After doorman's write that waits for an answer inside TLS: the
    /// kernel acknowledges what the peer sends next at once
    /// (`TCP_QUICKACK`), instead of holding the ACK for up to 40 ms.
    ///
    /// Right after a TLS 1.3 handshake a server writes twice in a row:
    /// its session tickets (as soon as it reads doorman's Finished), then
    /// the answer to doorman's first command. A server that leaves
    /// Nagle's algorithm on (Postfix's smtpd does) holds that answer until
    /// the tickets are acknowledged, and doorman, with nothing more to
    /// send, would acknowledge them only when its delayed-ACK timer
    /// fires: measured, 43 ms of every session replayed into Postfix over
    /// STARTTLS. The kernel goes back to delaying ACKs on its own when the
    /// dialogue turns interactive, so this is asked again after each
    /// write that waits. Plain text needs none of it: there a server's
    /// answer is one write.
    ///
    /// `TCP_QUICKACK` is Linux's (and Android's): elsewhere this does
    /// nothing, and the build does not depend on it.
    pub fn acknowledge_at_once(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Channel::Tls(stream) = self {
            let _ = socket2::SockRef::from(stream.get_ref().0).set_tcp_quickack(true);
        }
    }
}

/// Writes `bytes` whole, then flushes them. Inside TLS a write returns
/// once rustls has taken the bytes, and the records the socket could not
/// take at once wait in rustls's buffer until the next write or a flush:
/// a reply, or a command, followed by a wait for the peer must be flushed,
/// or the peer waits for its last bytes until a timeout ends the session.
/// (On a plain socket the flush costs nothing.)
pub async fn write_flushed<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Channel<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Channel::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Channel::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Channel::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Channel<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Channel::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Channel::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Channel::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Channel::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Channel::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Channel::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Channel::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Channel::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            Channel::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that, as a TLS stream over a full socket does, takes bytes
    /// and sends them only when flushed.
    #[derive(Default)]
    struct Holding {
        held: Vec<u8>,
        sent: Vec<u8>,
    }

    impl AsyncWrite for Holding {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().held.extend_from_slice(bytes);
            Poll::Ready(Ok(bytes.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.sent.append(&mut this.held);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_reply_is_sent_not_only_taken() {
        let mut stream = Holding::default();
        write_flushed(&mut stream, b"250 2.0.0 Ok\r\n")
            .await
            .unwrap();
        assert_eq!(stream.sent, b"250 2.0.0 Ok\r\n");
        assert!(stream.held.is_empty());
    }
}
