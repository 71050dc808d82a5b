//! The event lines doorman logs, in one place.
//!
//! Where doorman does what postscreen does, the line is postscreen's, to the
//! letter (docs/postscreen.md, "Log lines"), so that fail2ban and
//! pflogsumm parse it. Every
//! line goes through `tracing`. Client-supplied bytes are C-escaped, so no
//! client can forge a log line.
//!
//! It sits at the bottom: it imports nothing from the crate, and its callers
//! hand it what to print.

use std::io;
use std::net::SocketAddr;

use tracing::{debug, error, info, warn};

/// An endpoint written as postscreen writes it: `[ip]:port`, for IPv6 too.
pub use doorman_gate_api::Endpoint;

/// C-escapes at most `max` bytes of client input: `\r`, `\n`, `\t`, `\\`,
/// and `\ooo` for every other byte outside printable ASCII.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) * 2);
    for &byte in bytes.iter().take(max) {
        match byte {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(char::from(byte)),
            other => out.push_str(&format!("\\{other:03o}")),
        }
    }
    out
}

/// How many bytes of client input a log line shows at most (postscreen's
/// `%.100s`).
const SHOWN_INPUT: usize = 100;

/// A listener is up.
pub fn listening(address: SocketAddr) {
    info!("listening on {}", Endpoint(address));
}

/// Accepting a connection failed (e.g. out of file descriptors).
pub fn accept_error(listener: SocketAddr, error: &io::Error) {
    warn!("warning: accept on {}: {error}", Endpoint(listener));
}

/// A serving thread could not start; its sockets are closed, and the
/// kernel spreads their connections over the other threads.
pub fn thread_failed(index: usize, error: &io::Error) {
    error!("error: cannot start serving thread {index}: {error}");
}

/// The waiting room could not watch a socket (or at all); the clients it
/// had go on in tasks of their own.
pub fn waiting_room_failed(error: &io::Error) {
    warn!("warning: waiting room: {error}");
}

/// A client's socket could not be put in the reactor when it had to
/// wait (the kernel out of room); its session ends.
pub fn socket_unwatched(error: &io::Error) {
    warn!("warning: cannot watch a client's socket: {error}");
}

/// The admin listener is up.
pub fn admin_listening(address: SocketAddr) {
    info!(
        "admin listening on {} (/metrics, /healthz)",
        Endpoint(address)
    );
}

/// SIGHUP cannot be watched: no reloads.
pub fn no_reload(error: &io::Error) {
    warn!("warning: cannot watch SIGHUP, reloads are off: {error}");
}

/// systemd could not be told that doorman is ready.
pub fn no_readiness(error: &io::Error) {
    warn!("warning: cannot tell systemd we are ready: {error}");
}

/// A reload took effect.
pub fn reloaded(path: &std::path::Path, backends: usize, gates: &str) {
    info!(
        "reloaded {}: {backends} backends, gates {gates}; new connections use it",
        path.display()
    );
}

/// The config uses a key under its old name.
pub fn deprecated(line: &str) {
    warn!("warning: {line}");
}

/// A reload was refused; the running config stays.
pub fn reload_refused(error: &dyn std::fmt::Display) {
    warn!("warning: reload refused, the running config stays: {error}");
}

/// A reload changed something that only a restart applies.
pub fn reload_needs_restart(what: &str) {
    warn!("warning: reload: {what} changed; that takes effect at the next restart");
}

/// A deep test's violation (postscreen's lines): `test` as postscreen
/// names it (`COMMAND PIPELINING`), `detail` what follows the client.
pub fn deep_violation(client: SocketAddr, test: &str, detail: &str) {
    info!("{test} from {} {detail}", Endpoint(client));
}

/// A backend refused a replayed command; the client gets the refusal.
pub fn replay_refused(client: SocketAddr, command: &[u8], reply: &[u8]) {
    info!(
        "replay for {}: backend refused {}: {}",
        Endpoint(client),
        escape(command, SHOWN_INPUT),
        escape(reply, SHOWN_INPUT)
    );
}

/// A client connected: the real client and where it connected to.
pub fn connect(client: SocketAddr, server: SocketAddr) {
    info!("CONNECT from {} to {}", Endpoint(client), Endpoint(server));
}

/// The agent-check listener is up.
pub fn agent_listening(address: SocketAddr) {
    info!("agent check on {}", Endpoint(address));
}

/// This doorman's agent state changed (`doorman drain`/`undrain`, SIGTERM).
pub fn agent_state(draining: bool, why: &str) {
    info!(
        "agent: {} ({why})",
        if draining { "draining" } else { "ready" }
    );
}

/// An operator changed a backend's runtime state.
pub fn backend_changed(backend: SocketAddr, verb: &str, state: &str, peer: SocketAddr) {
    warn!(
        "director: {verb} {backend} from {}: now {state}",
        Endpoint(peer)
    );
}

/// A live session ended because its backend was flushed.
pub fn flushed(client: SocketAddr) {
    info!(
        "director: ended the session of {}: its backend was flushed",
        Endpoint(client)
    );
}

/// A control request was refused: the peer is not trusted and has no
/// valid token.
pub fn admin_refused(peer: SocketAddr, method: &str, path: &str) {
    warn!(
        "warning: admin: refused {} {} from {}: not a trusted network and no valid token",
        escape(method.as_bytes(), 16),
        escape(path.as_bytes(), 100),
        Endpoint(peer)
    );
}

/// A listed proxy did not send its header in time.
pub fn proxy_timeout(peer: SocketAddr) {
    warn!(
        "warning: haproxy read: time limit exceeded from {}",
        Endpoint(peer)
    );
}

/// A listed proxy sent bytes that are not an acceptable header.
pub fn proxy_invalid(peer: SocketAddr, error: &dyn std::fmt::Display, input: &[u8]) {
    warn!(
        "warning: haproxy read: {} from {}: {}",
        escape(error.to_string().as_bytes(), SHOWN_INPUT),
        Endpoint(peer),
        escape(input, SHOWN_INPUT)
    );
}

/// A listed proxy closed before its header was complete. A close before any
/// byte is what health checks that only connect do, so it is not a warning.
pub fn proxy_eof(peer: SocketAddr, input: &[u8]) {
    if input.is_empty() {
        debug!("haproxy read: EOF before any byte from {}", Endpoint(peer));
    } else {
        warn!(
            "warning: haproxy read: EOF from {}: {}",
            Endpoint(peer),
            escape(input, SHOWN_INPUT)
        );
    }
}

/// A listed proxy's connection failed while doorman read its header.
pub fn proxy_read_error(peer: SocketAddr, error: &io::Error) {
    warn!("warning: haproxy read: {error} from {}", Endpoint(peer));
}

/// A peer that is not listed sent a PROXY header.
pub fn proxy_not_allowed(peer: SocketAddr, input: &[u8]) {
    warn!(
        "warning: PROXY not allowed from {}: {}",
        Endpoint(peer),
        escape(input, SHOWN_INPUT)
    );
}

/// A peer that is not listed connected to a `proxy = "required"` listener.
pub fn not_a_proxy(peer: SocketAddr, listener: SocketAddr) {
    warn!(
        "warning: connection from {} to {} refused: not a listed proxy",
        Endpoint(peer),
        Endpoint(listener)
    );
}

/// A health check from a proxy started; debug only (checks come every few
/// seconds, and some hang up mid-dialogue).
pub fn health_check(peer: SocketAddr, backend_ok: bool) {
    debug!(
        "health check from {}: {}",
        Endpoint(peer),
        if backend_ok { "220" } else { "421, no backend" }
    );
}

/// A health check ended early or badly; debug only.
pub fn health_check_ended(peer: SocketAddr, why: &str) {
    debug!("health check from {} ended: {why}", Endpoint(peer));
}

/// A backend did not take a connection (postscreen's handoff warning).
pub fn backend_unreachable(backend: SocketAddr, error: &io::Error) {
    warn!("warning: cannot connect to service {backend}: {error}");
}

/// A health check of a backend failed.
pub fn backend_check_failed(backend: SocketAddr, error: &io::Error) {
    debug!("health check of backend {backend} failed: {error}");
}

/// A backend went up or down.
pub fn backend_state(backend: SocketAddr, up: bool) {
    if up {
        info!("backend {backend} is UP");
    } else {
        warn!("warning: backend {backend} is DOWN");
    }
}

/// No backend took the client (postscreen's line).
pub fn all_server_ports_busy(client: SocketAddr, cluster: &str) {
    if cluster.is_empty() {
        warn!(
            "NOQUEUE: reject: CONNECT from {}: all server ports busy",
            Endpoint(client)
        );
    } else {
        warn!(
            "NOQUEUE: reject: CONNECT from {}: all server ports busy (cluster {cluster})",
            Endpoint(client)
        );
    }
}

/// Free heap went back to the system after the connection count fell from
/// `peak` to `now`; debug only.
pub fn memory_trimmed(peak: usize, now: usize) {
    debug!("memory trimmed: connections fell from {peak} to {now}");
}

/// The relay between a client and its backend ended with an error.
pub fn relay_error(client: SocketAddr, error: &io::Error) {
    debug!("relay for {} ended: {error}", Endpoint(client));
}

/// Seconds as postscreen prints them: `0.08`, `0.5`, `16`.
pub fn seconds(elapsed: std::time::Duration) -> String {
    let text = format!("{:.2}", elapsed.as_secs_f64());
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Where a client hung up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangupPhase {
    /// During the greet wait.
    BeforeHandshake,
    /// In the built-in engine.
    AfterHandshake,
}

/// The access list permits the client.
pub fn allowlisted(client: SocketAddr) {
    info!("ALLOWLISTED {}", Endpoint(client));
}

/// The access list rejects the client.
pub fn denylisted(client: SocketAddr) {
    info!("DENYLISTED {}", Endpoint(client));
}

/// The client passed every test; `new` when it had no cache entry.
pub fn pass(client: SocketAddr, new: bool) {
    info!(
        "PASS {} {}",
        if new { "NEW" } else { "OLD" },
        Endpoint(client)
    );
}

/// The client spoke before its turn.
pub fn pregreet(client: SocketAddr, input: &[u8], after: std::time::Duration) {
    info!(
        "PREGREET {} after {} from {}: {}",
        input.len(),
        seconds(after),
        Endpoint(client),
        escape(input, SHOWN_INPUT)
    );
}

/// The client hung up during the tests.
pub fn hangup(client: SocketAddr, after: std::time::Duration, phase: HangupPhase) {
    info!(
        "HANGUP after {} from {} in {}",
        seconds(after),
        Endpoint(client),
        match phase {
            HangupPhase::BeforeHandshake => "tests before SMTP handshake",
            HangupPhase::AfterHandshake => "tests after SMTP handshake",
        }
    );
}

/// The client's DNSBL score reached the threshold.
pub fn dnsbl_rank(client: SocketAddr, rank: i32) {
    info!("DNSBL rank {rank} for {}", Endpoint(client));
}

/// A refused RCPT, for the `NOQUEUE: reject: RCPT` log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRcpt {
    /// The reply sent, without CRLF.
    pub reply: String,
    /// The MAIL FROM address.
    pub from: String,
    /// The RCPT TO address.
    pub to: String,
    /// `SMTP` or `ESMTP`.
    pub proto: &'static str,
    /// The HELO/EHLO argument.
    pub helo: String,
}

/// The engine refused a RCPT.
pub fn noqueue_rcpt(client: SocketAddr, refused: &RefusedRcpt) {
    info!(
        "NOQUEUE: reject: RCPT from {}: {}; from=<{}>, to=<{}>, proto={}, helo=<{}>",
        Endpoint(client),
        escape(refused.reply.as_bytes(), 512),
        escape(refused.from.as_bytes(), 256),
        escape(refused.to.as_bytes(), 256),
        refused.proto,
        escape(refused.helo.as_bytes(), 256)
    );
}

/// DATA or BDAT without a valid RCPT in the engine.
pub fn no_valid_rcpt(client: SocketAddr, verb: &str) {
    info!("{verb} without valid RCPT from {}", Endpoint(client));
}

/// An engine limit was reached.
pub fn command_limit(client: SocketAddr, limit: &str, after: &str) {
    info!(
        "COMMAND {limit} LIMIT from {} after {}",
        Endpoint(client),
        escape(after.as_bytes(), SHOWN_INPUT)
    );
}

/// A backend that announced STARTTLS no longer does at a health check;
/// doorman keeps using it.
pub fn backend_starttls_gone(backend: SocketAddr) {
    warn!(
        "warning: backend {backend} no longer announces STARTTLS; doorman still starts TLS with it"
    );
}

/// A session that doorman ended itself, without a handoff.
pub fn disconnect(client: SocketAddr) {
    info!("DISCONNECT {}", Endpoint(client));
}

/// A backend greeted a teased client with something other than 220.
pub fn backend_refused(client: SocketAddr, backend: Option<SocketAddr>, greeting: &[u8]) {
    warn!(
        "warning: backend {} greeted {} with: {}",
        backend.map_or_else(|| "?".to_string(), |b| b.to_string()),
        Endpoint(client),
        escape(greeting, SHOWN_INPUT)
    );
}

/// A cache cleanup run ended (postscreen's line).
pub fn cache_cleanup(store: &str, retained: u64, dropped: u64) {
    info!("cache {store} full cleanup: retained={retained} dropped={dropped} entries");
}

/// A cache operation failed.
pub fn cache_error(store: &str, error: &dyn std::fmt::Display) {
    warn!("warning: cache {store}: {error}");
}

/// Shutdown began; `live` sessions get the grace period.
pub fn shutdown_started(live: usize, grace: std::time::Duration) {
    info!("stopping: no new connections; {live} live sessions get {grace:?} to finish");
}

/// Shutdown ended.
pub fn shutdown_finished(cut: usize) {
    info!("stopped; {cut} sessions were closed at the end of the grace period");
}

mod conversation;
mod limits;
mod relay;
mod tls;
mod users;

pub use conversation::*;
pub use limits::*;
pub use relay::*;
pub use tls::*;
pub use users::*;

#[cfg(test)]
mod tests;
