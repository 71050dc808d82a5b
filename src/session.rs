//! One client connection, start to finish.
//!
//! This is the one place where a connection does I/O and waits, and every
//! wait has a deadline. The connection moves through the [`Phase`]s:
//!
//! ```text
//! accept ─► peer listed? ─yes─► AwaitHeader ─► Handoff(real client)
//!   │                              ├─► HealthCheck (v2 LOCAL, or the proxy's own address)
//!   │                              └─► Closed (421: timed out / invalid header)
//!   ├─no, listener "required" ─► Closed (no byte)
//!   └─no ─► Handoff(peer)
//! Handoff ─► backend pool ─► relay ─► Closed (or 421 if no backend)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use doorman_gate_api::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use crate::config::{Config, ListenerConfig, ProxyMode};
use crate::handoff::{relay, Pool, RelayError};
use crate::log;
use crate::proxy::{self, Header, Parsed};
use crate::smtp::health::{self, Step};
use crate::smtp::line::next_line;
use crate::smtp::reply;

/// How long doorman waits for each command of a health check.
const HEALTH_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest command line a health check may send.
const HEALTH_LINE_LIMIT: usize = 512;
/// How long a reply may take to leave, so a peer that does not read cannot
/// hold a session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection is.
#[derive(Debug)]
enum Phase {
    /// A listed proxy must send its PROXY header.
    AwaitHeader,
    /// The proxy's own health check.
    HealthCheck,
    /// The real client is known: hand it to a backend.
    Handoff(Client),
    /// Nothing more to do.
    Closed,
}

/// A client connection and what doorman knows about it.
pub struct Session {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    mode: ProxyMode,
    config: Arc<Config>,
    pool: Arc<Pool>,
    /// Bytes received but not yet used: the rest of a PROXY header, then the
    /// client's first bytes.
    buffer: BytesMut,
}

impl Session {
    /// A session for an accepted connection on `listener`.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        listener: &ListenerConfig,
        config: Arc<Config>,
        pool: Arc<Pool>,
    ) -> Self {
        let local = stream.local_addr().unwrap_or(listener.address);
        Self {
            stream,
            peer: canonical(peer),
            local: canonical(local),
            mode: listener.proxy,
            config,
            pool,
            buffer: BytesMut::new(),
        }
    }

    /// Runs the connection to its end.
    pub async fn run(mut self) {
        let _ = self.stream.set_nodelay(true);
        let mut phase = self.first_phase();
        loop {
            phase = match phase {
                Phase::AwaitHeader => self.read_proxy_header().await,
                Phase::HealthCheck => self.health_check().await,
                Phase::Handoff(client) => self.hand_off(client).await,
                Phase::Closed => return,
            };
        }
    }

    fn first_phase(&self) -> Phase {
        if self.config.proxy_hosts.contains(self.peer.ip()) {
            return Phase::AwaitHeader;
        }
        match self.mode {
            ProxyMode::Required => {
                log::not_a_proxy(self.peer, self.local);
                Phase::Closed
            }
            ProxyMode::Optional => Phase::Handoff(Client {
                address: self.peer,
                destination: self.local,
                tlvs: Vec::new(),
            }),
        }
    }

    /// Reads the header of a listed proxy within `proxy.timeout`.
    async fn read_proxy_header(&mut self) -> Phase {
        let deadline = Instant::now() + self.config.proxy.timeout;
        loop {
            match proxy::parse(&self.buffer) {
                Ok(Parsed::Complete { header, length }) => {
                    let _ = self.buffer.split_to(length);
                    return self.after_header(header);
                }
                Ok(Parsed::Incomplete) => {}
                Err(error) => {
                    log::proxy_invalid(self.peer, &error, &self.buffer);
                    self.send(reply::INVALID_PROXY_HEADER).await;
                    return Phase::Closed;
                }
            }
            self.buffer.reserve(256);
            match timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Err(_) => {
                    log::proxy_timeout(self.peer);
                    self.send(reply::PROXY_TIMED_OUT).await;
                    return Phase::Closed;
                }
                Ok(Ok(0)) => {
                    log::proxy_eof(self.peer, &self.buffer);
                    return Phase::Closed;
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    log::proxy_read_error(self.peer, &error);
                    return Phase::Closed;
                }
            }
        }
    }

    /// A v2 LOCAL header, or a header whose source is itself a listed proxy,
    /// is a health check; any other header names the real client.
    fn after_header(&self, header: Header) -> Phase {
        match header {
            Header::Local => Phase::HealthCheck,
            Header::Proxied { source, .. } if self.config.proxy_hosts.contains(source.ip()) => {
                Phase::HealthCheck
            }
            Header::Proxied {
                source,
                destination,
                tlvs,
            } => Phase::Handoff(Client {
                address: source,
                destination,
                tlvs,
            }),
        }
    }

    /// Answers a health check: a single-line 220 when a backend is alive
    /// (421 when none is), then HELO/EHLO/NOOP/RSET/QUIT. Logged at debug
    /// level only.
    async fn health_check(&mut self) -> Phase {
        let alive = self.pool.any_alive().await;
        log::health_check(self.peer, alive);
        if !alive {
            self.send(reply::SERVER_PORTS_BUSY).await;
            return Phase::Closed;
        }
        let hostname = self.config.hostname.clone();
        self.send(&reply::health_banner(&hostname)).await;
        for _ in 0..health::MAX_COMMANDS {
            let line = loop {
                match next_line(&mut self.buffer, HEALTH_LINE_LIMIT) {
                    Ok(Some(line)) => break line,
                    Ok(None) => {}
                    Err(_) => {
                        self.send(&reply::service_unavailable(&hostname)).await;
                        log::health_check_ended(self.peer, "line too long");
                        return Phase::Closed;
                    }
                }
                self.buffer.reserve(128);
                match timeout(
                    HEALTH_COMMAND_TIMEOUT,
                    self.stream.read_buf(&mut self.buffer),
                )
                .await
                {
                    Err(_) => {
                        self.send(&reply::timeout_exceeded(&hostname)).await;
                        log::health_check_ended(self.peer, "timeout");
                        return Phase::Closed;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        log::health_check_ended(self.peer, "hang-up");
                        return Phase::Closed;
                    }
                    Ok(Ok(_)) => {}
                }
            };
            match health::answer(&line, &hostname) {
                Step::Reply(text) => self.send(&text).await,
                Step::ReplyAndClose(text) => {
                    self.send(&text).await;
                    return Phase::Closed;
                }
            }
        }
        self.send(&reply::service_unavailable(&hostname)).await;
        log::health_check_ended(self.peer, "too many commands");
        Phase::Closed
    }

    /// Connects the client to a backend and relays until both sides are
    /// done.
    async fn hand_off(&mut self, client: Client) -> Phase {
        log::connect(client.address, client.destination);
        let backend = match self.pool.connect(client.address, client.destination).await {
            Ok(backend) => backend,
            Err(_) => {
                log::all_server_ports_busy(client.address);
                self.send(reply::SERVER_PORTS_BUSY).await;
                return Phase::Closed;
            }
        };
        let early = std::mem::take(&mut self.buffer);
        match relay(&mut self.stream, backend, early).await {
            Ok(()) => {}
            Err(RelayError::ProxyHeader(input)) => {
                log::proxy_not_allowed(client.address, &input);
                self.send(&reply::proxy_not_allowed(client.address.ip()))
                    .await;
            }
            Err(RelayError::Io(error)) => log::relay_error(client.address, &error),
        }
        Phase::Closed
    }

    /// Sends a reply; a peer that is gone or does not read is not an error
    /// here, the session ends anyway.
    async fn send(&mut self, text: &str) {
        let _ = timeout(WRITE_TIMEOUT, self.stream.write_all(text.as_bytes())).await;
    }
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}
