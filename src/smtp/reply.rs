//! Every reply doorman itself sends to a client, worded as the README's
//! tables give them (postscreen's texts where doorman does what postscreen does, Haraka's
//! where it does what Haraka does). Each ends in CRLF.

use std::net::IpAddr;

/// A listed proxy did not send its header in time (Haraka's reply, with an
/// enhanced status code).
pub const PROXY_TIMED_OUT: &str = "421 4.4.2 PROXY timed out\r\n";

/// A listed proxy sent a malformed header, a v1 `UNKNOWN`, or an unsupported
/// v2 family.
pub const INVALID_PROXY_HEADER: &str = "421 4.7.0 Invalid PROXY header\r\n";

/// No backend accepted the connection (postscreen's reply).
pub const SERVER_PORTS_BUSY: &str = "421 4.3.2 All server ports are busy\r\n";

/// Too many connections from one client (postscreen's reply).
pub const TOO_MANY_CONNECTIONS: &str = "421 4.7.0 Error: too many connections\r\n";

/// The client's network opened too many connections this minute (smtpd's
/// reply for anvil's rate limit).
pub fn too_many_connections_from(hostname: &str, ip: IpAddr) -> String {
    format!("421 4.7.0 {hostname} Error: too many connections from {ip}\r\n")
}

/// All screening places are taken (postscreen's reply).
pub const SCREENING_PORTS_BUSY: &str = "421 4.3.2 All screening ports are busy\r\n";

/// A RCPT from a client that passed, under `after_pass = "reconnect"`
/// (postscreen's default rcpt_reply): come back later.
pub const RCPT_DEFERRED: &str = "450 4.3.2 Service currently unavailable\r\n";

/// The client's backend was flushed while doorman judged its commands
/// (postscreen's final reply).
pub const FLUSHED: &str = "421 4.3.2 Service currently unavailable\r\n";

/// doorman is stopping and its grace period is over.
pub const SHUTTING_DOWN: &str = "421 4.3.2 Service shutting down, try again later\r\n";

/// The reply to QUIT.
pub const BYE: &str = "221 2.0.0 Bye\r\n";

/// The reply to NOOP and RSET.
pub const OK: &str = "250 2.0.0 Ok\r\n";

/// A command doorman does not take in this state.
pub const NOT_RECOGNIZED: &str = "502 5.5.2 Error: command not recognized\r\n";

/// A peer that is not listed sent a PROXY header (a soft error, so a proxy
/// missing from the list never bounces mail).
pub fn proxy_not_allowed(ip: IpAddr) -> String {
    format!("421 4.7.0 PROXY not allowed from {ip}\r\n")
}

/// The single-line greeting for health checks.
pub fn health_banner(hostname: &str) -> String {
    format!("220 {hostname} ESMTP\r\n")
}

/// The reply to HELO or EHLO from a health check.
pub fn helo(hostname: &str) -> String {
    format!("250 {hostname}\r\n")
}

/// A command line too long, or too many commands (postscreen's reply).
pub fn service_unavailable(hostname: &str) -> String {
    format!("421 {hostname} Service unavailable - try again later\r\n")
}

/// A command took too long to arrive (postscreen's reply).
pub fn timeout_exceeded(hostname: &str) -> String {
    format!("421 4.4.2 {hostname} Error: timeout exceeded\r\n")
}
