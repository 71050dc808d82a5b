//! The client's TCP socket: its PROXY header read and a refusal written
//! at once, and handed to tokio's reactor only when the session has to
//! wait.
//!
//! Behind HAProxy a connection's PROXY header is usually in the socket by
//! the time doorman accepts it (always, on a listener with
//! `defer_accept`), and a refused client's whole life is that read, one
//! reply and the close. Registered at accept, as tokio's own `accept`
//! does, every such client cost an `epoll_ctl` to add it, the reactor's
//! bookkeeping, and an `epoll_ctl` to remove it (measured under strace:
//! 7.7 system calls a refusal against 5.7). Here a read or write that would
//! block registers the socket, and from then on it is tokio's
//! `TcpStream`; one that never blocks never costs any of that. Direct
//! reads and writes spend the task's budget as tokio's own do, so a
//! client whose bytes are always there cannot hold its thread, nor keep
//! a timeout from being looked at.
//!
//! Only the PROXY header is read this way: a phase that talks with the
//! client ([`ClientSocket::register`], called by the session before the
//! greet wait, a health check, the engine and the handoff) puts the
//! socket in the reactor first, so conversations, TLS and relays read on
//! tokio's own readiness. (Measured with every read
//! direct, one TLS session in five stalled: the client's EHLO, sent right
//! behind its Finished, was never answered.) Writes are made directly in
//! either state until the kernel first refuses one, and from then on wait
//! in the reactor: tokio learns a socket is writable only at the
//! reactor's next turn, and the engine's banner, the first write after
//! registering, would wait for that turn (and arm its timeout, which
//! wakes the thread's reactor once more).

use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::coop;

use crate::log;

/// How much of a read buffer a direct read fills at most (the part it
/// must zero first; a PROXY header and a first command fit).
const DIRECT_READ_AT_MOST: usize = 4096;

/// The flags of a direct write: a client that is gone gets `EPIPE`, never
/// a `SIGPIPE`, as std's own `send` asks (Rust binaries ignore that signal
/// anyway, which covers the systems without the flag).
#[cfg(any(target_os = "linux", target_os = "android"))]
const NO_SIGNAL: std::ffi::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const NO_SIGNAL: std::ffi::c_int = 0;

/// The most slices one vectored write sends (Linux's `UIO_MAXIOV`): a
/// longer list is written in part, as `writev` does, where `sendmsg`
/// would refuse it whole.
const IOV_MAX: usize = 1024;

/// How a registered socket's writes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writes {
    /// Straight to the kernel: tokio has not seen the socket writable yet.
    Direct,
    /// On tokio's readiness, since the kernel refused a write: tokio knows
    /// then when the socket has room, and a direct attempt would only add
    /// a refused call to each wait.
    Reactor,
}

/// A client's socket; see the module's documentation.
#[derive(Debug)]
pub struct ClientSocket(State);

#[derive(Debug)]
enum State {
    /// Not known to the reactor: read and written directly (it is
    /// non-blocking).
    Direct(std::net::TcpStream),
    /// In the reactor, with how its writes go.
    Registered(TcpStream, Writes),
    /// Registering failed; the error was returned.
    Failed,
}

impl ClientSocket {
    /// A socket just accepted (or handed back by the waiting room). It
    /// must be in non-blocking mode: a direct read must never wait.
    pub fn accepted(socket: std::net::TcpStream) -> Self {
        Self(State::Direct(socket))
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.0 {
            State::Direct(socket) => socket.local_addr(),
            State::Registered(socket, _) => socket.local_addr(),
            State::Failed => Err(failed()),
        }
    }

    /// The socket out of the reactor, for the waiting room.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self.0 {
            State::Direct(socket) => Ok(socket),
            State::Registered(socket, _) => socket.into_std(),
            State::Failed => Err(failed()),
        }
    }

    /// Puts the socket in the reactor now, before a phase that talks with
    /// the client. A failure is logged, and the next read or write
    /// returns it.
    pub fn register(&mut self) {
        let _ = self.registered();
    }

    /// Puts the socket in the reactor (once), and returns it there. A
    /// failure (the kernel out of room for the registration) is logged:
    /// the client's session ends as if it had gone.
    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if matches!(self.0, State::Direct(_)) {
            if let State::Direct(socket) = std::mem::replace(&mut self.0, State::Failed) {
                let socket = TcpStream::from_std(socket).inspect_err(log::socket_unwatched)?;
                self.0 = State::Registered(socket, Writes::Direct);
            }
        }
        match &mut self.0 {
            State::Registered(socket, _) => Ok(socket),
            _ => Err(failed()),
        }
    }
}

fn failed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the socket could not be polled",
    )
}

/// What a direct attempt came to: done, or `None` when it would have
/// blocked. An interrupted call is made again.
fn attempted<T>(mut attempt: impl FnMut() -> io::Result<T>) -> Option<io::Result<T>> {
    loop {
        match attempt() {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
            done => return Some(done),
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Direct(socket) = &this.0 {
            // A direct read spends the task's budget as tokio's would: a
            // client whose bytes are always there cannot hold the thread.
            let budget = ready!(coop::poll_proceed(cx));
            let room = buf.remaining().min(DIRECT_READ_AT_MOST);
            let unfilled = buf.initialize_unfilled_to(room);
            if let Some(done) = attempted(|| (&*socket).read(unfilled)) {
                budget.made_progress();
                return Poll::Ready(done.map(|read| buf.advance(read)));
            }
        }
        match this.registered() {
            Ok(socket) => Pin::new(socket).poll_read(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl ClientSocket {
    /// A write: `direct` while the kernel takes it, else `registered` in
    /// the reactor.
    ///
    /// A registered socket is written directly first too: tokio knows
    /// nothing of a socket's readiness until the reactor's next turn
    /// reports it, so the first reply after [`ClientSocket::register`]
    /// (the engine's banner) would otherwise wait for that turn, and arm
    /// the write's timeout on the way. Once the kernel refuses a write,
    /// that write and every later one wait on tokio's readiness
    /// ([`Writes::Reactor`]). A vectored write sends at most [`IOV_MAX`]
    /// slices, as `writev` would.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        mut direct: impl FnMut(&SockRef<'_>) -> io::Result<usize>,
        registered: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let socket = match &self.0 {
            State::Direct(socket) => Some(SockRef::from(socket)),
            State::Registered(socket, Writes::Direct) => Some(SockRef::from(socket)),
            State::Registered(_, Writes::Reactor) | State::Failed => None,
        };
        if let Some(socket) = socket {
            let budget = ready!(coop::poll_proceed(cx));
            if let Some(done) = attempted(|| direct(&socket)) {
                budget.made_progress();
                return Poll::Ready(done);
            }
        }
        match self.registered() {
            Ok(socket) => {
                let polled = registered(Pin::new(socket), cx);
                if let State::Registered(_, writes) = &mut self.0 {
                    *writes = Writes::Reactor;
                }
                polled
            }
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(
            cx,
            |socket| socket.send_with_flags(bytes, NO_SIGNAL),
            |socket, cx| socket.poll_write(cx, bytes),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(
            cx,
            |socket| socket.send_vectored_with_flags(&bytes[..bytes.len().min(IOV_MAX)], NO_SIGNAL),
            |socket, cx| socket.poll_write_vectored(cx, bytes),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            State::Registered(socket, _) => Pin::new(socket).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            State::Direct(socket) => Poll::Ready(socket.shutdown(Shutdown::Write)),
            State::Registered(socket, _) => Pin::new(socket).poll_shutdown(cx),
            State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: doorman's side as accepted (non-blocking,
    /// unregistered) and the peer's.
    fn pair() -> (ClientSocket, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, _) = listener.accept().unwrap();
        socket.set_nonblocking(true).unwrap();
        (ClientSocket::accepted(socket), peer)
    }

    #[tokio::test]
    async fn what_is_there_is_read_and_written_without_the_reactor() {
        let (mut socket, mut peer) = pair();
        peer.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut line = [0; 64];
        let read = socket.read(&mut line).await.unwrap();
        assert_eq!(
            &line[..read],
            b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n"
        );
        socket.write_all(b"521 5.7.1 go away\r\n").await.unwrap();
        let parts = [IoSlice::new(b"421 4.3.2 "), IoSlice::new(b"bye\r\n")];
        assert_eq!(socket.write_vectored(&parts).await.unwrap(), 15);
        assert!(matches!(socket.0, State::Direct(_)), "{socket:?}");
        socket.shutdown().await.unwrap();
        let mut reply = String::new();
        peer.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "521 5.7.1 go away\r\n421 4.3.2 bye\r\n");
        assert!(socket.into_std().is_ok());
    }

    #[tokio::test]
    async fn a_read_that_would_block_waits_in_the_reactor() {
        let (mut socket, mut peer) = pair();
        let mut line = [0; 64];
        let mut first = ReadBuf::new(&mut line);
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut socket).poll_read(cx, &mut first)))
                .await;
        assert!(polled.is_pending());
        assert!(matches!(socket.0, State::Registered(..)), "{socket:?}");
        peer.write_all(b"EHLO a.test\r\n").unwrap();
        let read = socket.read(&mut line).await.unwrap();
        assert_eq!(&line[..read], b"EHLO a.test\r\n");
        // Registered for good: the next read waits there too.
        peer.write_all(b"QUIT\r\n").unwrap();
        let read = socket.read(&mut line).await.unwrap();
        assert_eq!(&line[..read], b"QUIT\r\n");
        drop(peer);
        assert_eq!(socket.read(&mut line).await.unwrap(), 0);
        assert!(socket.local_addr().unwrap().ip().is_loopback());
        assert!(socket.into_std().is_ok());
    }

    /// A client whose bytes are always there still lets the thread's other
    /// tasks run: direct reads spend tokio's budget.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_that_never_block_still_yield_to_other_tasks() {
        let (mut socket, mut peer) = pair();
        peer.write_all(&[b'x'; 16 * 1024]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = tokio::spawn({
            let ran = ran.clone();
            async move { ran.store(true, std::sync::atomic::Ordering::Relaxed) }
        });
        let mut byte = [0; 1];
        let mut reads = 0;
        while !ran.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(socket.read(&mut byte).await.unwrap(), 1);
            reads += 1;
            assert!(reads < 10_000, "the other task never ran");
        }
        assert!(matches!(socket.0, State::Direct(_)), "{socket:?}");
        other.await.unwrap();
    }

    /// The reply after registering (the engine's banner) goes out in the
    /// same poll: tokio has not seen the socket writable yet, and its own
    /// write would wait for the reactor's next turn.
    #[tokio::test(flavor = "current_thread")]
    async fn a_registered_socket_is_written_at_once() {
        let (mut socket, mut peer) = pair();
        socket.register();
        assert!(matches!(socket.0, State::Registered(..)), "{socket:?}");
        let mut context = Context::from_waker(std::task::Waker::noop());
        let banner = b"220 mx.example ESMTP\r\n";
        let polled = Pin::new(&mut socket).poll_write(&mut context, banner);
        assert!(matches!(polled, Poll::Ready(Ok(22))), "{polled:?}");
        let parts = [IoSlice::new(b"250 "), IoSlice::new(b"ok\r\n")];
        let polled = Pin::new(&mut socket).poll_write_vectored(&mut context, &parts);
        assert!(matches!(polled, Poll::Ready(Ok(8))), "{polled:?}");
        let mut line = [0; 30];
        peer.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"220 mx.example ESMTP\r\n250 ok\r\n");
    }

    /// More slices than one `sendmsg` takes are written in part, as
    /// `writev` writes them, in either state.
    #[tokio::test]
    async fn a_vectored_write_of_more_slices_than_the_kernel_takes_is_written_in_part() {
        let (mut socket, _peer) = pair();
        let bytes = vec![b'x'; 2000];
        let parts: Vec<IoSlice<'_>> = bytes.chunks(1).map(IoSlice::new).collect();
        assert_eq!(socket.write_vectored(&parts).await.unwrap(), IOV_MAX);
        socket.register();
        assert_eq!(socket.write_vectored(&parts).await.unwrap(), IOV_MAX);
    }

    #[tokio::test]
    async fn a_write_that_would_block_waits_in_the_reactor_and_loses_nothing() {
        let (mut socket, mut peer) = pair();
        // More than the socket buffers hold: the write blocks part way.
        let sent: Vec<u8> = (0..8 * 1024 * 1024).map(|n| (n % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got
        });
        socket.write_all(&sent).await.unwrap();
        assert!(
            matches!(socket.0, State::Registered(_, Writes::Reactor)),
            "{socket:?}"
        );
        socket.shutdown().await.unwrap();
        drop(socket);
        assert!(reader.join().unwrap() == sent);
    }
}
