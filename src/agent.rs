//! HAProxy's agent check, answered by doorman about itself.
//!
//! With `agent-check agent-port N` on its server line, HAProxy connects to
//! `[admin] agent` every `agent-inter`, reads one line and closes. doorman
//! writes the line at once and closes too, so a peer that never reads holds
//! nothing:
//!
//! - `drain` after `doorman drain` (or `POST /drain`), and during the
//!   SIGTERM grace period: HAProxy sends no new client, live ones finish;
//! - `drain` too when every backend that is up is drained (or weighs 0),
//!   so HAProxy sends nobody the backends would refuse;
//! - `down` when no backend is up;
//! - otherwise `ready NN%`: 100% at rest, falling as the screening places
//!   fill, to [`FLOOR`]% when they are full, so a node under a flood gets
//!   fewer new clients than its idle peers.
//!
//! It reads the pool's availability and never touches a session or the
//! config.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::handoff::Availability;
use crate::shared::{ConfigState, ProcessState};

/// The lowest weight doorman asks for while it takes clients.
pub const FLOOR: usize = 10;

/// How long the line may take to leave.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The agent's line: `drain`, `down`, or `ready NN%` for `screening` of
/// `limit` screening places taken (0: no limit).
pub fn line(draining: bool, backends: Availability, screening: usize, limit: usize) -> String {
    match (draining, backends) {
        // Drained backends let their live sessions finish: so does HAProxy.
        (true, _) | (false, Availability::Drained) => return "drain\n".to_string(),
        (false, Availability::Down) => return "down\n".to_string(),
        (false, Availability::Ready) => {}
    }
    let weight = if limit == 0 {
        100
    } else {
        let taken = screening.min(limit);
        100 - (100 - FLOOR) * taken / limit
    };
    format!("ready {weight}%\n")
}

/// Binds the agent listener.
pub async fn bind(address: std::net::SocketAddr) -> io::Result<TcpListener> {
    crate::admin::bind_named(address, "agent").await
}

/// Answers agent checks until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    current: Arc<ArcSwap<ConfigState>>,
    process: ProcessState,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = current.load();
        let text = line(
            process.draining.load(Ordering::SeqCst),
            shared.pool.availability(None),
            process.limits.screening(),
            shared.config.limits.screening,
        );
        process
            .metrics
            .agent_reply(text.split([' ', '\n']).next().unwrap_or_default());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(text.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        use Availability::*;
        assert_eq!(line(true, Ready, 0, 100), "drain\n");
        assert_eq!(line(true, Down, 0, 100), "drain\n", "drain first");
        assert_eq!(
            line(false, Drained, 0, 100),
            "drain\n",
            "every backend drained"
        );
        assert_eq!(line(false, Down, 0, 100), "down\n");
        assert_eq!(line(false, Ready, 0, 100), "ready 100%\n");
        assert_eq!(line(false, Ready, 50, 100), "ready 55%\n");
        assert_eq!(line(false, Ready, 100, 100), "ready 10%\n");
        assert_eq!(line(false, Ready, 500, 100), "ready 10%\n");
        assert_eq!(line(false, Ready, 500, 0), "ready 100%\n", "no limit");
    }
}
