//! The admin listener's accept loop, and what one connection may cost: at
//! most [`MAX_CONNECTIONS`] at once (one more is answered `503` and closed
//! without being read), a request head within [`HEADER_TIMEOUT`] and
//! [`MAX_HEAD`] bytes (hyper's limits: past them the connection is closed),
//! and a connection lives [`LIFETIME`], then finishes the request it is
//! serving and closes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::respond;
use crate::shared::{ConfigState, ProcessState};

/// The most admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes a request head may take.
const MAX_HEAD: usize = 16 * 1024;

/// How long a connection is served; then it finishes its request and closes
/// (a scraper that keeps its connection opens another).
const LIFETIME: Duration = Duration::from_secs(60);

/// The whole answer to a connection beyond [`MAX_CONNECTIONS`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 27\r\nconnection: close\r\n\r\ntoo many admin connections\n";

/// Serves requests until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    current: Arc<ArcSwap<ConfigState>>,
    process: ProcessState,
) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            // A fresh socket's send buffer takes these few bytes at once;
            // nothing is read, and the socket closes when dropped.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let current = Arc::clone(&current);
        let process = process.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let current = Arc::clone(&current);
                let process = process.clone();
                async move { Ok::<_, Infallible>(respond(request, peer, current, process).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = tokio::time::sleep(LIFETIME) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_TIMEOUT, connection).await;
                }
            }
            drop(place);
        });
    }
}
