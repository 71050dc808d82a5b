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
//!
//! It is sans-IO: no socket, no log line, no reply is written here.

use std::time::{Duration, SystemTime};

use std::net::IpAddr;

use doorman_gate_api::{Action, Rejection, Reply, Score};

use crate::cache::{Entry, RECORD_FIELDS};
use crate::deep::DeepTest;

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

/// What the wait gates' scores mean together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// `rank >= threshold`: the client failed.
    Listed {
        /// The sum of every gate's weights.
        rank: i32,
        /// The reply to each RCPT (postscreen's), naming the finding with
        /// the largest weight.
        reply: Reply,
    },
    /// Every answer is in and `rank <= allowlist_threshold` (a negative
    /// value): the client skips the remaining tests.
    Allowlisted {
        /// The sum.
        rank: i32,
    },
    /// Neither, with every answer in: each gate passes, and the passes are
    /// remembered.
    Clean {
        /// The sum.
        rank: i32,
    },
    /// Neither, with an answer missing (a list that did not answer, or
    /// whose lookup failed): the client goes on, but nothing is remembered
    /// and it never allowlists.
    Undecided {
        /// The sum of what is in.
        rank: i32,
    },
}

impl Judgement {
    /// The summed score.
    pub fn rank(&self) -> i32 {
        match self {
            Judgement::Listed { rank, .. }
            | Judgement::Allowlisted { rank }
            | Judgement::Clean { rank }
            | Judgement::Undecided { rank } => *rank,
        }
    }
}

/// The score thresholds (`[score] threshold` and `allowlist_threshold`),
/// which judge the sum of every gate's weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Thresholds {
    /// Inclusive lower bound of a blocking score.
    pub threshold: i32,
    /// Inclusive upper bound of an allowlisting score; 0 disables.
    pub allowlist_threshold: i32,
}

impl Thresholds {
    /// Judges the gates' scores, as postscreen judges its DNSBL score: the
    /// weights add up; a refusal names the finding with the largest
    /// positive weight (the first on ties, in gate order); a score with an
    /// answer missing may refuse, but is otherwise undecided. The runtime
    /// (`judge_waits`) and `doorman explain` both judge with this.
    pub fn judge<'a>(&self, scores: impl IntoIterator<Item = &'a Score>, ip: IpAddr) -> Judgement {
        let mut rank = 0;
        let mut complete = true;
        let mut top: Option<&doorman_gate_api::Finding> = None;
        for score in scores {
            complete &= score.complete;
            for finding in &score.findings {
                rank += finding.weight;
                if finding.weight > 0 && top.is_none_or(|t| finding.weight > t.weight) {
                    top = Some(finding);
                }
            }
        }
        if rank >= self.threshold {
            Judgement::Listed {
                rank,
                reply: Reply::new(
                    550,
                    "5.7.1",
                    format!(
                        "Service unavailable; client [{}] blocked using {}",
                        ip.to_canonical(),
                        top.map(|t| t.name.as_str()).unwrap_or_default()
                    ),
                ),
            }
        } else if !complete {
            Judgement::Undecided { rank }
        } else if self.allowlist_threshold < 0 && rank <= self.allowlist_threshold {
            Judgement::Allowlisted { rank }
        } else {
            Judgement::Clean { rank }
        }
    }
}

/// The tests of one connection.
#[derive(Clone, Debug, Default)]
pub struct TestRecord {
    failures: Vec<Rejection>,
    passed: Vec<(&'static str, Duration)>,
    allowlisted: Option<Duration>,
    undecided: bool,
    score: Option<i32>,
}

/// The enhanced status code of the reply to a pregreeter (postscreen's).
pub const PREGREET_STATUS: &str = "5.5.1";

/// The text of the reply to a pregreeter (postscreen's).
pub const PREGREET_TEXT: &str = "Protocol error";

impl TestRecord {
    /// Records a failed test.
    pub fn fail(&mut self, rejection: Rejection) {
        self.failures.push(rejection);
    }

    /// Whether any test failed so far.
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    /// Records a passed test (a gate's name) and how long the pass holds.
    pub fn pass(&mut self, gate: &'static str, ttl: Duration) {
        self.passed.push((gate, ttl));
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

    /// Records the wait gates' summed score.
    pub fn scored(&mut self, rank: i32) {
        self.score = Some(rank);
    }

    /// The wait gates' summed score, when they ran.
    pub fn score(&self) -> Option<i32> {
        self.score
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
            // A DNSWL allowlisting: every test (postscreen's record's,
            // and every deep test), and every gate that passed, counts as
            // passed for its TTL.
            Some(ttl) => {
                let deep = DeepTest::ALL.map(DeepTest::name);
                for test in RECORD_FIELDS.iter().chain(&deep) {
                    entry.record_gate(test, now, ttl);
                }
                for (gate, _) in &self.passed {
                    entry.record_gate(gate, now, ttl);
                }
            }
            None => {
                for (gate, ttl) in &self.passed {
                    entry.record_gate(gate, now, *ttl);
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
        Rejection::new(action, "5.7.1", text)
    }

    #[test]
    fn the_latest_enforce_wins_and_ignore_is_not_cached() {
        let now = SystemTime::now();
        let mut s = TestRecord::default();
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

    fn score(findings: &[(&str, i32)], complete: bool) -> Score {
        Score {
            findings: findings
                .iter()
                .map(|(name, weight)| doorman_gate_api::Finding {
                    name: name.to_string(),
                    weight: *weight,
                })
                .collect(),
            ttl: Some(Duration::from_secs(60)),
            complete,
        }
    }

    #[test]
    fn scores_add_up_across_gates_and_the_largest_weight_is_named() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let thresholds = Thresholds {
            threshold: 3,
            allowlist_threshold: -1,
        };
        let dnsbl = score(&[("zen.test", 2), ("wl.test", -1)], true);
        let rdns = score(&[("rdns.no_ptr", 2)], true);
        assert_eq!(
            thresholds.judge([&dnsbl, &rdns], ip),
            Judgement::Listed {
                rank: 3,
                reply: Reply::new(
                    550,
                    "5.7.1",
                    "Service unavailable; client [192.0.2.7] blocked using zen.test"
                )
            }
        );
        assert_eq!(thresholds.judge([&dnsbl], ip), Judgement::Clean { rank: 1 });
        let allow = score(&[("wl.test", -2)], true);
        assert_eq!(
            thresholds.judge([&allow], ip),
            Judgement::Allowlisted { rank: -2 }
        );
        let partial = score(&[("wl.test", -2)], false);
        assert_eq!(
            thresholds.judge([&partial], ip),
            Judgement::Undecided { rank: -2 },
            "a partial score never allowlists, and is never remembered"
        );
        let partial_listing = score(&[("zen.test", 3)], false);
        assert!(
            matches!(
                thresholds.judge([&partial_listing], ip),
                Judgement::Listed { rank: 3, .. }
            ),
            "but it may refuse"
        );
        let off = Thresholds {
            threshold: 1,
            allowlist_threshold: 0,
        };
        assert_eq!(off.judge([&allow], ip), Judgement::Clean { rank: -2 });
    }

    #[test]
    fn an_undecided_test_remembers_nothing() {
        let now = SystemTime::now();
        let mut s = TestRecord::default();
        s.pass("pregreet", Duration::from_secs(86400));
        s.undecided();
        assert_eq!(s.decide(None, now), Decision::HandOff { pass: None });
    }

    #[test]
    fn passes_are_recorded_with_their_ttls() {
        let now = SystemTime::now();
        let mut s = TestRecord::default();
        s.pass("pregreet", Duration::from_secs(86400));
        s.pass("dnsbl", Duration::from_secs(60));
        let Decision::HandOff { pass: Some(entry) } = s.decide(None, now) else {
            panic!("passes")
        };
        assert!(entry.passed_gate("pregreet", now + Duration::from_secs(3600)));
        assert!(!entry.passed_gate("dnsbl", now + Duration::from_secs(61)));

        let mut allow = TestRecord::default();
        allow.allowlist(Duration::from_secs(300));
        let Decision::HandOff { pass: Some(entry) } = allow.decide(None, now) else {
            panic!("passes")
        };
        assert!(entry.passed_gate("pregreet", now + Duration::from_secs(299)));
        assert!(!entry.passed_gate("pregreet", now + Duration::from_secs(301)));
        for test in RECORD_FIELDS
            .into_iter()
            .chain(DeepTest::ALL.map(DeepTest::name))
        {
            assert!(
                entry.passed_gate(test, now),
                "an allowlisting passes {test}"
            );
        }
    }
}
