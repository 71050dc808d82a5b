//! Handing a client to a backend smtpd.
//!
//! - [`pool`]: the backends, tried in config order, each within its
//!   connect timeout, and probed for health checks.
//! - [`relay`]: the byte copy in both directions once a backend took the
//!   client.

pub mod pool;
pub mod relay;

pub use pool::{NoBackend, Pool};
pub use relay::{relay, RelayError};
