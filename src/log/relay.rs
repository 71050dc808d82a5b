//! Relay mode's lines, in the form of Postfix's before-queue proxy
//! (`smtpd_proxy_filter`): the backend's reply to each message's end, the
//! messages doorman refused before the backend saw them, and a backend
//! that timed out.

use std::net::SocketAddr;

use tracing::{info, warn};

use super::{escape, Endpoint, SHOWN_INPUT};

/// What Postfix's proxy lines say about a transaction after the reply:
/// ` from=<...> to=<...> proto=... helo=<...>` (`to`: its last recipient).
#[derive(Clone, Copy, Debug)]
pub struct Whatsup<'a> {
    /// The sender.
    pub sender: &'a str,
    /// The last recipient, if any.
    pub recipient: Option<&'a str>,
    /// The protocol (`ESMTP`, `SMTP`, ...).
    pub proto: &'a str,
    /// The client's HELO name, if any.
    pub helo: Option<&'a str>,
}

impl std::fmt::Display for Whatsup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, " from=<{}>", escape(self.sender.as_bytes(), 256))?;
        if let Some(recipient) = self.recipient {
            write!(f, " to=<{}>", escape(recipient.as_bytes(), 256))?;
        }
        write!(f, " proto={}", self.proto)?;
        if let Some(helo) = self.helo {
            write!(f, " helo=<{}>", escape(helo.as_bytes(), 256))?;
        }
        Ok(())
    }
}

/// The backend's reply to a message's end: `proxy-accept` for a 2xx,
/// `proxy-reject` for anything else, as Postfix logs it, with the client
/// last (where Postfix may add `sasl_username=`): one doorman process
/// serves every session, so the line must name its client.
pub fn proxy_end_of_message(client: SocketAddr, reply: &[u8], whatsup: &Whatsup<'_>) {
    let verdict = if reply.starts_with(b"2") {
        "accept"
    } else {
        "reject"
    };
    info!(
        "proxy-{verdict}: END-OF-MESSAGE: {};{whatsup} client={}",
        one_line(reply),
        Endpoint(client)
    );
}

/// doorman refused a message before its backend saw it (hops, header
/// size): smtpd's `reject: END-OF-MESSAGE` line.
pub fn message_refused(client: SocketAddr, reply: &str, whatsup: &Whatsup<'_>) {
    info!(
        "NOQUEUE: reject: END-OF-MESSAGE from {}: {};{whatsup}",
        Endpoint(client),
        one_line(reply.as_bytes())
    );
}

/// A relay-mode backend did not answer within `[relay] timeout`.
pub fn backend_timeout(client: SocketAddr, backend: SocketAddr, stage: &str) {
    warn!(
        "warning: timeout talking to backend {backend} after {} for {}",
        escape(stage.as_bytes(), SHOWN_INPUT),
        Endpoint(client)
    );
}

/// A backend's reply as one escaped line: its lines joined by spaces.
fn one_line(reply: &[u8]) -> String {
    reply
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .map(|line| escape(line, 512))
        .collect::<Vec<_>>()
        .join(" ")
}
