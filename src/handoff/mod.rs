//! Handing a client to a backend smtpd.
//!
//! - [`balance`]: which backend a client goes to (sans-IO).
//! - [`pool`]: health checks, limits, leases, and which backend a client
//!   is connected to.
//! - [`backend_io`]: what doorman says to a backend itself: XCLIENT,
//!   STARTTLS, the reply reader, the health probe.
//! - [`xclient`]: Postfix's XCLIENT (sans-IO).
//! - [`relay`]: the byte copy in both directions once a backend took the
//!   client.
//! - [`users`]: users' backends, for clusters balanced by recipient.
//!
//! It is given a client that passed and never reads the verdict; the
//! conversation after a handoff, when doorman reads it, is the session's
//! (`session::conversation`).

pub mod backend_io;
pub mod balance;
pub mod pool;
pub mod relay;
pub mod users;
pub mod xclient;

pub use backend_io::{read_reply, TlsHandoff, REPLY_TIMEOUT};
pub use pool::{Availability, BackendStatus, Connected, NoBackend, Pool};
pub use relay::{relay, Ended, RelayError};
