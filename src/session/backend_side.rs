//! The backend side of a conversation doorman reads: its connection, the
//! bytes it sent that are not read yet, and writes and questions under
//! deadlines.

use super::*;

/// The backend side of a relayed conversation.
pub(super) struct BackendSide<B> {
    /// The connection.
    pub stream: B,
    /// Bytes the backend sent that are not read yet.
    pub pending: BytesMut,
    /// Its address, for log lines and routing.
    pub address: SocketAddr,
}

impl<B: AsyncRead + AsyncWrite + Unpin> BackendSide<B> {
    /// Writes `bytes` within the write deadline.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_within(bytes, WRITE_TIMEOUT).await
    }

    /// Writes `bytes` within `limit`.
    pub async fn write_within(&mut self, bytes: &[u8], limit: Duration) -> io::Result<()> {
        match timeout(limit, write_flushed(&mut self.stream, bytes)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the backend does not read",
            )),
        }
    }

    /// Sends `line` and reads the backend's whole reply within `limit`.
    pub async fn ask(&mut self, line: &[u8], limit: Duration) -> io::Result<Vec<u8>> {
        self.write(line).await?;
        read_reply(&mut self.stream, &mut self.pending, limit).await
    }
}

impl BackendSide<Channel<TcpStream>> {
    /// Sends `line` and reads the backend's whole reply within `limit`,
    /// the reply's packets acknowledged at once (doorman's first command
    /// after a TLS handshake: see [`Channel::acknowledge_at_once`]).
    pub async fn ask_at_once(&mut self, line: &[u8], limit: Duration) -> io::Result<Vec<u8>> {
        self.write(line).await?;
        self.stream.acknowledge_at_once();
        read_reply(&mut self.stream, &mut self.pending, limit).await
    }
}
