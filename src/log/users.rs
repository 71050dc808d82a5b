//! The lines of clusters balanced by recipient: users moved to another
//! backend, RCPTs split off, the store that keeps users' backends.

use std::net::SocketAddr;

use tracing::{info, warn};

use super::{escape, Endpoint};

/// A user's remembered backend cannot take it now; it goes to the next
/// backend its key ranks.
pub fn user_moved(user: &str, remembered: SocketAddr, next: SocketAddr) {
    info!(
        "user {}: backend {remembered} is not available; routed to {next}",
        escape(user.as_bytes(), 256)
    );
}

/// The cache store does not answer for users' backends: the hash alone
/// decides until it does.
pub fn user_store_down() {
    warn!("warning: users' backends: the cache store does not answer; routing by the hash alone until it does");
}

/// A RCPT whose user belongs to another backend got 452, so that the
/// sender delivers it in a transaction of its own.
pub fn recipient_elsewhere(client: SocketAddr, recipient: &str, backend: SocketAddr) {
    info!(
        "RCPT from {}: <{}> belongs to backend {backend}: 452 4.5.3, for a transaction of its own",
        Endpoint(client),
        escape(recipient.as_bytes(), 256)
    );
}

/// An operator moved a user to a backend.
pub fn user_moved_by(user: &str, backend: SocketAddr, by: &str) {
    info!(
        "user {}: moved to backend {backend} by {by}",
        escape(user.as_bytes(), 256)
    );
}
