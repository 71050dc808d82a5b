//! The fake backend that records what reaches it, scripted backends, and
//! readers of the PROXY headers doorman sends.

use super::*;

/// doorman with `sections` (see [`config_with`]), in front of a fresh
/// [`FakeBackend`] that expects PROXY v2, with 127.0.0.1 as its proxy.
pub fn behind_fake_backend(sections: &str) -> (FakeBackend, Doorman) {
    let backend = FakeBackend::start(true);
    let config = config_with(backend.address, "v2", "", "5s", sections);
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    (backend, doorman)
}

/// What a fake backend received on one connection.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub bytes: Vec<u8>,
    pub closed: bool,
    /// `Some(true)` for doorman's own health probes (a v2 LOCAL header, a
    /// v1 line from 127.0.0.1, or doorman's own EHLO), `Some(false)` for clients,
    /// `None` until the first bytes tell.
    pub probe: Option<bool>,
}

impl Received {
    fn classify(&mut self) {
        if self.probe.is_some() {
            return;
        }
        let bytes = &self.bytes;
        self.probe = match doorman::proxy::parse(bytes) {
            Ok(doorman::proxy::Parsed::Complete {
                header: doorman::proxy::Header::Local,
                ..
            }) => Some(true),
            Ok(doorman::proxy::Parsed::Complete {
                header: doorman::proxy::Header::Proxied { source, .. },
                ..
            }) => Some(bytes[0] == b'P' && source.ip() == std::net::IpAddr::from([127, 0, 0, 1])),
            Ok(doorman::proxy::Parsed::Incomplete) if bytes.is_empty() => None,
            Ok(doorman::proxy::Parsed::Incomplete) => None,
            Err(_) if bytes.len() >= 6 => Some(
                bytes.starts_with(b"QUIT\r\n") || bytes.starts_with(b"EHLO mx.doorman.test\r\n"),
            ),
            Err(_) => None,
        };
    }
}

/// A backend that reads an optional PROXY header, greets, answers every
/// command with 250 (354 to DATA, 221 to QUIT) and records every byte.
pub struct FakeBackend {
    pub address: SocketAddr,
    pub connections: Arc<Mutex<Vec<Arc<Mutex<Received>>>>>,
    pub stopped: Arc<std::sync::atomic::AtomicBool>,
    pub acceptor: Mutex<Option<thread::JoinHandle<()>>>,
}

impl FakeBackend {
    pub fn start(expects_proxy: bool) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), expects_proxy)
    }

    /// Starts on a given address (e.g. one a test kept reserved).
    pub fn start_on(address: SocketAddr, expects_proxy: bool) -> Self {
        let listener = TcpListener::bind(address).unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Received>>>>> = Arc::default();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let all = connections.clone();
        let stop = stopped.clone();
        let acceptor = thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let record = Arc::new(Mutex::new(Received::default()));
                        all.lock().unwrap().push(record.clone());
                        thread::spawn(move || serve_fake(stream, record, expects_proxy));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeBackend {
            address,
            connections,
            stopped,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// Closes the listening socket: new connections are refused.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.lock().unwrap().take() {
            acceptor.join().unwrap();
        }
    }

    /// Waits for the `n`th client connection (0-based; health probes are
    /// not counted) and returns its record.
    pub fn connection(&self, n: usize) -> Arc<Mutex<Received>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut clients = 0;
            for c in self.connections.lock().unwrap().iter() {
                let kind = c.lock().unwrap().probe;
                match kind {
                    Some(false) if clients == n => return c.clone(),
                    Some(false) => clients += 1,
                    Some(true) => {}
                    None => break,
                }
            }
            assert!(
                Instant::now() < deadline,
                "backend got no client connection {n}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many client connections (not health probes) it got so far.
    pub fn count(&self) -> usize {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.lock().unwrap().probe == Some(false))
            .count()
    }

    /// How many of doorman's health probes it got so far.
    pub fn probes(&self) -> usize {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.lock().unwrap().probe == Some(true))
            .count()
    }

    /// Waits until connection `n` has received at least `len` bytes.
    pub fn wait_bytes(&self, n: usize, len: usize) -> Vec<u8> {
        let record = self.connection(n);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = record.lock().unwrap().bytes.clone();
            if got.len() >= len {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "backend got only {:?}",
                String::from_utf8_lossy(&got)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until connection `n` saw EOF.
    pub fn wait_closed(&self, n: usize) -> Vec<u8> {
        let record = self.connection(n);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = record.lock().unwrap().clone();
            if got.closed {
                return got.bytes;
            }
            assert!(
                Instant::now() < deadline,
                "backend connection {n} not closed"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve_fake(mut stream: TcpStream, record: Arc<Mutex<Received>>, expects_proxy: bool) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut greeted = false;
    let mut in_data = false;
    loop {
        if !greeted {
            let header_done = !expects_proxy
                || matches!(
                    doorman::proxy::parse(&pending),
                    Ok(doorman::proxy::Parsed::Complete { .. })
                );
            if header_done {
                if let Ok(doorman::proxy::Parsed::Complete { length, .. }) =
                    doorman::proxy::parse(&pending)
                {
                    if expects_proxy {
                        pending.drain(..length);
                    }
                }
                let _ = stream.write_all(b"220 backend.test ESMTP fake\r\n");
                greeted = true;
            }
        }
        while let Some(newline) = pending.iter().position(|&b| greeted && b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            let text = String::from_utf8_lossy(&line).to_ascii_uppercase();
            let reply: &[u8] = if in_data {
                if text == ".\r\n" {
                    in_data = false;
                    b"250 2.0.0 queued\r\n"
                } else {
                    b""
                }
            } else if text.starts_with("DATA") {
                in_data = true;
                b"354 go ahead\r\n"
            } else if text.starts_with("QUIT") {
                let _ = stream.write_all(b"221 2.0.0 bye\r\n");
                let mut record = record.lock().unwrap();
                record.classify();
                record.probe.get_or_insert(false);
                record.closed = true;
                return;
            } else if text.starts_with("EHLO") {
                b"250-backend.test\r\n250 PIPELINING\r\n"
            } else {
                b"250 2.0.0 ok\r\n"
            };
            let _ = stream.write_all(reply);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let mut record = record.lock().unwrap();
                record.classify();
                record.probe.get_or_insert(false);
                record.closed = true;
                return;
            }
            Ok(n) => {
                let mut record = record.lock().unwrap();
                record.bytes.extend_from_slice(&chunk[..n]);
                record.classify();
                pending.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// An address on 127.0.0.1 where nothing listens, kept reserved (bound,
/// not listening) while the returned socket lives, so no other test or
/// program takes the port.
pub fn dead_address() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, address)
}

/// The client a backend's bytes begin with (a PROXY header naming it),
/// and the header's length.
pub fn proxied_client(got: &[u8]) -> (SocketAddr, usize) {
    match doorman::proxy::parse(got) {
        Ok(doorman::proxy::Parsed::Complete {
            header: doorman::proxy::Header::Proxied { source, .. },
            length,
        }) => (source, length),
        other => panic!("no PROXY header naming a client ({other:?}): {got:?}"),
    }
}

/// Reads a PROXY v2 header off `reader`; whether it was a LOCAL one
/// (`None`: the peer closed first).
pub fn read_v2_header(reader: &mut impl Read) -> Option<bool> {
    let mut header = [0u8; 16];
    reader.read_exact(&mut header).ok()?;
    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([header[14], header[15]]))];
    let _ = reader.read_exact(&mut rest);
    Some(header[12] == 0x20)
}

/// A backend on loopback that speaks from a script: for each connection it
/// reads the PROXY v2 header, greets with `greeting(check)` (`check`: the
/// header was a v2 LOCAL health check; `None`: close without a greeting, as
/// an smtpd that dies on start does), then answers each line with
/// `reply(line)` until QUIT.
pub fn scripted_backend(
    greeting: fn(bool) -> Option<&'static [u8]>,
    reply: fn(&str) -> &'static [u8],
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let Some(local) = read_v2_header(&mut reader) else {
                    return;
                };
                let Some(banner) = greeting(local) else {
                    return;
                };
                let _ = writer.write_all(banner);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let _ = writer.write_all(reply(&line));
                    if line.to_ascii_uppercase().starts_with("QUIT") {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    address
}
