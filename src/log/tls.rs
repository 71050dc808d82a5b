//! The lines of STARTTLS in the built-in engine, in Postfix's forms.

use std::net::SocketAddr;

use tracing::{info, warn};

use super::{escape, Endpoint, SHOWN_INPUT};

/// The engine's STARTTLS handshake completed (Postfix's line; doorman
/// asks for no client certificate, so the session is "Anonymous").
pub fn tls_established(client: SocketAddr, summary: &dyn std::fmt::Display) {
    info!(
        "Anonymous TLS connection established from {}: {summary}",
        Endpoint(client)
    );
}

/// The engine's STARTTLS handshake failed: Postfix's `SSL_accept error`
/// line, and for a client that left or went silent smtpd's `lost
/// connection` or `timeout after STARTTLS` line (`ended`: `lost
/// connection` or `timeout`, when the client left or went silent).
pub fn tls_failed(client: SocketAddr, error: &dyn std::fmt::Display, ended: Option<&str>) {
    info!(
        "SSL_accept error from {}: {}",
        Endpoint(client),
        escape(error.to_string().as_bytes(), 200)
    );
    if let Some(ended) = ended {
        info!("{ended} after STARTTLS from {}", Endpoint(client));
    }
}

/// Plain text the client sent behind its STARTTLS was thrown away, never
/// read inside TLS (the CVE-2011-0411 class of injection).
pub fn plaintext_after_starttls(client: SocketAddr, input: &[u8]) {
    warn!(
        "warning: {} bytes of plaintext after STARTTLS from {} discarded: {}",
        input.len(),
        Endpoint(client),
        escape(input, SHOWN_INPUT)
    );
}

/// What STARTTLS costs without `[tls]`: no STARTTLS for clients doorman
/// reads, or the deep tests skipped by those that send it.
pub fn starttls_warning(warning: &str) {
    warn!("warning: {warning}");
}

/// A certificate of `[tls]` is expired, not valid yet, or expires soon
/// (at start-up and at every reload; doorman serves it anyway).
pub fn certificate_warning(warning: &str) {
    warn!("warning: {warning}");
}
