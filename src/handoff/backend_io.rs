//! What doorman says to a backend on its own: the XCLIENT dialogue, the
//! STARTTLS that puts a decrypted client's session in TLS again, the reply
//! reader, and the health probe. The pool decides which backend and when.

use std::io;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use doorman_gate_api::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::xclient;
use crate::config::{BackendConfig, SendProxy};
use crate::log;
use crate::proxy::write;
use crate::smtp::response::complete_reply;
use crate::tls::backend::BackendTlsClient;
use crate::tls::{Channel, TlsSummary};

/// The longest reply doorman reads from a backend.
const REPLY_LIMIT: usize = 8192;

/// The room a read of a backend's reply has at least: an EHLO reply in
/// one read, where a buffer that grows by itself took 64, 64, then 128.
const REPLY_READ_ROOM: usize = 512;

/// How long a backend may take to greet a client, or to answer a command
/// doorman replays for one (Postfix's smtpd may look the client up in DNS
/// before its banner).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A client whose TLS doorman terminated, handed to a backend.
#[derive(Clone, Copy, Debug)]
pub struct TlsHandoff<'a> {
    /// The client's TLS session with doorman; `None` for a plain client
    /// of a relay-mode backend that is set to `tls = "starttls"`.
    pub summary: Option<&'a TlsSummary>,
    /// The EHLO line sent before STARTTLS (doorman's own).
    pub ehlo: &'a [u8],
}

/// STARTTLS with a backend that greeted: doorman's EHLO, STARTTLS, and
/// the client handshake. Nothing may follow the backend's 220 before
/// the handshake (what did would be plaintext injected into TLS).
pub(super) async fn start_tls(
    tls: &BackendTlsClient,
    mut stream: TcpStream,
    pending: &mut BytesMut,
    ehlo: &[u8],
) -> io::Result<Channel<TcpStream>> {
    let refused = |step: &str, reply: &[u8]| {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("STARTTLS: {step}: {}", log::escape(reply, 200)),
        )
    };
    stream.write_all(ehlo).await?;
    let reply = read_reply(&mut stream, pending, REPLY_TIMEOUT).await?;
    if !reply.starts_with(b"250") {
        return Err(refused("EHLO refused", &reply));
    }
    stream.write_all(b"STARTTLS\r\n").await?;
    let reply = read_reply(&mut stream, pending, REPLY_TIMEOUT).await?;
    if !reply.starts_with(b"220") {
        return Err(refused("STARTTLS refused", &reply));
    }
    if !pending.is_empty() {
        return Err(refused("bytes after its 220 to STARTTLS", pending));
    }
    let session = timeout(REPLY_TIMEOUT, tls.connect(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "STARTTLS: handshake timed out"))?
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "STARTTLS: handshake: {}",
                    log::escape(error.to_string().as_bytes(), 200)
                ),
            )
        })?;
    Ok(Channel::Tls(Box::new(tokio_rustls::TlsStream::Client(
        session,
    ))))
}

/// Banner, EHLO (XCLIENT must be announced), XCLIENT, and the fresh 220.
pub(super) async fn xclient_dialogue(
    stream: &mut TcpStream,
    backend: &BackendConfig,
    client: &Client,
    hostname: &str,
) -> io::Result<Vec<u8>> {
    let mut buffer = BytesMut::with_capacity(1024);
    let refused = |step: &str, reply: &[u8]| {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("XCLIENT {step}: {}", log::escape(reply, 200)),
        )
    };
    let banner = read_reply(stream, &mut buffer, backend.connect_timeout).await?;
    if !banner.starts_with(b"2") {
        return Err(refused("banner", &banner));
    }
    stream
        .write_all(format!("EHLO {hostname}\r\n").as_bytes())
        .await?;
    let ehlo = read_reply(stream, &mut buffer, backend.connect_timeout).await?;
    let attributes = match xclient::announced(&ehlo) {
        Some(attributes) if ehlo.starts_with(b"250") => attributes,
        _ => return Err(refused("not announced in EHLO", &ehlo)),
    };
    stream
        .write_all(xclient::command(client, &attributes).as_bytes())
        .await?;
    let greeting = read_reply(stream, &mut buffer, backend.connect_timeout).await?;
    if !greeting.starts_with(b"220") {
        return Err(refused("refused", &greeting));
    }
    Ok(greeting)
}

/// Reads one whole (multi-line) reply within `limit`; bytes after it stay
/// in `buffer`.
pub async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
    limit: Duration,
) -> io::Result<Vec<u8>> {
    loop {
        match complete_reply(buffer, REPLY_LIMIT) {
            Ok(Some(reply)) => return Ok(buffer.split_to(reply.length).to_vec()),
            Ok(None) => {}
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("malformed reply {:?}", log::escape(buffer, 200)),
                ))
            }
        }
        // Never past the limit: the room reserved may be larger (a
        // buffer's capacity doubles).
        buffer.reserve(REPLY_READ_ROOM);
        let room = REPLY_LIMIT.saturating_sub(buffer.len());
        let read = timeout(limit, stream.read_buf(&mut (&mut *buffer).limit(room)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))??;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed the connection",
            ));
        }
    }
}

pub(super) async fn connect(backend: &BackendConfig) -> io::Result<TcpStream> {
    let stream = timeout(backend.connect_timeout, TcpStream::connect(backend.address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Speaks to a backend as a health check: the check header (v2 `LOCAL`, or
/// a v1 line with doorman's own endpoints), a 2xx banner, EHLO (whose
/// keywords are returned, for the built-in engine to announce), then QUIT.
pub(super) async fn probe(
    backend: &BackendConfig,
    hostname: &str,
) -> io::Result<Option<Vec<String>>> {
    let mut stream = connect(backend).await?;
    match backend.send_proxy {
        SendProxy::V2 => stream.write_all(write::V2_LOCAL).await?,
        SendProxy::V1 => {
            let line = write::encode_v1(stream.local_addr()?, stream.peer_addr()?);
            stream.write_all(&line).await?;
        }
        SendProxy::Xclient | SendProxy::None | SendProxy::Received => {}
    }
    let mut buffer = BytesMut::with_capacity(512);
    let banner = read_reply(&mut stream, &mut buffer, backend.connect_timeout).await?;
    if !banner.starts_with(b"2") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("banner {:?}", log::escape(&banner, 100)),
        ));
    }
    // The EHLO keywords are a bonus: a backend that greets but does not
    // answer EHLO is still up.
    stream
        .write_all(format!("EHLO {hostname}\r\n").as_bytes())
        .await?;
    let ehlo = read_reply(&mut stream, &mut buffer, backend.connect_timeout)
        .await
        .ok()
        .map(|ehlo| keywords(&ehlo));
    let _ = stream.write_all(b"QUIT\r\n").await;
    Ok(ehlo)
}

/// The keywords of a 250 EHLO reply (every line after the first).
fn keywords(ehlo: &[u8]) -> Vec<String> {
    if !ehlo.starts_with(b"250") {
        return Vec::new();
    }
    String::from_utf8_lossy(ehlo)
        .lines()
        .skip(1)
        .filter_map(|line| line.get(4..))
        .map(|keyword| keyword.trim().to_string())
        .filter(|keyword| !keyword.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// A backend that sends its reply in pieces, each as one read (a
    /// piece larger than the room offered is cut), and counts the reads.
    struct Pieces {
        pieces: std::collections::VecDeque<Vec<u8>>,
        reads: usize,
    }

    impl Pieces {
        fn new(pieces: impl IntoIterator<Item = Vec<u8>>) -> Self {
            Self {
                pieces: pieces.into_iter().collect(),
                reads: 0,
            }
        }
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            if let Some(mut piece) = self.pieces.pop_front() {
                let take = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..take]);
                if take < piece.len() {
                    self.pieces.push_front(piece.split_off(take));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// A reply over the limit is refused, however its pieces fall: 7.7 KB
    /// of lines, then 8.3 KB more in one burst (the buffer's capacity
    /// doubles past the limit on the way).
    #[tokio::test]
    async fn a_reply_longer_than_the_limit_is_refused() {
        let line = |code: &[u8]| [code, &[b'x'; 94][..], b"\r\n"].concat();
        let mut burst: Vec<u8> = (0..82).flat_map(|_| line(b"250-")).collect();
        burst.extend(line(b"250 "));
        let mut backend = Pieces::new((0..77).map(|_| line(b"250-")).chain([burst]));
        let reply = read_reply(&mut backend, &mut BytesMut::new(), REPLY_TIMEOUT).await;
        assert!(
            reply.is_err(),
            "{:?} bytes accepted",
            reply.map(|r| r.len())
        );
    }

    /// Postfix's EHLO reply, 161 bytes, comes in one read, not three.
    #[tokio::test]
    async fn an_ehlo_reply_is_read_at_once() {
        let ehlo: &'static [u8] = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
            250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
            250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
        let mut backend = Pieces::new([ehlo.to_vec()]);
        let mut buffer = BytesMut::new();
        let reply = read_reply(&mut backend, &mut buffer, REPLY_TIMEOUT).await;
        assert_eq!(reply.unwrap(), ehlo);
        assert_eq!(backend.reads, 1);
        assert!(buffer.is_empty());
    }
}
