//! The relay's tests: both directions, the PROXY guard, stalls, and the
//! lost-backend reply.

use super::*;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

/// A relay between two duplex pairs of `size` bytes, with `early`
/// bytes and the lost reply `421 lost`: the client's end, the
/// backend's end, and the relay's task.
fn start_relay(
    size: usize,
    early: &[u8],
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<Result<Ended, RelayError>>,
) {
    let (client, mut client_end) = duplex(size);
    let (backend, mut backend_end) = duplex(size);
    let early = BytesMut::from(early);
    let task = tokio::spawn(async move {
        relay(&mut client_end, &mut backend_end, early, b"421 lost\r\n").await
    });
    (client, backend, task)
}

#[tokio::test]
async fn early_bytes_go_first_and_both_directions_close() {
    let (mut client, mut backend, relaying) = start_relay(64, b"EHLO a\r\n");
    client.write_all(b"QUIT\r\n").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 64];
    while !got.ends_with(b"QUIT\r\n") {
        let read = backend.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..read]);
    }
    assert_eq!(got, b"EHLO a\r\nQUIT\r\n");
    assert_eq!(backend.read(&mut chunk).await.unwrap(), 0, "the half-close");
    backend.write_all(b"221 Bye\r\n").await.unwrap();
    drop(backend);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"221 Bye\r\n", "no 421 after the backend's answer");
    assert_eq!(relaying.await.unwrap().unwrap(), Ended::Done);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_let_go() {
    let (_client, mut client_end) = duplex(64);
    let (mut backend, mut backend_end) = duplex(64 * 1024);
    let relaying = tokio::spawn(async move {
        relay(&mut client_end, &mut backend_end, BytesMut::new(), b"").await
    });
    // The client never reads: the backend's bytes fill its side.
    backend.write_all(&[b'x'; 32 * 1024]).await.unwrap();
    let started = tokio::time::Instant::now();
    match relaying.await.unwrap() {
        Err(RelayError::Io(error)) => assert_eq!(error.kind(), io::ErrorKind::TimedOut),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= WRITE_STALL);
}

#[tokio::test]
async fn a_proxy_header_never_reaches_the_backend() {
    let (mut client, mut backend, relaying) = start_relay(256, b"PRO");
    client
        .write_all(b"XY TCP4 1.2.3.4 5.6.7.8 1 2\r\nMAIL FROM:<a@b>\r\n")
        .await
        .unwrap();
    match relaying.await.unwrap() {
        Err(RelayError::ProxyHeader(input)) => assert!(input.starts_with(b"PROXY TCP4")),
        other => panic!("{other:?}"),
    }
    let mut got = Vec::new();
    backend.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn a_backend_that_leaves_a_waiting_client_gives_it_the_lost_reply() {
    let (mut client, mut backend, relaying) = start_relay(256, b"");
    backend.write_all(b"250 ok\r\n").await.unwrap();
    let mut chunk = [0u8; 64];
    let read = client.read(&mut chunk).await.unwrap();
    assert_eq!(&chunk[..read], b"250 ok\r\n");
    client.write_all(b"MAIL FROM:<a@b>\r\n").await.unwrap();
    let read = backend.read(&mut chunk).await.unwrap();
    assert_eq!(&chunk[..read], b"MAIL FROM:<a@b>\r\n");
    drop(backend);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"421 lost\r\n");
    assert_eq!(relaying.await.unwrap().unwrap(), Ended::BackendLost);
}

#[tokio::test]
async fn an_answer_and_the_close_in_one_read_get_no_lost_reply() {
    let (mut client, mut backend, relaying) = start_relay(256, b"");
    client.write_all(b"QUIT\r\n").await.unwrap();
    let mut chunk = [0u8; 64];
    let read = backend.read(&mut chunk).await.unwrap();
    assert_eq!(&chunk[..read], b"QUIT\r\n");
    // The answer and the close, before the relay polls again.
    backend.write_all(b"221 bye\r\n").await.unwrap();
    drop(backend);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"221 bye\r\n");
    drop(client);
    assert_eq!(relaying.await.unwrap().unwrap(), Ended::Done);
}

#[tokio::test]
async fn the_lost_reply_only_into_plain_smtp_and_for_early_bytes_too() {
    // A command sent before the handoff, never answered.
    let (mut client, backend, relaying) = start_relay(256, b"MAIL FROM:<a@b>\r\n");
    drop(backend);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"421 lost\r\n");
    assert_eq!(relaying.await.unwrap().unwrap(), Ended::BackendLost);
    // TLS through the copy: a record after the backend's last bytes
    // gets no plain-text reply.
    let (mut client, mut backend, relaying) = start_relay(256, b"");
    client
        .write_all(&[22, 3, 1, 0, 5, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut chunk = [0u8; 64];
    let read = backend.read(&mut chunk).await.unwrap();
    assert_eq!(read, 10);
    backend.write_all(&[22, 3, 3, 0, 1, 9]).await.unwrap();
    let read = client.read(&mut chunk).await.unwrap();
    assert_eq!(read, 6);
    client.write_all(&[23, 3, 3, 0, 1, 7]).await.unwrap();
    assert_eq!(backend.read(&mut chunk).await.unwrap(), 6);
    drop(backend);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    drop(client);
    assert_eq!(relaying.await.unwrap().unwrap(), Ended::Done);
}

/// A stream whose reads fail as a reset connection does, and that
/// takes every write.
struct Resetting;

impl AsyncRead for Resetting {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
    }
}

impl AsyncWrite for Resetting {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(bytes.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_backend_that_resets_under_a_waiting_client_gives_it_the_lost_reply() {
    let (mut client, mut client_end) = duplex(256);
    let relaying = tokio::spawn(async move {
        let early = BytesMut::from(&b"RCPT TO:<a@b>\r\n"[..]);
        relay(&mut client_end, &mut Resetting, early, b"421 lost\r\n").await
    });
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"421 lost\r\n");
    assert_eq!(relaying.await.unwrap().unwrap(), Ended::BackendLost);
}

/// A backend whose reads wait and whose writes fail, as a killed
/// backend's socket does once its reset arrived before a read saw it.
struct Gone;

impl AsyncRead for Gone {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Gone {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_client_command_the_backend_cannot_take_gets_the_lost_reply() {
    let (mut client, mut client_end) = duplex(256);
    let relaying = tokio::spawn(async move {
        relay(&mut client_end, &mut Gone, BytesMut::new(), b"421 lost\r\n").await
    });
    client.write_all(b"DATA\r\n").await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"421 lost\r\n");
    assert_eq!(relaying.await.unwrap().unwrap(), Ended::BackendLost);
}

/// A client that sends `reads` (`None`: not yet, once), whose first write
/// waits a turn (it is slow to read), and whose writes land in `got`.
struct SlowReader {
    reads: std::collections::VecDeque<Option<&'static [u8]>>,
    waited: bool,
    got: Vec<u8>,
}

impl AsyncRead for SlowReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.reads.pop_front() {
            Some(Some(bytes)) => {
                buf.put_slice(bytes);
                Poll::Ready(Ok(()))
            }
            Some(None) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for SlowReader {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.got.extend_from_slice(bytes);
        Poll::Ready(Ok(bytes.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A backend that takes one write, then resets: its read fails on the
/// second try, and every later write fails.
struct ResetsAfterOne {
    reads: u32,
    writes: u32,
}

impl AsyncRead for ResetsAfterOne {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reads += 1;
        if self.reads == 1 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
    }
}

impl AsyncWrite for ResetsAfterOne {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes += 1;
        match self.writes {
            1 => Poll::Ready(Ok(bytes.len())),
            _ => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_client_told_the_backend_is_lost_is_told_once() {
    // The reset is read while the 421 waits for the slow client, whose
    // next command then fails to reach the backend.
    let mut client = SlowReader {
        reads: [Some(&b"NOOP\r\n"[..]), None, Some(&b"NOOP\r\n"[..])].into(),
        waited: false,
        got: Vec::new(),
    };
    let mut backend = ResetsAfterOne {
        reads: 0,
        writes: 0,
    };
    let ended = relay(&mut client, &mut backend, BytesMut::new(), b"421 lost\r\n").await;
    assert_eq!(ended.unwrap(), Ended::BackendLost);
    assert_eq!(String::from_utf8_lossy(&client.got), "421 lost\r\n");
}

#[tokio::test(start_paused = true)]
async fn no_lost_reply_after_a_goodbye_pipelined_behind_another_reply() {
    let (mut client, mut backend, relaying) = start_relay(256, b"");
    client.write_all(b"RSET\r\nQUIT\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 64];
    while !got.ends_with(b"QUIT\r\n") {
        let read = backend.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..read]);
    }
    backend
        .write_all(b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 29];
    client.read_exact(&mut answer).await.unwrap();
    // The client speaks after the goodbye; then the backend closes.
    client.write_all(b"NOOP\r\n").await.unwrap();
    while !got.ends_with(b"NOOP\r\n") {
        let read = backend.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..read]);
    }
    drop(backend);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "", "nothing after the 221");
    assert_eq!(relaying.await.unwrap().unwrap(), Ended::Done);
}

#[test]
fn a_goodbye_is_the_last_line_of_a_read() {
    assert!(ends_in_goodbye(b"221 2.0.0 Bye\r\n"));
    assert!(ends_in_goodbye(b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"));
    assert!(ends_in_goodbye(b"250 Ok\n421 4.4.2 timeout"));
    assert!(!ends_in_goodbye(b"221 Bye\r\n250 2.0.0 Ok\r\n"));
    assert!(!ends_in_goodbye(b"354 go ahead\r\n"));
}
