//! Accept loops and shutdown.
//!
//! [`Server::bind`] opens every listener first, so a port that is taken is
//! an error before any client is served. [`Server::serve`] runs one accept
//! loop per listener and one task per connection. When the shutdown future
//! completes, the loops stop accepting, live sessions get the grace period to
//! finish, and whatever is left is then closed.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ListenerConfig};
use crate::limits::Limits;
use crate::log;
use crate::session::Session;
use crate::shared::Shared;

/// How long to pause after an accept error (e.g. out of file descriptors),
/// so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Bound listeners with the config they serve.
pub struct Server {
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    listeners: Vec<(TcpListener, ListenerConfig)>,
}

impl Server {
    /// Binds every listener of `config`.
    pub async fn bind(config: Config) -> io::Result<Self> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let socket = TcpListener::bind(listener.address).await.map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on {}: {error}", listener.address),
                )
            })?;
            log::listening(socket.local_addr()?);
            listeners.push((socket, listener.clone()));
        }
        let shared = Shared::new(config).map_err(|error| io::Error::other(error.to_string()))?;
        shared.pool.check_all().await;
        shared.pool.start_checks();
        Ok(Self {
            shared: Arc::new(shared),
            limits: Arc::new(Limits::default()),
            listeners,
        })
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let stop_accepting = CancellationToken::new();
        let cut_sessions = CancellationToken::new();
        let sessions = TaskTracker::new();
        let mut loops = Vec::new();
        for (socket, listener) in self.listeners {
            loops.push(tokio::spawn(accept_loop(
                socket,
                listener,
                Arc::clone(&self.shared),
                Arc::clone(&self.limits),
                sessions.clone(),
                stop_accepting.clone(),
                cut_sessions.clone(),
            )));
        }
        let cleanup = tokio::spawn(clean_cache(Arc::clone(&self.shared)));
        shutdown.await;
        cleanup.abort();
        stop_accepting.cancel();
        for accept in loops {
            let _ = accept.await;
        }
        sessions.close();
        log::shutdown_started(sessions.len(), self.shared.config.shutdown_grace);
        let mut cut = 0;
        if tokio::time::timeout(self.shared.config.shutdown_grace, sessions.wait())
            .await
            .is_err()
        {
            cut = sessions.len();
            cut_sessions.cancel();
            sessions.wait().await;
        }
        self.shared.cache.close().await;
        log::shutdown_finished(cut);
    }
}

/// Cleans the pass cache every `cleanup_interval` (postscreen's
/// `postscreen_cache_cleanup_interval`); Redis keys expire by themselves.
async fn clean_cache(shared: Arc<Shared>) {
    let interval = shared.config.cache.cleanup_interval;
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(interval).await;
        match shared.cache.cleanup(std::time::SystemTime::now()).await {
            Some(Ok((retained, dropped))) => {
                log::cache_cleanup(&shared.cache.name(), retained, dropped)
            }
            Some(Err(error)) => log::cache_error(&shared.cache.name(), &error),
            None => return,
        }
    }
}

async fn accept_loop(
    socket: TcpListener,
    listener: ListenerConfig,
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    sessions: TaskTracker,
    stop_accepting: CancellationToken,
    cut_sessions: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop_accepting.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let session = Session::new(
                    stream,
                    peer,
                    &listener,
                    Arc::clone(&shared),
                    Arc::clone(&limits),
                );
                let cut = cut_sessions.clone();
                sessions.spawn(async move {
                    tokio::select! {
                        _ = session.run() => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
            Err(error) => {
                log::accept_error(listener.address, &error);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}
