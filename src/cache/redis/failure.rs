//! What a failed Redis call means. An error reply about one key (WRONGTYPE
//! where a record goes, OOM under `noeviction`) or a slow reply fails that
//! request only: the link is shared by every session and stays. The link
//! is dropped, and connected anew, only when the link itself failed: an
//! I/O error, a reply stream the client cannot parse, a server that no
//! longer knows doorman (NOAUTH), or a master the Sentinels demoted
//! (READONLY). Failed requests are logged at most once a minute, with how
//! many there were.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError};

/// How often a failed request is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Error replies that say the link, not the request, is wrong: a
/// connection that lost its login, a master demoted to replica.
const LINK_CODES: [&str; 2] = ["NOAUTH", "READONLY"];

/// What a failure takes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// This one request; the link serves the others.
    Request,
    /// The link: it is dropped and connected again.
    Link,
}

/// What `error` takes down.
pub(super) fn judge(error: &RedisError) -> Failure {
    if error.is_timeout() {
        return Failure::Request;
    }
    if error.code().is_some_and(|code| LINK_CODES.contains(&code)) {
        return Failure::Link;
    }
    match error.kind() {
        ErrorKind::Io | ErrorKind::Parse | ErrorKind::AuthenticationFailed => Failure::Link,
        _ => Failure::Request,
    }
}

/// `error` for a log line: a server's error reply as Redis wrote it
/// (`OOM command not allowed ...`), anything else as the crate words it.
pub(super) fn describe(error: &RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => error.to_string(),
    }
}

/// Failed requests since the last line about them.
#[derive(Debug, Default)]
pub(super) struct RequestFailures {
    last_logged: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl RequestFailures {
    /// Counts a failed request of `store`, and logs it unless a line about
    /// failed requests went out less than a minute ago.
    pub(super) fn note(&self, store: &str, why: &str) {
        let now = Instant::now();
        let due = self.last_logged.lock().is_ok_and(|mut last| {
            let due = last.is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
            if due {
                *last = Some(now);
            }
            due
        });
        if !due {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let count = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            "warning: cache {store}: a request failed ({why}); the link stays up \
             ({count} more failed since the last such line)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_link_drops_the_link() {
        let wrongtype = redis::make_extension_error(
            "WRONGTYPE".into(),
            Some("Operation against a key holding the wrong kind of value".into()),
        );
        assert_eq!(judge(&wrongtype), Failure::Request);
        let oom = redis::make_extension_error(
            "OOM".into(),
            Some("command not allowed when used memory > 'maxmemory'.".into()),
        );
        assert_eq!(judge(&oom), Failure::Request);
        let slow = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(judge(&slow), Failure::Request);
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(judge(&reset), Failure::Link);
        let gone = RedisError::from((ErrorKind::Io, "driver gone"));
        assert_eq!(judge(&gone), Failure::Link);
        let demoted = redis::make_extension_error("READONLY".into(), None);
        assert_eq!(judge(&demoted), Failure::Link);
        let typed = RedisError::from((ErrorKind::UnexpectedReturnType, "not a string"));
        assert_eq!(judge(&typed), Failure::Request);
        assert_eq!(
            describe(&oom),
            "OOM command not allowed when used memory > 'maxmemory'."
        );
    }

    #[test]
    fn failed_requests_are_counted_between_lines() {
        let failures = RequestFailures::default();
        failures.note("redis:test", "OOM");
        for _ in 0..5 {
            failures.note("redis:test", "OOM");
        }
        assert_eq!(failures.unlogged.load(Ordering::Relaxed), 5);
    }
}
