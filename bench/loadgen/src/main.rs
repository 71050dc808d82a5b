//! Load for doorman's benchmarks (`bench/run.py`), light enough that on a
//! two-core machine the screener, not the load, is what is measured.
//!
//! * `screen`: new clients, each with a fresh address in a PROXY v1 header,
//!   straight to a screener (doorman or postscreen); counts the clients
//!   that got a final `220 ` line, per second.
//! * `banner`: one connection after another through a front (HAProxy);
//!   prints the p50 and p99 time from connect to the first byte.
//! * `flood`: connections through a front, many at a time, from one
//!   source address: each reads its first reply line and closes; counts
//!   the lines that start with the expected code, per second. It leaves
//!   with a reset, so its ports are not held in TIME_WAIT. `--rate` paces
//!   the connections at a fixed rate instead (S7m).
//! * `screen --tls`: the same clients go on after the greeting with EHLO,
//!   STARTTLS, a full TLS handshake (rustls, no resumption), EHLO again and
//!   QUIT (S8); `--hold` keeps each one open, idle inside TLS, for that
//!   many seconds first (S8's memory), and `--no-proxy` sends no header
//!   (Postfix's smtpd on its own port).
//! * `relay`: not load but an anchor: the barest proxy tokio makes (accept,
//!   connect, `copy_bidirectional`, on tokio's multi-threaded runtime as
//!   doorman runs), to tell what tokio itself costs in doorman's place.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

mod tls;

/// Benchmark load for doorman.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// New clients per second through a PROXY header.
    Screen {
        /// The screener's address.
        #[arg(long)]
        target: SocketAddr,
        /// The listed proxy address to connect from.
        #[arg(long, default_value = "127.0.0.10")]
        from: Ipv4Addr,
        /// How many clients.
        #[arg(long)]
        count: u32,
        /// How many at once.
        #[arg(long, default_value_t = 100)]
        concurrency: u32,
        /// The first octet of the clients' addresses (a fresh range per run
        /// keeps them uncached).
        #[arg(long, default_value_t = 10)]
        first_octet: u8,
        /// Go on with STARTTLS after the greeting.
        #[arg(long)]
        tls: bool,
        /// Seconds each TLS client stays idle after its second EHLO.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Send no PROXY header.
        #[arg(long)]
        no_proxy: bool,
        /// Leave Nagle's algorithm on, as Postfix's smtp client does (the
        /// default sets TCP_NODELAY).
        #[arg(long)]
        nagle: bool,
        /// With --tls: a message of this many bytes inside TLS (S5 with
        /// TLS), accepted with a 250, before the QUIT.
        #[arg(long, default_value_t = 0)]
        message: usize,
    },
    /// Time to banner, p50 and p99 in ms.
    Banner {
        /// The front's address.
        #[arg(long)]
        target: SocketAddr,
        /// How many connections, one after another.
        #[arg(long)]
        count: u32,
    },
    /// First reply lines per second, many connections at a time.
    Flood {
        /// The front's address.
        #[arg(long)]
        target: SocketAddr,
        /// The client address to connect from.
        #[arg(long, default_value = "127.0.0.1")]
        from: Ipv4Addr,
        /// How many connections.
        #[arg(long)]
        count: u32,
        /// How many at once.
        #[arg(long, default_value_t = 100)]
        concurrency: u32,
        /// The reply code each line should start with.
        #[arg(long)]
        expect: String,
        /// Offer this many connections per second, evenly paced, instead
        /// of as many as `concurrency` allows (S7m); `concurrency` is then
        /// only a ceiling.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Relays every connection to `target` until killed.
    Relay {
        /// The address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The server to relay to.
        #[arg(long)]
        target: SocketAddr,
    },
}

/// How long one client may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    if let Command::Relay { listen, target } = command {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(relay(listen, target));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        Command::Screen {
            target,
            from,
            count,
            concurrency,
            first_octet,
            tls,
            hold,
            no_proxy,
            nagle,
            message,
        } => {
            let started = Instant::now();
            let dialogue = Dialogue {
                tls: tls.then(tls::connector),
                hold: Duration::from_secs(hold),
                proxy: !no_proxy,
                nagle,
                message,
            };
            let served = runtime.block_on(screen(
                target,
                from,
                count,
                concurrency,
                first_octet,
                dialogue,
            ));
            let rate = f64::from(served) / started.elapsed().as_secs_f64();
            println!("{served} {rate:.1}");
        }
        Command::Flood {
            target,
            from,
            count,
            concurrency,
            expect,
            rate,
        } => {
            let started = Instant::now();
            let load = Flood {
                target,
                from,
                count,
                concurrency,
                rate,
            };
            let answered = runtime.block_on(flood(load, expect.into_bytes()));
            let rate = f64::from(answered) / started.elapsed().as_secs_f64();
            println!("{answered} {rate:.1}");
        }
        Command::Banner { target, count } => {
            let mut samples = runtime.block_on(banner(target, count))?;
            samples.sort_by(f64::total_cmp);
            let at =
                |share: f64| samples[((samples.len() as f64 * share) as usize).saturating_sub(1)];
            println!("{:.4} {:.4}", at(0.5), at(0.99));
        }
        Command::Relay { .. } => {}
    }
    Ok(())
}

/// What each client of `screen` does after its header.
#[derive(Clone)]
struct Dialogue {
    /// STARTTLS with this connector after the greeting.
    tls: Option<tokio_rustls::TlsConnector>,
    /// How long a TLS client stays idle before its QUIT.
    hold: Duration,
    /// Whether a PROXY header goes first.
    proxy: bool,
    /// Whether Nagle's algorithm stays on (no TCP_NODELAY).
    nagle: bool,
    /// The size of a message to send inside TLS (0: none).
    message: usize,
}

/// Runs `count` clients, `concurrency` at a time; returns how many got 220
/// (and, with TLS, through their handshake to the 221).
async fn screen(
    target: SocketAddr,
    from: Ipv4Addr,
    count: u32,
    concurrency: u32,
    first_octet: u8,
    dialogue: Dialogue,
) -> u32 {
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut served = 0;
    loop {
        while next < count && tasks.len() < concurrency as usize {
            let [_, b, c, d] = next.to_be_bytes();
            let client = Ipv4Addr::new(first_octet, b, c, d);
            let dialogue = dialogue.clone();
            tasks.spawn(async move {
                let limit = CLIENT_TIMEOUT + dialogue.hold;
                tokio::time::timeout(limit, one_client(target, from, client, next, dialogue))
                    .await
                    .is_ok_and(|served| served.unwrap_or(false))
            });
            next += 1;
        }
        match tasks.join_next().await {
            Some(Ok(true)) => served += 1,
            Some(_) => {}
            None => return served,
        }
    }
}

/// One new client: header, wait for the final `220 `, then QUIT or the
/// TLS dialogue.
async fn one_client(
    target: SocketAddr,
    from: Ipv4Addr,
    client: Ipv4Addr,
    n: u32,
    dialogue: Dialogue,
) -> anyhow::Result<bool> {
    let socket = TcpSocket::new_v4()?;
    // Earlier runs leave thousands of TIME_WAIT sockets on this address;
    // without SO_REUSEADDR, finding a free port slows every connect.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let mut stream = socket.connect(target).await?;
    // A TLS dialogue writes several small records in a row (the client
    // Finished, then EHLO): with Nagle on, the second waits for the
    // server's ACK unless the server writes first. `--nagle` keeps it on,
    // as Postfix's smtp client does, to show which servers wait.
    stream.set_nodelay(!dialogue.nagle)?;
    if dialogue.proxy {
        let header = format!("PROXY TCP4 {client} 127.0.0.1 {} 25\r\n", 1024 + n % 60000);
        stream.write_all(header.as_bytes()).await?;
    }
    let mut seen = Vec::with_capacity(256);
    let mut buffer = [0u8; 512];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(false);
        }
        seen.extend_from_slice(&buffer[..read]);
        let greeted = seen.starts_with(b"220 ") || seen.windows(6).any(|w| w == b"\r\n220 ");
        if greeted {
            return match &dialogue.tls {
                Some(connector) => {
                    tls::dialogue(stream, connector, dialogue.hold, dialogue.message).await
                }
                None => {
                    stream.write_all(b"QUIT\r\n").await?;
                    Ok(true)
                }
            };
        }
    }
}

/// What `flood` offers.
struct Flood {
    /// The front's address.
    target: SocketAddr,
    /// The client address to connect from.
    from: Ipv4Addr,
    /// How many connections in all.
    count: u32,
    /// How many at once, at most.
    concurrency: u32,
    /// Connections per second, paced; `None`: as fast as `concurrency`
    /// allows.
    rate: Option<u32>,
}

impl Flood {
    /// How many connections should have started `elapsed` into the run.
    fn due(&self, elapsed: Duration) -> u32 {
        match self.rate {
            Some(rate) => {
                (elapsed.as_secs_f64() * f64::from(rate)).min(f64::from(self.count)) as u32
            }
            None => self.count,
        }
    }
}

/// Runs `load.count` connections, at most `load.concurrency` at a time and,
/// with a rate, no faster than it; returns how many got a first line
/// starting with `expect`.
async fn flood(load: Flood, expect: Vec<u8>) -> u32 {
    let expect = std::sync::Arc::new(expect);
    let mut tasks = tokio::task::JoinSet::new();
    let (mut next, mut answered) = (0, 0);
    let started = Instant::now();
    // A paced run starts what is due every millisecond (tokio's timer
    // granularity), so 5,000/s is 5 connections a tick.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let due = load.due(started.elapsed());
        while next < due && tasks.len() < load.concurrency as usize {
            let expect = std::sync::Arc::clone(&expect);
            let (target, from) = (load.target, load.from);
            tasks.spawn(async move {
                tokio::time::timeout(CLIENT_TIMEOUT, first_line(target, from))
                    .await
                    .is_ok_and(|line| line.is_ok_and(|line| line.starts_with(&expect)))
            });
            next += 1;
        }
        if next == load.count && tasks.is_empty() {
            return answered;
        }
        let paced = load.rate.is_some() && next < load.count;
        tokio::select! {
            joined = tasks.join_next(), if !tasks.is_empty() => {
                if let Some(Ok(true)) = joined {
                    answered += 1;
                }
            }
            _ = tick.tick(), if paced => {}
        }
    }
}

/// Connects from `from` and reads the first reply line; then closes.
async fn first_line(target: SocketAddr, from: Ipv4Addr) -> anyhow::Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let mut stream = socket.connect(target).await?;
    let mut seen = Vec::with_capacity(128);
    let mut buffer = [0u8; 512];
    while !seen.contains(&b'\n') {
        let read = stream.read(&mut buffer).await?;
        anyhow::ensure!(read > 0, "closed before a reply");
        seen.extend_from_slice(&buffer[..read]);
    }
    // Leave with a reset: tens of thousands of connections from one
    // address would otherwise use up its ports in TIME_WAIT.
    stream.set_zero_linger()?;
    Ok(seen)
}

/// Connects `count` times in a row; returns each time to first byte, in ms.
async fn banner(target: SocketAddr, count: u32) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(count as usize);
    let mut byte = [0u8; 512];
    for _ in 0..count {
        let started = Instant::now();
        let mut stream = TcpStream::connect(target).await.context("connect")?;
        let read = stream.read(&mut byte).await?;
        anyhow::ensure!(read > 0, "closed before the banner");
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(samples)
}

/// Accepts connections on `listen` and relays each to `target`.
async fn relay(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    loop {
        let (mut client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(mut server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
