//! The lines of the conversation doorman reads after the handoff: what a
//! client may not send on, AUTH at the backend, a message refused for a
//! bare newline, a backend lost mid-conversation.

use std::io;
use std::net::SocketAddr;

use tracing::{info, warn};

use super::{escape, Endpoint, SHOWN_INPUT};

/// A client sent XCLIENT or XFORWARD (`verb`): refused, never forwarded.
/// smtpd's wording for an unauthorised client.
pub fn speaks_for_doorman(client: SocketAddr, verb: &str) {
    warn!(
        "warning: {} from {}: insufficient authorization: refused, not forwarded",
        escape(verb.as_bytes(), 16),
        Endpoint(client)
    );
}

/// The backend accepted the client's AUTH: the RCPT gates let its
/// transactions pass for the rest of the session
/// (`permit_sasl_authenticated`).
pub fn authenticated(client: SocketAddr, backend: SocketAddr) {
    info!(
        "AUTH from {}: accepted by backend {backend}; the RCPT gates pass this session (permit_sasl_authenticated)",
        Endpoint(client)
    );
}

/// A bare CR or LF in a message (or a command) under `bare_newline =
/// "reject"`: Postfix's `smtpd_forbid_bare_newline` line.
pub fn bare_newline(client: SocketAddr, stage: &str) {
    info!(
        "reject: bare <LF> received after {stage} from {}",
        Endpoint(client)
    );
}

/// The backend went away (or stayed silent) while the client waited for
/// its reply to `stage` (a command's verb, or `END-OF-MESSAGE`).
pub fn backend_lost(client: SocketAddr, backend: SocketAddr, stage: &str, error: &io::Error) {
    warn!(
        "warning: lost connection with backend {backend} after {} for {}: {}",
        escape(stage.as_bytes(), SHOWN_INPUT),
        Endpoint(client),
        escape(error.to_string().as_bytes(), SHOWN_INPUT)
    );
}

/// A session ended at the hard error limit (smtpd's line).
pub fn too_many_errors(client: SocketAddr, after: &str) {
    info!(
        "too many errors after {} from {}",
        escape(after.as_bytes(), SHOWN_INPUT),
        Endpoint(client)
    );
}
