//! Accept loops, reload and shutdown.
//!
//! [`Server::bind`] opens every listener first, so a port that is taken is
//! an error before any client is served. [`Server::serve`] runs one accept
//! loop per listening socket and one task per connection: with
//! `[runtime] model = "per-core"` each listener has a socket per serving
//! thread, and the threads other than the caller's run on runtimes of
//! their own ([`crate::threads`]). Each connection takes the
//! config snapshot current when it is accepted. SIGHUP rereads the config
//! and every file it names; a valid one is swapped in atomically for new
//! connections (live sessions keep theirs, and removed backends drain with
//! them), an invalid one is refused and the running one stays. When the
//! shutdown future completes, the loops stop accepting, live sessions get
//! the grace period to finish, and whatever is left is then closed.
//!
//! It is the one place that owns the listening sockets and the reload; it
//! never speaks SMTP itself.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::agent;
use crate::config::Registry;
use crate::config::{Config, ListenerConfig, RestartOnly};
use crate::log;
use crate::memory;
use crate::session::{ClientSocket, Session};
use crate::shared::{ConfigState, ProcessState};
use crate::threads::{self, Threads};
use crate::waiting_room::{Resumable, WaitingRoom};

/// How long to pause after an accept error (e.g. out of file descriptors),
/// so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Bound listeners with the config they serve.
pub struct Server {
    current: Arc<ArcSwap<ConfigState>>,
    process: ProcessState,
    /// Each listener's sockets, one per serving thread.
    listeners: Vec<(Vec<std::net::TcpListener>, ListenerConfig)>,
    admin: Option<TcpListener>,
    agent: Option<TcpListener>,
    /// What the running process took from the config at start-up and keeps
    /// to the next restart.
    started: Arc<RestartOnly>,
}

impl Server {
    /// Binds every listener of `config` and checks the backends once.
    pub async fn bind(config: Config) -> io::Result<Self> {
        Self::bind_with(config, Registry::standard()).await
    }

    /// As [`Server::bind`], with the gates `registry` knows (a build with
    /// gates of its own; the config must have been loaded with the same).
    ///
    /// Everything the config names (the cache store, the certificates, the
    /// gates) is opened before the first socket is bound: a file that
    /// cannot be used is the one fatal line, with no `listening on` before
    /// it.
    pub async fn bind_with(config: Config, registry: Registry) -> io::Result<Self> {
        let room = WaitingRoom::open(|stream, parked: Box<dyn Resumable>, woken| {
            parked.resume(stream, woken)
        })?;
        let process = ProcessState {
            registry: Arc::new(registry),
            room: Some(room),
            ..ProcessState::default()
        };
        let shared = build_shared(config, None, &process)?;
        let config = &shared.config;
        let threads = Threads::new(&config.runtime);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let sockets = threads::bind(
                listener.address,
                threads.sockets_per_listener(),
                listener.defer_accept,
            )
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on {}: {error}", listener.address),
                )
            })?;
            listeners.push((sockets, listener.clone()));
        }
        let admin = match config.admin.address {
            Some(address) => Some(admin::bind(address).await?),
            None => None,
        };
        let agent = match config.admin.agent {
            Some(address) => Some(agent::bind(address).await?),
            None => None,
        };
        // Announced once every socket is bound: whoever waits for the
        // first line can reach them all.
        for (sockets, _) in &listeners {
            if let Some(socket) = sockets.first() {
                log::listening(socket.local_addr()?);
            }
        }
        if let Some(listener) = &admin {
            log::admin_listening(listener.local_addr()?);
        }
        if let Some(listener) = &agent {
            log::agent_listening(listener.local_addr()?);
        }
        for line in &config.deprecated {
            log::deprecated(line);
        }
        if let Some(warning) = config.starttls_warning() {
            log::starttls_warning(&warning);
        }
        log_certificates(&shared);
        start_checks(&shared).await;
        // The fleet's runtime state of the backends, before the first client.
        process
            .director
            .sync(&shared.pool.addresses(), shared.config.pool.flush_grace)
            .await;
        Ok(Self {
            started: Arc::new(RestartOnly::of(&shared.config)),
            current: Arc::new(ArcSwap::from_pointee(shared)),
            process,
            listeners,
            admin,
            agent,
        })
    }

    /// Serves until `shutdown` completes, reloading on SIGHUP, then drains.
    /// Tells systemd (`Type=notify`) when it is ready: every listener bound
    /// and SIGHUP handled.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        use tokio::signal::unix::{signal, SignalKind};
        let hangups = signal(SignalKind::hangup());
        let stop_accepting = CancellationToken::new();
        let cut_sessions = CancellationToken::new();
        let sessions = TaskTracker::new();
        let accepting = Accepting {
            current: Arc::clone(&self.current),
            process: self.process.clone(),
            sessions: sessions.clone(),
            stop_accepting: stop_accepting.clone(),
            cut_sessions: cut_sessions.clone(),
        };
        let (loops, serving_threads) = accepting.start(self.listeners);
        let mut background = vec![
            tokio::spawn(clean_cache(Arc::clone(&self.current))),
            tokio::spawn(follow_the_fleet(
                Arc::clone(&self.current),
                self.process.clone(),
            )),
            tokio::spawn(memory::trim_after_floods(
                Arc::clone(&self.current),
                self.process.clone(),
            )),
        ];
        match hangups {
            Ok(hangups) => background.push(tokio::spawn(reload_on_hangup(
                hangups,
                Arc::clone(&self.current),
                self.process.clone(),
                Arc::clone(&self.started),
            ))),
            Err(error) => log::no_reload(&error),
        }
        if let Some(admin) = self.admin {
            background.push(tokio::spawn(admin::serve(
                admin,
                Arc::clone(&self.current),
                self.process.clone(),
            )));
        }
        // The agent keeps answering `drain` through the grace period.
        let agent = self.agent.map(|agent| {
            tokio::spawn(agent::serve(
                agent,
                Arc::clone(&self.current),
                self.process.clone(),
            ))
        });
        if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            log::no_readiness(&error);
        }
        shutdown.await;
        self.process
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if agent.is_some() {
            log::agent_state(true, "shutting down");
        }
        for task in &background {
            task.abort();
        }
        stop_accepting.cancel();
        for accept in loops {
            let _ = accept.await;
        }
        sessions.close();
        // The serving threads end once their loops have stopped and every
        // session is over.
        let serving_threads = tokio::task::spawn_blocking(move || {
            for thread in serving_threads {
                let _ = thread.join();
            }
        });
        let shared = self.current.load_full();
        log::shutdown_started(sessions.len(), shared.config.shutdown_grace);
        let mut cut = 0;
        if tokio::time::timeout(shared.config.shutdown_grace, sessions.wait())
            .await
            .is_err()
        {
            cut = sessions.len();
            cut_sessions.cancel();
            if let Some(room) = &self.process.room {
                room.close();
            }
            sessions.wait().await;
        }
        if let Some(agent) = agent {
            agent.abort();
        }
        let _ = serving_threads.await;
        shared.cache.close().await;
        log::shutdown_finished(cut);
    }
}

/// Builds the shared state of `config` (taking over what outlives a reload
/// from `running`, on a reload).
fn build_shared(
    config: Config,
    running: Option<&ConfigState>,
    process: &ProcessState,
) -> io::Result<ConfigState> {
    ConfigState::new(config, running, process).map_err(|error| io::Error::other(error.to_string()))
}

/// Runs the first round of backend checks, then keeps checking.
async fn start_checks(shared: &ConfigState) {
    shared.pool.check_all().await;
    shared.pool.start_checks();
}

/// Logs the certificates that are out of their validity period or near its
/// end (doorman serves them anyway).
fn log_certificates(shared: &ConfigState) {
    for warning in shared.tls.iter().flat_map(|tls| tls.warnings()) {
        log::certificate_warning(warning);
    }
}

/// Reads the backends' runtime state from the store every
/// `check_interval`, so a change made on another instance applies here.
async fn follow_the_fleet(current: Arc<ArcSwap<ConfigState>>, process: ProcessState) {
    loop {
        let shared = current.load_full();
        tokio::time::sleep(shared.config.pool.check_interval).await;
        process
            .director
            .sync(&shared.pool.addresses(), shared.config.pool.flush_grace)
            .await;
    }
}

/// Rereads the config on every SIGHUP.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    current: Arc<ArcSwap<ConfigState>>,
    process: ProcessState,
    started: Arc<RestartOnly>,
) {
    while hangups.recv().await.is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        reload(&current, &process, &started).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// Loads the config again and swaps it in, or says why not; a change to a
/// section only a restart applies is reported against `started`.
async fn reload(current: &ArcSwap<ConfigState>, process: &ProcessState, started: &RestartOnly) {
    let running = current.load_full();
    let config = match Config::load_with(&running.config.path, &process.registry) {
        Ok(config) => config,
        Err(error) => {
            log::reload_refused(&error);
            process.metrics.reload(false);
            return;
        }
    };
    for what in started.changed_in(&config) {
        log::reload_needs_restart(what);
    }
    let (backends, gates) = (config.backends.len(), config.gates.join(", "));
    match build_shared(config, Some(&running), process) {
        Ok(shared) => {
            start_checks(&shared).await;
            log_certificates(&shared);
            current.store(Arc::new(shared));
            // The old pool's sessions go on, counted in the states the new
            // pool took over; its checks stop.
            running.pool.retire();
            log::reloaded(&running.config.path, backends, &gates);
            process.metrics.reload(true);
        }
        Err(error) => {
            log::reload_refused(&error);
            process.metrics.reload(false);
        }
    }
}

/// What every accept loop shares, on whichever thread it runs.
#[derive(Clone)]
struct Accepting {
    current: Arc<ArcSwap<ConfigState>>,
    process: ProcessState,
    sessions: TaskTracker,
    stop_accepting: CancellationToken,
    cut_sessions: CancellationToken,
}

impl Accepting {
    /// Starts an accept loop for every socket: socket k of each listener
    /// on serving thread k, where thread 0 is the caller's runtime. Returns
    /// thread 0's loops and the other threads.
    fn start(
        &self,
        listeners: Vec<(Vec<std::net::TcpListener>, ListenerConfig)>,
    ) -> (
        Vec<tokio::task::JoinHandle<()>>,
        Vec<std::thread::JoinHandle<()>>,
    ) {
        let mut by_thread: Vec<Vec<_>> = Vec::new();
        for (sockets, listener) in listeners {
            for (thread, socket) in sockets.into_iter().enumerate() {
                if by_thread.len() <= thread {
                    by_thread.push(Vec::new());
                }
                by_thread[thread].push((socket, listener.clone()));
            }
        }
        let mut by_thread = by_thread.into_iter();
        let loops = by_thread
            .next()
            .map_or_else(Vec::new, |mine| self.spawn_loops(mine));
        let threads = by_thread
            .enumerate()
            .filter_map(|(index, sockets)| self.start_thread(index + 1, sockets))
            .collect();
        (loops, threads)
    }

    /// Spawns an accept loop for each socket on the current runtime.
    fn spawn_loops(
        &self,
        sockets: Vec<(std::net::TcpListener, ListenerConfig)>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut loops = Vec::with_capacity(sockets.len());
        for (socket, listener) in sockets {
            match listening(socket) {
                Ok(socket) => loops.push(tokio::spawn(accept_loop(socket, listener, self.clone()))),
                Err(error) => log::accept_error(listener.address, &error),
            }
        }
        loops
    }

    /// Starts serving thread `index` with a current-thread runtime of its
    /// own for `sockets`; it ends once its loops have stopped and every
    /// session is over. `None` (logged) if the thread cannot start.
    fn start_thread(
        &self,
        index: usize,
        sockets: Vec<(std::net::TcpListener, ListenerConfig)>,
    ) -> Option<std::thread::JoinHandle<()>> {
        let accepting = self.clone();
        let started = threads::current_thread().and_then(|runtime| {
            std::thread::Builder::new()
                .name(format!("doorman-{index}"))
                .spawn(move || {
                    runtime.block_on(async {
                        for accept in accepting.spawn_loops(sockets) {
                            let _ = accept.await;
                        }
                        accepting.sessions.wait().await;
                    })
                })
        });
        started
            .map_err(|error| log::thread_failed(index, &error))
            .ok()
    }
}

/// A listening socket in the reactor.
type Listening = AsyncFd<mio::net::TcpListener>;

/// Puts a listening socket in the current runtime's reactor.
#[allow(unsafe_code)]
fn listening(socket: std::net::TcpListener) -> io::Result<Listening> {
    let socket = mio::net::TcpListener::from_std(socket);
    // SAFETY: the AsyncFd owns the socket, which owns its descriptor: it
    // stays open and the same until the AsyncFd is dropped (nothing takes
    // it out with `get_mut` or `into_inner`).
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(io::Error::from)
}

/// The next connection on `socket`, accepted non-blocking and left out of
/// the reactor: a [`ClientSocket`] registers itself only if it must wait.
async fn accept(socket: &Listening) -> io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let mut ready = socket.readable().await?;
        // Each accept spends the task's budget, as tokio's own accept
        // does: a full backlog cannot keep the thread's sessions waiting.
        let budget = std::future::poll_fn(tokio::task::coop::poll_proceed).await;
        if let Ok(accepted) = ready.try_io(|socket| socket.get_ref().accept()) {
            budget.made_progress();
            return accepted.map(|(stream, peer)| (stream.into(), peer));
        }
    }
}

async fn accept_loop(socket: Listening, listener: ListenerConfig, accepting: Accepting) {
    let Accepting {
        current,
        process,
        sessions,
        stop_accepting,
        cut_sessions,
    } = accepting;
    // One per listener, so a session holds one pointer to it.
    let process = Arc::new(process);
    loop {
        let accepted = tokio::select! {
            _ = stop_accepting.cancelled() => return,
            accepted = accept(&socket) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let session = Session::new(
                    ClientSocket::accepted(stream),
                    peer,
                    &listener,
                    current.load_full(),
                    process.clone(),
                );
                tokio::spawn(session.run(cut_sessions.clone(), sessions.token()));
            }
            Err(error) => {
                log::accept_error(listener.address, &error);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Cleans the pass cache every `cleanup_interval` (postscreen's
/// `postscreen_cache_cleanup_interval`); Redis keys expire by themselves.
async fn clean_cache(current: Arc<ArcSwap<ConfigState>>) {
    loop {
        let interval = current.load().config.cache.cleanup_interval;
        if interval.is_zero() {
            return;
        }
        tokio::time::sleep(interval).await;
        let shared = current.load_full();
        match shared.cache.cleanup(std::time::SystemTime::now()).await {
            Some(Ok((retained, dropped))) => {
                log::cache_cleanup(&shared.cache.name(), retained, dropped)
            }
            Some(Err(error)) => log::cache_error(&shared.cache.name(), &error),
            None => return,
        }
    }
}
