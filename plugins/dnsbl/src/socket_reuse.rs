//! A hickory runtime provider that reuses UDP sockets across queries.
//!
//! hickory-resolver opens, binds, registers and closes one UDP socket per
//! query: six system calls on top of the query's send and receive, on
//! every new client's path. [`SocketReuse`] hands hickory (and doorman's
//! own exchange with a single name server, `exchange.rs`, through
//! [`SocketReuse::lend`]) a socket from a small idle set instead, and takes
//! it back once its query is answered.
//!
//! What stays as hickory made it: each socket is first bound to the random
//! source port hickory picks, hickory checks every answer's source, ID and
//! question, and it ignores the datagrams that fail them (such as a late
//! answer to an earlier query on the same socket). Such a datagram does
//! not count as the answer here either: only one from the server asked,
//! with the query's ID, lets the socket serve another query. A socket serves one
//! query at a time. What reuse trades is some of the port's variation: a
//! socket serves at most [`MAX_QUERIES`] queries and lives at most
//! [`MAX_AGE`] before a fresh random port replaces it. A socket whose
//! query was abandoned (timed out), or that failed, is closed, not reused.
//! At most 64 wait idle; after a flood, [`SocketReuse::close_idle`] closes
//! them (the gates' `compact`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hickory_resolver::net::runtime::{
    DnsUdpSocket, RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// How many queries one socket serves before it is closed.
pub const MAX_QUERIES: u32 = 100;
/// How long one socket lives before it is closed.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// How many idle sockets are kept.
const MAX_IDLE: usize = 64;
/// How many random ports are tried before the system picks one, as
/// hickory does.
const RANDOM_PORT_ATTEMPTS: usize = 10;

/// Locks the idle set; a panic elsewhere while it was held leaves a plain
/// list of sockets, still fit to use.
fn lock(idle: &Mutex<Vec<Idle>>) -> MutexGuard<'_, Vec<Idle>> {
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A socket between queries.
#[derive(Debug)]
struct Idle {
    socket: UdpSocket,
    local: SocketAddr,
    queries: u32,
    born: Instant,
}

impl Idle {
    /// A fresh socket, bound to `local`.
    fn new(socket: UdpSocket, local: SocketAddr) -> Self {
        Self {
            socket,
            local,
            queries: 0,
            born: Instant::now(),
        }
    }

    fn spent(&self, now: Instant) -> bool {
        self.queries >= MAX_QUERIES || now.saturating_duration_since(self.born) >= MAX_AGE
    }
}

/// Tokio's runtime provider for hickory, with UDP sockets reused across
/// queries (see the module's documentation).
#[derive(Clone, Default)]
pub struct SocketReuse {
    tokio: TokioRuntimeProvider,
    idle: Arc<Mutex<Vec<Idle>>>,
}

impl SocketReuse {
    /// An idle socket bound to the same address family and local address
    /// as `local` (whose port hickory chose at random), if one is left.
    /// Spent sockets met on the way are closed.
    fn reuse(&self, local: SocketAddr) -> Option<Idle> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some(at) = idle
            .iter()
            .rposition(|socket| socket.local.ip() == local.ip())
        {
            let socket = idle.swap_remove(at);
            if !socket.spent(now) {
                return Some(socket);
            }
        }
        None
    }

    /// A socket for one query to `server`: an idle one, or a new one bound
    /// to a random port as hickory binds its own.
    pub fn lend(&self, server: SocketAddr) -> io::Result<LentSocket> {
        let any: SocketAddr = match server {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let idle = match self.reuse(any) {
            Some(idle) => idle,
            None => Idle::new(bind_random(any)?, any),
        };
        Ok(self.lent(idle))
    }

    fn lent(&self, idle: Idle) -> LentSocket {
        LentSocket {
            idle: Some(idle),
            home: Arc::clone(&self.idle),
            awaiting: AtomicBool::new(false),
            asked: Mutex::new(None),
            failed: AtomicBool::new(false),
        }
    }

    /// Closes every idle socket (after a flood: the sockets its concurrent
    /// queries left idle go back to the system).
    pub fn close_idle(&self) {
        lock(&self.idle).clear();
    }

    /// How many queries each idle socket has served (for tests).
    #[cfg(test)]
    fn idle(&self) -> Vec<u32> {
        lock(&self.idle).iter().map(|idle| idle.queries).collect()
    }
}

impl RuntimeProvider for SocketReuse {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = LentSocket;
    type Tcp = <TokioRuntimeProvider as RuntimeProvider>::Tcp;

    fn create_handle(&self) -> Self::Handle {
        self.tokio.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Tcp, io::Error>>>> {
        self.tokio.connect_tcp(server_addr, bind_addr, timeout)
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        _server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Udp, io::Error>>>> {
        let reused = self.reuse(local_addr);
        let this = self.clone();
        Box::pin(async move {
            let idle = match reused {
                Some(idle) => idle,
                None => Idle::new(UdpSocket::bind(local_addr).await?, local_addr),
            };
            Ok(this.lent(idle))
        })
    }
}

/// Whether `from` is `server` (an IPv4 server may answer from its
/// IPv4-mapped IPv6 address).
pub(crate) fn same_endpoint(from: SocketAddr, server: SocketAddr) -> bool {
    from.port() == server.port() && from.ip().to_canonical() == server.ip().to_canonical()
}

/// A UDP socket on a random port from 1024 up (`any` has port 0), or on
/// one the system picks once [`RANDOM_PORT_ATTEMPTS`] ports were taken.
fn bind_random(any: SocketAddr) -> io::Result<UdpSocket> {
    for _ in 0..RANDOM_PORT_ATTEMPTS {
        let port = rand::random_range(1024..=u16::MAX);
        match std::net::UdpSocket::bind(SocketAddr::new(any.ip(), port)) {
            Ok(socket) => return from_std(socket),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                ) => {}
            Err(error) => return Err(error),
        }
    }
    from_std(std::net::UdpSocket::bind(any)?)
}

fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// A socket lent to one query; it goes back to the idle set when dropped,
/// unless its query is still unanswered, it failed, or it is spent.
pub struct LentSocket {
    idle: Option<Idle>,
    home: Arc<Mutex<Vec<Idle>>>,
    /// A query was sent and its answer has not come back since.
    awaiting: AtomicBool,
    /// The server and message ID of the last query hickory sent, so that
    /// only a datagram from that server with that ID counts as its answer
    /// (a late answer to an earlier query, or a forgery from another port,
    /// leaves the socket awaiting).
    asked: Mutex<Option<(SocketAddr, u16)>>,
    /// A send or receive failed.
    failed: AtomicBool,
}

impl LentSocket {
    fn socket(&self) -> io::Result<&UdpSocket> {
        self.idle
            .as_ref()
            .map(|idle| &idle.socket)
            .ok_or_else(|| io::Error::other("socket already returned"))
    }

    /// Sends `datagram` to `server`.
    pub async fn send(&self, datagram: &[u8], server: SocketAddr) -> io::Result<()> {
        let sent = self.socket()?.send_to(datagram, server).await;
        match &sent {
            Ok(_) => self.awaiting.store(true, Ordering::Relaxed),
            Err(_) => self.failed.store(true, Ordering::Relaxed),
        }
        sent.map(drop)
    }

    /// Receives the next datagram. It waits for readiness before it reads,
    /// so a query's answer costs one read, not a failed one first.
    pub async fn receive(&self, buffer: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let socket = self.socket()?;
        loop {
            let received = match socket.readable().await {
                Ok(()) => socket.try_recv_from(buffer),
                Err(error) => Err(error),
            };
            match received {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    self.failed.store(true, Ordering::Relaxed);
                    return Err(error);
                }
                Ok(received) => return Ok(received),
            }
        }
    }

    /// Tells the socket its query has its answer: it may serve another.
    pub fn answered(&self) {
        self.awaiting.store(false, Ordering::Relaxed);
    }

    /// Notes a failure, so that the socket is not reused.
    fn note<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &result {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl DnsUdpSocket for LentSocket {
    type Time = TokioTime;

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let socket = self.socket()?;
        let received = self.note(DnsUdpSocket::poll_recv_from(socket, cx, buf));
        if let Poll::Ready(Ok((length, from))) = &received {
            let asked = *self.asked.lock().unwrap_or_else(PoisonError::into_inner);
            let id = buf.get(..*length).and_then(|d| d.first_chunk::<2>());
            if let (Some((server, sent)), Some(id)) = (asked, id) {
                if same_endpoint(*from, server) && u16::from_be_bytes(*id) == sent {
                    self.awaiting.store(false, Ordering::Relaxed);
                }
            }
        }
        received
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let socket = self.socket()?;
        let sent = self.note(DnsUdpSocket::poll_send_to(socket, cx, buf, target));
        if let Poll::Ready(Ok(_)) = &sent {
            let id = buf.first_chunk::<2>().map(|id| u16::from_be_bytes(*id));
            *self.asked.lock().unwrap_or_else(PoisonError::into_inner) = id.map(|id| (target, id));
            self.awaiting.store(true, Ordering::Relaxed);
        }
        sent
    }
}

impl Drop for LentSocket {
    fn drop(&mut self) {
        let Some(mut idle) = self.idle.take() else {
            return;
        };
        if self.awaiting.load(Ordering::Relaxed) || self.failed.load(Ordering::Relaxed) {
            return;
        }
        idle.queries += 1;
        if idle.spent(Instant::now()) {
            return;
        }
        // The answer was read: forget that the socket was readable, so
        // that the next query waits for its own answer's arrival rather
        // than reading once in vain. A datagram still queued (a late
        // answer) is read, and ignored, with the next one.
        let _ = idle.socket.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
        let mut home = lock(&self.home);
        if home.len() < MAX_IDLE {
            home.push(idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_port() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    async fn exchange(provider: &SocketReuse, server: &UdpSocket) -> (u16, LentSocket) {
        let lent = provider
            .bind_udp(any_port(), server.local_addr().unwrap())
            .await
            .unwrap();
        let target = server.local_addr().unwrap();
        lent.send_to(b"query", target).await.unwrap();
        let mut buf = [0u8; 16];
        let (_, from) = server.recv_from(&mut buf).await.unwrap();
        // The answer carries the query's ID (its first two bytes).
        server.send_to(b"query answer", from).await.unwrap();
        lent.recv_from(&mut buf).await.unwrap();
        (from.port(), lent)
    }

    #[tokio::test]
    async fn only_the_servers_answer_with_the_querys_id_frees_the_socket() {
        let server = UdpSocket::bind(any_port()).await.unwrap();
        let decoy = UdpSocket::bind(any_port()).await.unwrap();
        let provider = SocketReuse::default();
        let target = server.local_addr().unwrap();
        let lent = provider.bind_udp(any_port(), target).await.unwrap();
        lent.send_to(b"query", target).await.unwrap();
        let mut buf = [0u8; 16];
        let (_, from) = server.recv_from(&mut buf).await.unwrap();
        // The query's ID from another port, another ID from the server.
        decoy.send_to(b"query forged", from).await.unwrap();
        server.send_to(b"late answer", from).await.unwrap();
        lent.recv_from(&mut buf).await.unwrap();
        lent.recv_from(&mut buf).await.unwrap();
        drop(lent);
        assert!(
            provider.idle().is_empty(),
            "a datagram that was not the answer freed the socket"
        );
    }

    #[tokio::test]
    async fn an_answered_socket_serves_the_next_query() {
        let server = UdpSocket::bind(any_port()).await.unwrap();
        let provider = SocketReuse::default();
        let (first, lent) = exchange(&provider, &server).await;
        drop(lent);
        assert_eq!(provider.idle(), [1]);
        let (second, lent) = exchange(&provider, &server).await;
        assert_eq!(first, second, "the second query came from a new socket");
        drop(lent);
        assert_eq!(provider.idle(), [2]);
    }

    #[tokio::test]
    async fn idle_sockets_are_closed_on_demand() {
        let server = UdpSocket::bind(any_port()).await.unwrap();
        let provider = SocketReuse::default();
        let (_, lent) = exchange(&provider, &server).await;
        drop(lent);
        assert_eq!(provider.idle(), [1]);
        provider.close_idle();
        assert!(provider.idle().is_empty());
    }

    #[tokio::test]
    async fn an_unanswered_socket_is_closed() {
        let server = UdpSocket::bind(any_port()).await.unwrap();
        let provider = SocketReuse::default();
        let lent = provider
            .bind_udp(any_port(), server.local_addr().unwrap())
            .await
            .unwrap();
        lent.send_to(b"query", server.local_addr().unwrap())
            .await
            .unwrap();
        drop(lent);
        assert!(provider.idle().is_empty());
    }

    #[tokio::test]
    async fn a_spent_socket_is_replaced() {
        let server = UdpSocket::bind(any_port()).await.unwrap();
        let provider = SocketReuse::default();
        let (first, lent) = exchange(&provider, &server).await;
        drop(lent);
        for _ in 1..MAX_QUERIES - 1 {
            let (port, lent) = exchange(&provider, &server).await;
            assert_eq!(port, first);
            drop(lent);
        }
        let (last, lent) = exchange(&provider, &server).await;
        assert_eq!(last, first);
        drop(lent);
        assert!(
            provider.idle().is_empty(),
            "a socket served more than MAX_QUERIES"
        );
        let (_, lent) = exchange(&provider, &server).await;
        drop(lent);
        assert_eq!(provider.idle(), [1], "the next query had no fresh socket");
    }

    #[tokio::test]
    async fn concurrent_queries_get_their_own_sockets() {
        let server = UdpSocket::bind(any_port()).await.unwrap();
        let provider = SocketReuse::default();
        let target = server.local_addr().unwrap();
        let a = provider.bind_udp(any_port(), target).await.unwrap();
        let b = provider.bind_udp(any_port(), target).await.unwrap();
        a.send_to(b"a", target).await.unwrap();
        b.send_to(b"b", target).await.unwrap();
        let mut buf = [0u8; 4];
        let (_, from_a) = server.recv_from(&mut buf).await.unwrap();
        let (_, from_b) = server.recv_from(&mut buf).await.unwrap();
        assert_ne!(from_a.port(), from_b.port());
    }
}
