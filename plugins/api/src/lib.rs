//! The gate API of doorman.
//!
//! A *gate* answers one question about a client: may it talk to the real
//! smtpd? Gates see a [`Client`] (the real address learned from the PROXY
//! header, never the proxy's) and answer with a [`Verdict`]. The core runs the
//! gates in the order the config lists them, as Haraka runs its plugins, and
//! combines their verdicts the way postscreen combines its tests.
//!
//! This crate is small on purpose: gates depend on it, and it changes rarely.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One PROXY protocol v2 TLV as the proxy sent it (type and raw value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlv {
    /// The TLV type byte, e.g. `0x02` for AUTHORITY.
    pub kind: u8,
    /// The raw value bytes.
    pub value: Vec<u8>,
}

/// The client a gate looks at.
///
/// `address` is the *real* client: for a connection from a listed proxy it is
/// the source address of the PROXY header; otherwise it is the TCP peer.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are always given as IPv4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The real client address and port.
    pub address: SocketAddr,
    /// The address and port the client connected to (the proxy's frontend,
    /// as the header gave it, or doorman's own socket).
    pub destination: SocketAddr,
    /// The TLVs of a PROXY v2 header; empty for v1 and for direct clients.
    pub tlvs: Vec<Tlv>,
}

impl Client {
    /// The real client IP address.
    pub fn ip(&self) -> IpAddr {
        self.address.ip()
    }
}

/// What the core does with a client that failed a test, as postscreen's
/// `*_action` parameters say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Log the failure, let the other tests finish, and hand the client off
    /// as if it had passed (but do not remember a pass).
    Ignore,
    /// Let the other tests finish, then talk to the client with the built-in
    /// SMTP engine, which refuses every RCPT with the test's reply.
    Enforce,
    /// Send the test's 521 reply at once and close.
    Drop,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Ignore => "ignore",
            Action::Enforce => "enforce",
            Action::Drop => "drop",
        })
    }
}

/// A gate's answer about one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The client is allowed: skip every further test and hand it off now.
    Permit,
    /// The client failed this gate.
    Reject(Rejection),
    /// This gate has nothing to say; go on with the next one.
    Dunno,
}

/// Why a client failed a gate, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The action configured for this test.
    pub action: Action,
    /// The reply text after the code, e.g. `5.7.1 Service unavailable; ...`.
    /// The action chooses the code: 550 (to each RCPT) for
    /// [`Action::Enforce`], 521 (at once) for [`Action::Drop`].
    pub reply_text: String,
}

impl Rejection {
    /// The reply to each RCPT under [`Action::Enforce`], with CRLF.
    pub fn enforce_reply(&self) -> String {
        format!("550 {}\r\n", self.reply_text)
    }

    /// The reply before closing under [`Action::Drop`], with CRLF.
    pub fn drop_reply(&self) -> String {
        format!("521 {}\r\n", self.reply_text)
    }
}

/// A gate that answers at once when a client connects, from what it knows
/// already (an access list, a static table).
pub trait ConnectGate: Send + Sync {
    /// The verdict for `client`.
    fn check(&self, client: &Client) -> Verdict;
}
