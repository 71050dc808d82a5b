//! A backend that can be told nothing (no PROXY header, no XCLIENT), as
//! relay mode's backends are: it greets, answers as a plain smtpd does, and
//! records every byte of every connection. How it ends a message is the
//! test's to choose.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the backend does with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtEnd {
    /// `250 2.0.0 Ok: queued as 4XQ7Z1` at its end.
    Accept,
    /// No reply to its end, ever.
    Hang,
    /// Closes the connection at its end.
    Close,
    /// Closes the connection at the first body bytes.
    CloseInData,
    /// Reads the body one small piece every few milliseconds, then
    /// accepts it.
    Slow,
}

/// The bytes of one connection, as they arrive.
type Record = Arc<Mutex<Vec<u8>>>;

/// The recording backend.
pub struct RelayBackend {
    pub address: SocketAddr,
    connections: Arc<Mutex<Vec<Record>>>,
}

/// The queue id in the backend's reply to a message's end.
pub const QUEUED: &str = "250 2.0.0 Ok: queued as 4XQ7Z1\r\n";

impl RelayBackend {
    /// A backend that announces `keywords` (EHLO lines after the name,
    /// without `250-`) and ends messages as `at_end` says.
    pub fn start(keywords: &'static [&'static str], at_end: AtEnd) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Record>>> = Arc::default();
        let all = Arc::clone(&connections);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(Arc::clone(&record));
                thread::spawn(move || serve(stream, keywords, at_end, record));
            }
        });
        Self {
            address,
            connections,
        }
    }

    /// The connections that carried a client's MAIL (not doorman's health
    /// checks), in order.
    pub fn sessions(&self) -> Vec<Vec<u8>> {
        self.connections
            .lock()
            .unwrap()
            .iter()
            .map(|record| record.lock().unwrap().clone())
            .filter(|bytes| find(bytes, b"MAIL FROM").is_some())
            .collect()
    }

    /// Waits up to 10 s for the `n`th client session to contain `needle`;
    /// returns its bytes.
    pub fn wait_for(&self, n: usize, needle: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(bytes) = self.sessions().get(n) {
                if find(bytes, needle).is_some() {
                    return bytes.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {:?} in session {n}: {:?}",
                String::from_utf8_lossy(needle),
                self.sessions()
                    .get(n)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where `needle` starts in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The message a session carried: what followed `DATA\r\n` up to and
/// including the end `\r\n.\r\n`.
pub fn message_of(session: &[u8]) -> Vec<u8> {
    let start = find(session, b"DATA\r\n").expect("DATA") + 6;
    let end = find(&session[start..], b"\r\n.\r\n").expect("the end of DATA") + start + 5;
    session[start..end].to_vec()
}

fn serve(mut stream: TcpStream, keywords: &'static [&'static str], at_end: AtEnd, record: Record) {
    let _ = stream.write_all(b"220 relay.test ESMTP\r\n");
    let mut pending = Vec::new();
    let mut in_data = false;
    let mut chunk = [0u8; 16384];
    loop {
        while let Some(newline) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            if in_data {
                if line != b".\r\n" {
                    if at_end == AtEnd::CloseInData {
                        return;
                    }
                    continue;
                }
                in_data = false;
                match at_end {
                    AtEnd::Accept | AtEnd::Slow => {
                        let _ = stream.write_all(QUEUED.as_bytes());
                    }
                    AtEnd::Hang => {
                        thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    AtEnd::Close | AtEnd::CloseInData => return,
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line).to_ascii_uppercase();
            let reply = if text.starts_with("EHLO") {
                let mut reply = String::from("250-relay.test\r\n");
                for (index, keyword) in keywords.iter().enumerate() {
                    let dash = if index + 1 == keywords.len() {
                        ' '
                    } else {
                        '-'
                    };
                    reply.push_str(&format!("250{dash}{keyword}\r\n"));
                }
                if keywords.is_empty() {
                    reply = "250 relay.test\r\n".to_string();
                }
                reply
            } else if text.starts_with("MAIL") {
                "250 2.1.0 Ok\r\n".to_string()
            } else if text.starts_with("RCPT") && text.contains("UNKNOWN") {
                "550 5.1.1 <unknown@doorman.test>: Recipient address rejected: User unknown\r\n"
                    .to_string()
            } else if text.starts_with("RCPT") {
                "250 2.1.5 Ok\r\n".to_string()
            } else if text.starts_with("DATA") {
                in_data = true;
                "354 End data with <CR><LF>.<CR><LF>\r\n".to_string()
            } else if text.starts_with("QUIT") {
                let _ = stream.write_all(b"221 2.0.0 Bye\r\n");
                return;
            } else {
                "250 2.0.0 Ok\r\n".to_string()
            };
            let _ = stream.write_all(reply.as_bytes());
        }
        let size = if at_end == AtEnd::Slow && in_data {
            512
        } else {
            chunk.len()
        };
        match stream.read(&mut chunk[..size]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                record.lock().unwrap().extend_from_slice(&chunk[..n]);
                pending.extend_from_slice(&chunk[..n]);
                if at_end == AtEnd::Slow && in_data {
                    thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}
