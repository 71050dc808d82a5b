//! The relay between a client and its backend.
//!
//! Bytes flow both ways until both sides are done; a half-close on one side
//! is passed on to the other. Once the backend has finished (an smtpd
//! closes after QUIT or its own timeouts), the client gets [`LINGER`] to
//! finish too, so a client that never closes cannot hold the session. The client's first bytes are checked before
//! any of them reach the backend: a PROXY header there (from a peer that is
//! not listed, or a second header behind a listed proxy's) would let a
//! client choose the address a backend believes, so it ends the session.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::{starts_like_header, Prefix};

/// The bytes one direction reads at a time.
const CHUNK: usize = 8192;

/// Copies from `from` to `to` until `from` ends. The buffer's memory is
/// written only by reads: no zeroing per connection, as tokio's `copy`
/// does for its own buffer.
async fn pump<R, W>(from: &mut R, to: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = Vec::with_capacity(CHUNK);
    loop {
        if from.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
        to.write_all(&buffer).await?;
        buffer.clear();
    }
}

/// How long a client may stay after its backend has finished.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

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

/// Relays between `client` and `backend`. `early` holds bytes the client
/// sent before the handoff; they go first.
pub async fn relay(
    client: &mut TcpStream,
    mut backend: TcpStream,
    mut early: BytesMut,
) -> Result<(), RelayError> {
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    // The first side to finish is passed on as a half-close; the second
    // needs none: both sockets are closed right after, and the close
    // sends the FIN (a shutdown then would only fail on a peer already
    // gone, one system call per connection for nothing).
    let one_done = AtomicBool::new(false);
    let to_client = async {
        pump(&mut backend_read, &mut client_write).await?;
        if !one_done.swap(true, Ordering::Relaxed) {
            client_write.shutdown().await?;
        }
        Ok::<(), RelayError>(())
    };
    let to_backend = async {
        loop {
            match starts_like_header(&early) {
                Prefix::Header => return Err(RelayError::ProxyHeader(early.to_vec())),
                Prefix::Other => break,
                Prefix::Undecided => {
                    early.reserve(64);
                    if client_read.read_buf(&mut early).await? == 0 {
                        break;
                    }
                }
            }
        }
        backend_write.write_all(&early).await?;
        drop(early);
        pump(&mut client_read, &mut backend_write).await?;
        if !one_done.swap(true, Ordering::Relaxed) {
            backend_write.shutdown().await?;
        }
        Ok(())
    };
    tokio::pin!(to_client, to_backend);
    tokio::select! {
        biased;
        done = &mut to_backend => {
            done?;
            to_client.await
        }
        done = &mut to_client => {
            done?;
            match tokio::time::timeout(LINGER, to_backend).await {
                Ok(done) => done,
                Err(_) => Ok(()),
            }
        }
    }
}
