//! The backend pool.
//!
//! A client goes to the first backend that accepts, in config order, each
//! within its `connect_timeout`. The backend learns the real client from the
//! header `send_proxy` names. Health checks from HAProxy ask the pool whether
//! any backend is alive; the answer comes from a real probe (connect, the
//! check header, banner, QUIT) and is reused for one second, so a check storm
//! does not become a probe storm.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{BackendConfig, SendProxy};
use crate::log;
use crate::proxy::write;

/// How long a probe result is reused.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// No backend took the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no backend accepted the connection")]
pub struct NoBackend;

/// The backends of one config.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<BackendConfig>,
    last_probe: Mutex<Option<(Instant, bool)>>,
}

impl Pool {
    /// A pool over `backends`, in the order they are tried.
    pub fn new(backends: Vec<BackendConfig>) -> Self {
        Self {
            backends,
            last_probe: Mutex::new(None),
        }
    }

    /// Connects to the first backend that accepts and sends it the header
    /// for `client`, who connected to `destination`.
    pub async fn connect(
        &self,
        client: SocketAddr,
        destination: SocketAddr,
    ) -> Result<TcpStream, NoBackend> {
        for backend in &self.backends {
            match open(backend, client, destination).await {
                Ok(stream) => return Ok(stream),
                Err(error) => log::backend_unreachable(backend.address, &error),
            }
        }
        Err(NoBackend)
    }

    /// Whether some backend is alive, probing when the last answer is older
    /// than a second.
    pub async fn any_alive(&self) -> bool {
        if let Ok(last) = self.last_probe.lock() {
            if let Some((at, alive)) = *last {
                if at.elapsed() < PROBE_REUSE {
                    return alive;
                }
            }
        }
        let mut alive = false;
        for backend in &self.backends {
            match probe(backend).await {
                Ok(()) => {
                    alive = true;
                    break;
                }
                Err(error) => log::backend_unreachable(backend.address, &error),
            }
        }
        if let Ok(mut last) = self.last_probe.lock() {
            *last = Some((Instant::now(), alive));
        }
        alive
    }
}

/// Connects to one backend and sends the client's header.
async fn open(
    backend: &BackendConfig,
    client: SocketAddr,
    destination: SocketAddr,
) -> io::Result<TcpStream> {
    let mut stream = connect(backend).await?;
    let header = match backend.send_proxy {
        SendProxy::V2 => write::encode_v2(client, destination)?,
        SendProxy::V1 => write::encode_v1(client, destination),
        SendProxy::None => Vec::new(),
    };
    if !header.is_empty() {
        stream.write_all(&header).await?;
    }
    Ok(stream)
}

async fn connect(backend: &BackendConfig) -> io::Result<TcpStream> {
    let stream = timeout(backend.connect_timeout, TcpStream::connect(backend.address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Speaks to a backend as a health check would: the check header (v2
/// `LOCAL`, or a v1 line with doorman's own endpoints), expect a 2xx banner,
/// then QUIT.
async fn probe(backend: &BackendConfig) -> io::Result<()> {
    let mut stream = connect(backend).await?;
    match backend.send_proxy {
        SendProxy::V2 => stream.write_all(write::V2_LOCAL).await?,
        SendProxy::V1 => {
            let line = write::encode_v1(stream.local_addr()?, stream.peer_addr()?);
            stream.write_all(&line).await?;
        }
        SendProxy::None => {}
    }
    let mut banner = [0u8; 512];
    let read = timeout(backend.connect_timeout, stream.read(&mut banner))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no banner in time"))??;
    if read == 0 || banner[0] != b'2' {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("banner {:?}", log::escape(&banner[..read], 100)),
        ));
    }
    stream.write_all(b"QUIT\r\n").await?;
    Ok(())
}
