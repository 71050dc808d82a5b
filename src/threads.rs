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
/// `defer_accept`: the kernel queues a connection for `accept` only once
/// its first bytes are in (Linux's `TCP_DEFER_ACCEPT`).
pub fn bind(
    address: SocketAddr,
    count: usize,
    defer_accept: bool,
) -> io::Result<Vec<std::net::TcpListener>> {
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
            if defer_accept {
                set_defer_accept(&socket)?;
            }
            socket.listen(BACKLOG)?;
            Ok(socket.into())
        })
        .collect()
}

/// How long the kernel holds a silent connection back: it queues it for
/// `accept` when the peer answers the first retransmission of the
/// handshake's reply, about a second later (later if that answer is
/// lost).
#[cfg(any(target_os = "linux", target_os = "android"))]
const DEFER_ACCEPT_SECONDS: libc::c_int = 1;

/// Asks the kernel to queue a connection for `accept` only once its first
/// bytes are in (`TCP_DEFER_ACCEPT`; a FIN counts, a reset connection never
/// comes). Behind HAProxy the first bytes are the PROXY header, so doorman
/// wakes once per connection and reads the header at once; else about a
/// third of HAProxy's connections reached doorman before their header, and
/// each cost a registration in the reactor, a wake-up and a
/// deregistration (measured at 2,000 refusals/s: 7.4 system calls a
/// refusal against 5.9, and about 20% more CPU). Linux only: the config
/// refuses the key elsewhere.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(unsafe_code)]
fn set_defer_accept(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is the open socket `socket` borrows; the
    // value is a c_int constant that lives across the call, and its size
    // is given.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&DEFER_ACCEPT_SECONDS).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        let error = io::Error::last_os_error();
        Err(io::Error::new(
            error.kind(),
            format!("TCP_DEFER_ACCEPT (defer_accept): {error}"),
        ))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_defer_accept(_: &Socket) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What doorman sends is never held back by Nagle's algorithm: the
    /// accepted sockets inherit TCP_NODELAY from the listener.
    #[test]
    fn accepted_sockets_inherit_tcp_nodelay() {
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 1, false).unwrap();
        sockets[0].set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(sockets[0].local_addr().unwrap()).unwrap();
        let (accepted, _) = sockets[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    /// With `defer_accept` a connection is not there to accept until its
    /// first bytes are, and then it is.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_deferred_connection_is_accepted_once_its_first_bytes_are_in() {
        use std::io::Write;
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 1, true).unwrap();
        let mut client = std::net::TcpStream::connect(sockets[0].local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let error = sockets[0].accept().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        client
            .write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n")
            .unwrap();
        sockets[0].set_nonblocking(false).unwrap();
        let (accepted, _) = sockets[0].accept().unwrap();
        let mut first = [0; 5];
        assert_eq!(accepted.peek(&mut first).unwrap(), 5);
        assert_eq!(&first, b"PROXY");
    }

    #[test]
    fn the_sockets_share_one_port_and_each_accepts() {
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 3, false).unwrap();
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
        let held = bind("127.0.0.1:0".parse().unwrap(), 2, false).unwrap();
        let address = held[0].local_addr().unwrap();
        for count in [1, 2] {
            let error = bind(address, count, false).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{count}");
        }
    }
}
