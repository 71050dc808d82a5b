//! `doorman sink`: a small SMTP sink for trying a deployment and for
//! benchmarks, like Postfix's smtp-sink.
//!
//! It accepts any envelope and any message and keeps nothing but a log line
//! per message, with its size and, parsed with mail-parser, its Message-ID and
//! Subject. With `--proxy` every connection must start with a PROXY v1/v2
//! header (as Postfix's `smtpd_upstream_proxy_protocol = haproxy` wants it),
//! and the sink logs the client address it learned from it.
//!
//! The dialogue and the DATA reader are sans-IO ([`Dialogue`],
//! [`DataReader`]); [`serve`] does the I/O.
//!
//! It is a separate command: it uses the PROXY reader and the SMTP line
//! reader, and nothing of the front door's runtime.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::log::{escape, Endpoint};
use crate::proxy::{self, Header, Parsed};
use crate::smtp::line::{next_line, Line};

/// How much of a message is kept for parsing its headers.
const HEAD_CAP: usize = 64 * 1024;
/// The longest command line.
const LINE_LIMIT: usize = 2048;
/// How long the sink waits for a command, the header or message bytes.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read the next command.
    Command,
    /// Read message data.
    Data,
    /// Close.
    Quit,
}

/// The envelope so far, and whether the sink takes XCLIENT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dialogue {
    from: Option<String>,
    to: Vec<String>,
    /// Whether EHLO announces XCLIENT and XCLIENT is answered, as
    /// Postfix's smtpd does for an authorised client.
    pub xclient: bool,
    /// The client an XCLIENT named (`ADDR=`), for the log line.
    pub named: Option<String>,
}

/// A delivered message, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The MAIL FROM address.
    pub from: String,
    /// The RCPT TO addresses.
    pub to: Vec<String>,
    /// The message size in bytes, after dot-unstuffing.
    pub size: usize,
    /// The Message-ID header, if any.
    pub message_id: Option<String>,
    /// The Subject header, if any.
    pub subject: Option<String>,
}

impl Dialogue {
    /// The reply to one command line.
    pub fn command(&mut self, line: &Line, hostname: &str) -> (String, Next) {
        let text = String::from_utf8_lossy(&line.text);
        let argument = |prefix: &str| -> Option<String> {
            let upper = text.to_ascii_uppercase();
            upper.starts_with(prefix).then(|| {
                let rest = text[prefix.len()..].trim_start();
                let end = rest.find('>').map_or(rest.len(), |i| i + 1);
                rest[..end]
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        };
        match line.verb().as_str() {
            "EHLO" if self.xclient => (
                format!("250-{hostname}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-XCLIENT ADDR PORT NAME HELO PROTO DESTADDR DESTPORT\r\n250 SIZE 0\r\n"),
                Next::Command,
            ),
            "EHLO" => (
                format!("250-{hostname}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n"),
                Next::Command,
            ),
            // A fresh greeting, as smtpd answers an accepted XCLIENT.
            "XCLIENT" if self.xclient => {
                self.named = text
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("ADDR="))
                    .map(Into::into);
                self.from = None;
                self.to.clear();
                (format!("220 {hostname} ESMTP doorman sink\r\n"), Next::Command)
            }
            "HELO" => (format!("250 {hostname}\r\n"), Next::Command),
            "MAIL" => match argument("MAIL FROM:") {
                Some(from) => {
                    self.from = Some(from);
                    self.to.clear();
                    ("250 2.1.0 Ok\r\n".into(), Next::Command)
                }
                None => (
                    "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".into(),
                    Next::Command,
                ),
            },
            "RCPT" => match (argument("RCPT TO:"), &self.from) {
                (Some(to), Some(_)) => {
                    self.to.push(to);
                    ("250 2.1.5 Ok\r\n".into(), Next::Command)
                }
                (None, _) => (
                    "501 5.5.4 Syntax: RCPT TO:<address>\r\n".into(),
                    Next::Command,
                ),
                (_, None) => (
                    "503 5.5.1 Error: need MAIL command\r\n".into(),
                    Next::Command,
                ),
            },
            "DATA" if self.to.is_empty() => (
                "503 5.5.1 Error: need RCPT command\r\n".into(),
                Next::Command,
            ),
            "DATA" => ("354 End data with <CR><LF>.<CR><LF>\r\n".into(), Next::Data),
            "RSET" => {
                self.from = None;
                self.to.clear();
                ("250 2.0.0 Ok\r\n".into(), Next::Command)
            }
            "NOOP" => ("250 2.0.0 Ok\r\n".into(), Next::Command),
            "QUIT" => ("221 2.0.0 Bye\r\n".into(), Next::Quit),
            _ => (
                "502 5.5.2 Error: command not recognized\r\n".into(),
                Next::Command,
            ),
        }
    }

    /// Ends the message transaction with the message that was read.
    pub fn delivered(&mut self, data: DataReader) -> Delivery {
        let parsed = mail_parser::MessageParser::default().parse(&data.head);
        let delivery = Delivery {
            from: self.from.take().unwrap_or_default(),
            to: std::mem::take(&mut self.to),
            size: data.size,
            message_id: parsed
                .as_ref()
                .and_then(|m| m.message_id().map(str::to_string)),
            subject: parsed
                .as_ref()
                .and_then(|m| m.subject().map(str::to_string)),
        };
        delivery
    }
}

/// Where the DATA reader is within a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataState {
    LineStart,
    InLine,
    Cr,
    Dot,
    DotCr,
}

/// Reads message data up to `CRLF.CRLF`, undoing dot-stuffing, keeping the
/// first [`HEAD_CAP`] bytes and counting the rest.
#[derive(Clone, Debug)]
pub struct DataReader {
    state: DataState,
    head: Vec<u8>,
    size: usize,
}

impl Default for DataReader {
    fn default() -> Self {
        Self {
            state: DataState::LineStart,
            head: Vec::new(),
            size: 0,
        }
    }
}

impl DataReader {
    /// Feeds bytes; returns how many were used if the end-of-data line was
    /// among them, `None` if all were used and more are needed.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (index, &byte) in bytes.iter().enumerate() {
            self.state = match (self.state, byte) {
                (DataState::LineStart, b'.') => DataState::Dot,
                (DataState::Dot, b'\r') => DataState::DotCr,
                (DataState::DotCr, b'\n') => return Some(index + 1),
                (DataState::DotCr, _) => {
                    self.keep(b'\r');
                    self.after(byte, DataState::Cr)
                }
                (DataState::Cr, _) => self.after(byte, DataState::Cr),
                (_, _) => self.after(byte, DataState::InLine),
            };
        }
        None
    }

    /// Keeps `byte` and says where it leaves the reader; `from` is where the
    /// reader was (a CR just before makes an LF end the line).
    fn after(&mut self, byte: u8, from: DataState) -> DataState {
        self.keep(byte);
        match byte {
            b'\r' => DataState::Cr,
            b'\n' if from == DataState::Cr => DataState::LineStart,
            _ => DataState::InLine,
        }
    }

    fn keep(&mut self, byte: u8) {
        self.size += 1;
        if self.head.len() < HEAD_CAP {
            self.head.push(byte);
        }
    }
}

/// How a connection tells the sink who its client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Introduced {
    /// It does not: the peer is the client.
    Not,
    /// A PROXY v1/v2 header first (`--proxy`).
    Proxy,
    /// XCLIENT after EHLO (`--xclient`), answered with a fresh 220.
    Xclient,
}

/// Listens on `address` and serves until the process ends.
pub async fn serve(
    address: SocketAddr,
    hostname: String,
    introduced: Introduced,
) -> io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    info!("sink: listening on {}", Endpoint(listener.local_addr()?));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!("warning: sink: accept: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let hostname = hostname.clone();
        tokio::spawn(async move {
            if let Err(error) = connection(stream, peer, &hostname, introduced).await {
                info!(
                    "sink: {} ended: {}",
                    Endpoint(peer),
                    escape(error.to_string().as_bytes(), 200)
                );
            }
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    hostname: &str,
    introduced: Introduced,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buffer = BytesMut::with_capacity(4096);
    let client = if introduced == Introduced::Proxy {
        match read_header(&mut stream, &mut buffer).await? {
            Some(Header::Proxied { source, .. }) => Some(source),
            // A health probe (doorman's, every check_interval): logged at
            // debug level, so it does not bury the clients' lines.
            Some(Header::Local) => None,
            None => return Ok(()),
        }
    } else {
        Some(peer)
    };
    match client {
        Some(client) => info!("sink: connect from {}", Endpoint(client)),
        None => debug!("sink: health check from {}", Endpoint(peer)),
    }
    let client = client.unwrap_or(peer);
    stream
        .write_all(format!("220 {hostname} ESMTP doorman sink\r\n").as_bytes())
        .await?;
    let mut dialogue = Dialogue {
        xclient: introduced == Introduced::Xclient,
        ..Dialogue::default()
    };
    loop {
        let line = match next_line(&mut buffer, LINE_LIMIT) {
            Ok(Some(line)) => line,
            Ok(None) => {
                if read_more(&mut stream, &mut buffer).await? == 0 {
                    return Ok(());
                }
                continue;
            }
            Err(error) => {
                stream
                    .write_all(b"500 5.5.0 Error: line too long\r\n")
                    .await?;
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        };
        let (reply, next) = dialogue.command(&line, hostname);
        stream.write_all(reply.as_bytes()).await?;
        match next {
            Next::Command => {}
            Next::Quit => return Ok(()),
            Next::Data => {
                let mut data = DataReader::default();
                loop {
                    if let Some(used) = data.feed(&buffer) {
                        buffer.advance(used);
                        break;
                    }
                    buffer.clear();
                    if read_more(&mut stream, &mut buffer).await? == 0 {
                        return Ok(());
                    }
                }
                let named = dialogue.named.clone();
                let delivery = dialogue.delivered(data);
                let client = named.unwrap_or_else(|| Endpoint(client).to_string());
                info!(
                    "sink: message from=<{}> to=<{}> size={} message-id=<{}> subject=\"{}\" client={}",
                    escape(delivery.from.as_bytes(), 200),
                    escape(delivery.to.join(">,<").as_bytes(), 400),
                    delivery.size,
                    escape(delivery.message_id.unwrap_or_default().as_bytes(), 200),
                    escape(delivery.subject.unwrap_or_default().as_bytes(), 200),
                    escape(client.as_bytes(), 100),
                );
                // The record is written before the 250, as an MTA writes
                // its queue file first: a sink killed after its 250 has
                // not lost a message it accepted.
                crate::logbuffer::flush();
                stream.write_all(b"250 2.0.0 Ok: queued\r\n").await?;
            }
        }
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> io::Result<usize> {
    buffer.reserve(4096);
    timeout(IDLE_TIMEOUT, stream.read_buf(buffer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))?
}

/// Reads the PROXY header a `--proxy` sink requires; `None` when the peer
/// sent something else (it has been told so) or closed.
async fn read_header(stream: &mut TcpStream, buffer: &mut BytesMut) -> io::Result<Option<Header>> {
    loop {
        match proxy::parse(buffer) {
            Ok(Parsed::Complete { header, length }) => {
                buffer.advance(length);
                return Ok(Some(header));
            }
            Ok(Parsed::Incomplete) => {
                if read_more(stream, buffer).await? == 0 {
                    return Ok(None);
                }
            }
            Err(error) => {
                warn!(
                    "warning: sink: bad PROXY header: {}",
                    escape(error.to_string().as_bytes(), 100)
                );
                stream
                    .write_all(b"421 4.7.0 Invalid PROXY header\r\n")
                    .await?;
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_reader_unstuffs_and_finds_the_end_across_chunks() {
        let message = b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n";
        for split in 0..message.len() {
            let mut reader = DataReader::default();
            let used = match reader.feed(&message[..split]) {
                Some(used) => used,
                None => split + reader.feed(&message[split..]).expect("end found"),
            };
            assert_eq!(&message[used..], b"QUIT\r\n", "split {split}");
            assert_eq!(
                reader.head,
                b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\n.dot\r\nbody\r\n"
            );
        }
        let mut dialogue = Dialogue::default();
        let line = |t: &str| Line {
            text: t.as_bytes().to_vec(),
            bare_newline: false,
        };
        assert_eq!(
            dialogue.command(&line("MAIL FROM:<a@x> SIZE=10"), "h").1,
            Next::Command
        );
        assert_eq!(
            dialogue.command(&line("DATA"), "h").0,
            "503 5.5.1 Error: need RCPT command\r\n"
        );
        dialogue.command(&line("RCPT TO:<b@y>"), "h");
        assert_eq!(dialogue.command(&line("DATA"), "h").1, Next::Data);
        let mut reader = DataReader::default();
        reader.feed(message);
        let delivery = dialogue.delivered(reader);
        assert_eq!(delivery.from, "a@x");
        assert_eq!(delivery.to, vec!["b@y".to_string()]);
        assert_eq!(delivery.message_id.as_deref(), Some("1@x"));
        assert_eq!(delivery.subject.as_deref(), Some("hi"));
        assert_eq!(delivery.size, 46);
    }
}
