//! Handing a client to a backend smtpd.
//!
//! - [`balance`]: which backend a client goes to (sans-IO).
//! - [`pool`]: health checks, limits, leases and the backend connection.
//! - [`xclient`]: Postfix's XCLIENT (sans-IO).
//! - [`gated`]: the relay after a replay, while the engine gates still
//!   judge MAIL and RCPT.
//! - [`relay`]: the byte copy in both directions once a backend took the
//!   client.

pub mod balance;
pub mod gated;
pub mod pool;
pub mod relay;
pub mod xclient;

pub use pool::{
    read_reply, Availability, BackendStatus, Connected, NoBackend, Pool, TlsHandoff, REPLY_TIMEOUT,
};
pub use relay::{relay, RelayError};
