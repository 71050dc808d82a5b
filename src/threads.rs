//! The threads that serve connections: their tokio runtimes and their
//! listening sockets.
//!
//! - `per-core` (the default): every serving thread runs a current-thread
//!   runtime, and every listener gets one socket per thread, all bound to
//!   its address with `SO_REUSEPORT`. The kernel spreads new connections
//!   over the sockets (by a hash of the connection's addresses and ports),
//!   and a connection stays on the thread that accepted it: no task moves
//!   between threads, and a client's wake-ups happen on one core. The main
//!   thread is serving thread 0; it also runs the background tasks (health
//!   checks, the admin and agent listeners, reloads).
//! - `shared`: one multi-threaded runtime whose workers take each other's
//!   tasks, and one socket per listener.
//!
//! What the threads share (the config, the caches, the per-network limits,
//! the director, the metrics) is shared state behind locks and atomics,
//! the same under either model.
//!
//! It touches nothing but the `[runtime]` section.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::runtime::{Builder, Runtime};

use crate::config::{RuntimeSection, ThreadModel};

/// The listen backlog of every listening socket (tokio's own default).
const BACKLOG: i32 = 1024;

/// The serving threads a `[runtime]` section asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threads {
    /// How they share the connections.
    pub model: ThreadModel,
    /// How many serve connections.
    pub count: usize,
}

impl Threads {
    /// The threads `section` asks for (one per core when it names no count).
    pub fn new(section: &RuntimeSection) -> Self {
        Self {
            model: section.model,
            count: section.thread_count(),
        }
    }

    /// The runtime of the main thread: a current-thread one (`per-core`:
    /// it is serving thread 0), or the multi-threaded one (`shared`).
    pub fn main_runtime(&self) -> io::Result<Runtime> {
        match self.model {
            ThreadModel::PerCore => current_thread(),
            ThreadModel::Shared => Builder::new_multi_thread()
                .worker_threads(self.count)
                .enable_all()
                .build(),
        }
    }

    /// How many listening sockets each listener gets: one per serving
    /// thread (`per-core`), or one.
    pub fn sockets_per_listener(&self) -> usize {
        match self.model {
            ThreadModel::PerCore => self.count,
            ThreadModel::Shared => 1,
        }
    }
}

/// A current-thread runtime for one serving thread.
pub fn current_thread() -> io::Result<Runtime> {
    Builder::new_current_thread().enable_all().build()
}

/// Binds `count` listening sockets to `address`, sharing it with
/// `SO_REUSEPORT` when there are several. A port another process listens
/// on is an error either way, even one it shares with `SO_REUSEPORT`: a
/// second doorman started by mistake must not take half the connections.
/// With port 0 all the sockets get the same port, the first one's.
pub fn bind(address: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let socket = |reuse_port: bool| -> io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(reuse_port)?;
        socket.set_nonblocking(true)?;
        // Accepted sockets inherit it (Linux copies the listener's
        // options), which saves a system call on every connection: a
        // refusal costs about eight.
        socket.set_tcp_nodelay(true)?;
        Ok(socket)
    };
    let mut address = address.into();
    if count > 1 {
        // Bound alone first, and let go: this fails if anyone listens
        // there, whatever their options, and it picks the port for port 0.
        let probe = socket(false)?;
        probe.bind(&address)?;
        address = probe.local_addr()?;
    }
    (0..count)
        .map(|_| {
            let socket = socket(count > 1)?;
            socket.bind(&address)?;
            socket.listen(BACKLOG)?;
            Ok(socket.into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What doorman sends is never held back by Nagle's algorithm: the
    /// accepted sockets inherit TCP_NODELAY from the listener.
    #[test]
    fn accepted_sockets_inherit_tcp_nodelay() {
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        sockets[0].set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(sockets[0].local_addr().unwrap()).unwrap();
        let (accepted, _) = sockets[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn the_sockets_share_one_port_and_each_accepts() {
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = sockets[0].local_addr().unwrap().port();
        for socket in &sockets {
            assert_eq!(socket.local_addr().unwrap().port(), port);
        }
        let clients: Vec<_> = (0..60)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let accepted: Vec<usize> = sockets
            .iter()
            .map(|socket| std::iter::from_fn(|| socket.accept().ok()).count())
            .collect();
        assert_eq!(accepted.iter().sum::<usize>(), clients.len());
        assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    }

    #[test]
    fn a_port_someone_listens_on_is_an_error_even_with_reuse_port() {
        let held = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let address = held[0].local_addr().unwrap();
        for count in [1, 2] {
            let error = bind(address, count).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{count}");
        }
    }
}
