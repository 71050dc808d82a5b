//! The one reader of a client's command lines, for the engine and for the
//! relay after the handoff alike: one line at a time off the session's
//! buffer, with one deadline for the whole line.
//!
//! The deadline is postscreen's COMMAND TIME LIMIT: it starts when doorman
//! begins to wait for a command and does not restart when a byte arrives,
//! so a client that drips a command one byte at a time is let go at
//! `[engine] command_time` (10 s under stress), as postscreen lets it go.

use super::*;

/// Under stress a command gets at most this long, as postscreen's
/// `postscreen_command_time_limit` (`${stress?{10}:{300}}s`).
pub(super) const STRESS_COMMAND_TIME: Duration = Duration::from_secs(10);

/// What the client sent next.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A whole command line.
    Line(Line),
    /// A line longer than `[engine] line_length`.
    TooLong,
    /// No whole line within the command time.
    TimedOut,
    /// The client closed, or its socket failed.
    Closed,
}

impl<S: ClientIo> Session<Channel<S>> {
    /// The client's next command line, within one deadline for the whole
    /// line. Cancel-safe: bytes read stay in the session's buffer.
    pub(super) async fn next_command(&mut self) -> Incoming {
        let limit = self.shared.config.engine.line_length;
        let deadline = Instant::now() + self.command_time();
        loop {
            match next_line(&mut self.buffer, limit) {
                Err(_) => return Incoming::TooLong,
                Ok(Some(line)) => return Incoming::Line(line),
                Ok(None) => {}
            }
            self.buffer.reserve(512);
            match timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Err(_) => return Incoming::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Incoming::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// How long one command may take: `[engine] command_time`, at most
    /// [`STRESS_COMMAND_TIME`] under stress.
    pub(super) fn command_time(&self) -> Duration {
        let limit = self.shared.config.engine.command_time;
        if self.process.limits.stressed() {
            limit.min(STRESS_COMMAND_TIME)
        } else {
            limit
        }
    }
}
