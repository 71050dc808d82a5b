//! The screening verdict, sans-IO: which tests ran, which failed, and what
//! that means for the client, as postscreen combines its tests.
//!
//! A `drop` failure ends the session at once and never gets here. Otherwise
//! an `enforce` failure sends the client to the built-in engine, which
//! refuses its RCPTs with the most recent such failure's reply (as
//! postscreen's `rcpt_reply` is overwritten by each failure); `ignore`
//! failures let it through without remembering a pass; a test that could
//! not be decided in time (a DNS answer still outstanding) lets it through
//! without remembering anything either; and a client with no failure
//! passes, and its passes are cached.

use std::time::{Duration, SystemTime};

use doorman_gate_api::{Action, Rejection};

use crate::cache::{Entry, Test};

/// What happens to the client after the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Talk to it with the built-in engine, refusing every RCPT.
    Enforce(Rejection),
    /// Hand it off; `pass` holds the cache entry to store when it passed.
    HandOff {
        /// The updated cache entry, or `None` when a test failed (ignored).
        pass: Option<Entry>,
    },
}

/// The tests of one connection.
#[derive(Clone, Debug, Default)]
pub struct Screening {
    failures: Vec<Rejection>,
    passed: Vec<(Test, Duration)>,
    allowlisted: Option<Duration>,
    undecided: bool,
}

/// The reply text of a pregreet failure (postscreen's).
pub const PREGREET_REPLY: &str = "5.5.1 Protocol error";

impl Screening {
    /// Records a failed test.
    pub fn fail(&mut self, rejection: Rejection) {
        self.failures.push(rejection);
    }

    /// Whether any test failed so far.
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    /// Records a passed test and how long the pass holds.
    pub fn pass(&mut self, test: Test, ttl: Duration) {
        self.passed.push((test, ttl));
    }

    /// Records a DNSWL allowlisting: every test counts as passed for `ttl`.
    pub fn allowlist(&mut self, ttl: Duration) {
        self.allowlisted = Some(ttl);
    }

    /// Records that a test could not be decided in time (a DNS list that
    /// had not answered by the end of the wait): the client goes on, but no
    /// pass of this connection is remembered, so it is tested again.
    pub fn undecided(&mut self) {
        self.undecided = true;
    }

    /// Whether a test could not be decided in time.
    pub fn is_undecided(&self) -> bool {
        self.undecided
    }

    /// The decision, given the client's cache entry before this connection.
    pub fn decide(&self, previous: Option<Entry>, now: SystemTime) -> Decision {
        if let Some(rejection) = self
            .failures
            .iter()
            .rev()
            .find(|r| r.action == Action::Enforce)
        {
            return Decision::Enforce(rejection.clone());
        }
        if self.failed() || self.undecided {
            return Decision::HandOff { pass: None };
        }
        let mut entry = previous.unwrap_or_default();
        match self.allowlisted {
            Some(ttl) => {
                for test in [
                    Test::Pregreet,
                    Test::Dnsbl,
                    Test::Pipelining,
                    Test::NonSmtpCommand,
                    Test::BareNewline,
                ] {
                    entry.record(test, now, ttl);
                }
            }
            None => {
                for (test, ttl) in &self.passed {
                    entry.record(*test, now, *ttl);
                }
            }
        }
        Decision::HandOff { pass: Some(entry) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(action: Action, text: &str) -> Rejection {
        Rejection {
            action,
            reply_text: text.into(),
        }
    }

    #[test]
    fn the_latest_enforce_wins_and_ignore_is_not_cached() {
        let now = SystemTime::now();
        let mut s = Screening::default();
        s.fail(rejection(Action::Ignore, "a"));
        assert_eq!(s.decide(None, now), Decision::HandOff { pass: None });
        s.fail(rejection(Action::Enforce, "b"));
        s.fail(rejection(Action::Enforce, "c"));
        s.fail(rejection(Action::Ignore, "d"));
        assert_eq!(
            s.decide(None, now),
            Decision::Enforce(rejection(Action::Enforce, "c"))
        );
    }

    #[test]
    fn an_undecided_test_remembers_nothing() {
        let now = SystemTime::now();
        let mut s = Screening::default();
        s.pass(Test::Pregreet, Duration::from_secs(86400));
        s.undecided();
        assert_eq!(s.decide(None, now), Decision::HandOff { pass: None });
    }

    #[test]
    fn passes_are_recorded_with_their_ttls() {
        let now = SystemTime::now();
        let mut s = Screening::default();
        s.pass(Test::Pregreet, Duration::from_secs(86400));
        s.pass(Test::Dnsbl, Duration::from_secs(60));
        let Decision::HandOff { pass: Some(entry) } = s.decide(None, now) else {
            panic!("passes")
        };
        assert!(entry.passed(Test::Pregreet, now + Duration::from_secs(3600)));
        assert!(!entry.passed(Test::Dnsbl, now + Duration::from_secs(61)));

        let mut allow = Screening::default();
        allow.allowlist(Duration::from_secs(300));
        let Decision::HandOff { pass: Some(entry) } = allow.decide(None, now) else {
            panic!("passes")
        };
        assert!(entry.passed(Test::Pregreet, now + Duration::from_secs(299)));
        assert!(!entry.passed(Test::Pregreet, now + Duration::from_secs(301)));
    }
}
