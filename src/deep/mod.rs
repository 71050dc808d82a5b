//! postscreen's deep protocol tests, sans-IO: pipelining, non-SMTP
//! commands and bare newlines.
//!
//! Each test is one entry of one table (`TESTS`): its name (its key in
//! `[deep_tests]`, its label in metrics and its field in the pass cache),
//! its name in postscreen's log lines, its default action and pass TTL,
//! the reply of a client dropped for failing it, and its look at a command
//! line. Everything else reads the table through [`DeepTest`]: the
//! `[deep_tests]` section ([`DeepTestsSection`]) has one key per entry,
//! the session runs the enabled entries and records their passes by name,
//! and the verdict's allowlisting covers every entry.
//!
//! [`DeepTests::inspect`] looks at one command line (and whether more bytes
//! had already arrived behind it, which is pipelining: doorman never
//! announces PIPELINING) and reports each test's first violation. A test
//! that saw no violation by the time the client reaches RCPT TO has passed.
//!
//! # Adding a deep test
//! One entry in `TESTS`, with the function that looks at a line, both in
//! this file (and its row in the table's pinned test, beside it). A test
//! postscreen has no field for in its cache record is stored behind that
//! record as `;name=expiry`, like a gate's pass. A drop reply of its own
//! goes in `smtp::reply`, with every other reply; its key is documented in
//! `config/doorman.toml`, as every key is.

mod schema;
mod section;

pub use schema::{AFTER_PASS, FORBIDDEN_COMMANDS};
pub use section::{AfterPass, DeepTestConfig, DeepTestsSection};

use std::fmt;
use std::time::Duration;

use doorman_gate_api::{Action, Rejection};

use crate::log::escape;
use crate::smtp::line::Line;
use crate::smtp::reply;

/// postscreen's pass TTL of every deep test (`postscreen_*_ttl`).
const THIRTY_DAYS: Duration = Duration::from_secs(30 * 86400);

/// The deep tests, in the order one line's violations are reported in.
const TESTS: [Spec; 3] = [
    Spec {
        name: "pipelining",
        about: "postscreen's pipelining test: a command sent before the reply to the previous one \
            (doorman never announces PIPELINING).",
        log_name: "COMMAND PIPELINING",
        default_action: Action::Enforce,
        default_ttl: THIRTY_DAYS,
        drop_reply: None,
        check: pipelining,
    },
    Spec {
        name: "non_smtp_command",
        about: "postscreen's non-SMTP command test: a verb of `forbidden_commands` or a \
            `Label:` header line (dropped with `521 5.7.0 Error: I can break rules, too. Goodbye.`).",
        log_name: "NON-SMTP COMMAND",
        default_action: Action::Drop,
        default_ttl: THIRTY_DAYS,
        drop_reply: Some(reply::NON_SMTP_DROP),
        check: non_smtp_command,
    },
    Spec {
        name: "bare_newline",
        about: "postscreen's bare newline test: a command line that ends in LF without CR.",
        log_name: "BARE NEWLINE",
        default_action: Action::Ignore,
        default_ttl: THIRTY_DAYS,
        drop_reply: None,
        check: bare_newline,
    },
];

/// Everything doorman knows about one deep test.
struct Spec {
    /// Its key in `[deep_tests]`, its label in metrics, its field in the
    /// pass cache.
    name: &'static str,
    /// What it catches, for the configuration reference.
    about: &'static str,
    /// Its name in postscreen's log lines.
    log_name: &'static str,
    /// What a violation leads to when its `action` is unset (postscreen's
    /// default).
    default_action: Action,
    /// How long a pass is remembered when its `ttl` is unset.
    default_ttl: Duration,
    /// The reply of a client dropped for failing it; `None`: postscreen's
    /// `521 5.5.1 Protocol error`.
    drop_reply: Option<&'static str>,
    /// Its look at one command line: the detail of its log line (after
    /// `from [ip]:port `) when the line violates it.
    check: fn(&Look<'_>) -> Option<String>,
}

/// What a test sees of one command line.
struct Look<'a> {
    /// The line.
    line: &'a Line,
    /// Its verb, in upper case.
    verb: &'a str,
    /// The line as a log line shows it.
    text: &'a str,
    /// The bytes that had already arrived behind it.
    pending: &'a [u8],
    /// The previous command (or `CONNECT`).
    after: &'a str,
    /// The non-SMTP command verbs, in upper case.
    forbidden: &'a [String],
}

/// A command sent before the reply to the previous one. The bytes behind
/// a `BDAT` line are its chunk, not pipelined commands.
fn pipelining(look: &Look<'_>) -> Option<String> {
    (!look.pending.is_empty() && look.verb != "BDAT").then(|| {
        let command = if look.verb.is_empty() {
            look.text
        } else {
            look.verb
        };
        format!("after {command}: {}", escape(look.pending, 100))
    })
}

/// A forbidden command or a header-like line.
fn non_smtp_command(look: &Look<'_>) -> Option<String> {
    let forbidden = look.forbidden.iter().any(|verb| verb == look.verb);
    (forbidden || is_header_label(&look.line.text))
        .then(|| format!("after {}: {}", look.after, look.text))
}

/// A line ending in LF without CR: postscreen names the line that ended in
/// it.
fn bare_newline(look: &Look<'_>) -> Option<String> {
    look.line
        .bare_newline
        .then(|| format!("after {}", look.text))
}

/// `Label:` at the start of a line, as a mail header or HTTP request header
/// would be (postscreen's non-SMTP pattern).
fn is_header_label(text: &[u8]) -> bool {
    let label_end = text
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or(text.len());
    label_end > 0
        && text.get(label_end) == Some(&b':')
        && !matches!(
            text[..label_end].to_ascii_uppercase().as_slice(),
            b"MAIL" | b"RCPT"
        )
}

/// One deep test: an entry of the table.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeepTest(usize);

impl DeepTest {
    /// Every deep test, in the table's order.
    pub const ALL: [DeepTest; TESTS.len()] = {
        let mut all = [DeepTest(0); TESTS.len()];
        let mut index = 0;
        while index < TESTS.len() {
            all[index] = DeepTest(index);
            index += 1;
        }
        all
    };

    /// The test called `name` (its `[deep_tests]` key).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|test| test.name() == name)
    }

    fn spec(self) -> &'static Spec {
        // A `DeepTest` is only ever made from an index of `TESTS`.
        &TESTS[self.0]
    }

    /// Its key in `[deep_tests]`, its label in metrics and its field in
    /// the pass cache.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The name in postscreen's log lines.
    pub fn log_name(self) -> &'static str {
        self.spec().log_name
    }

    /// What a violation leads to when `[deep_tests]` sets no action:
    /// postscreen's default (pipelining enforce, non-SMTP commands drop,
    /// bare newlines ignore).
    pub fn default_action(self) -> Action {
        self.spec().default_action
    }

    /// What the test catches, as the configuration reference says it.
    pub fn about(self) -> &'static str {
        self.spec().about
    }

    /// How long a pass is remembered when `[deep_tests]` sets no TTL.
    pub fn default_ttl(self) -> Duration {
        self.spec().default_ttl
    }

    /// The refusal of a client that failed this test under `action`
    /// (postscreen's `5.5.1 Protocol error`).
    pub fn refusal(self, action: Action) -> Rejection {
        Rejection::new(action, "5.5.1", "Protocol error")
    }

    /// The reply before closing on a client that failed this test under
    /// `drop`: the refusal's 521, or the test's own (postscreen's for a
    /// non-SMTP command).
    pub fn drop_reply(self) -> String {
        match self.spec().drop_reply {
            Some(reply) => reply.to_string(),
            None => self.refusal(Action::Drop).drop_reply(),
        }
    }
}

impl fmt::Debug for DeepTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One violation, with what its log line needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which test.
    pub test: DeepTest,
    /// The log line after `from [ip]:port `.
    pub detail: String,
}

/// The state of the deep tests of one session.
#[derive(Clone, Debug)]
pub struct DeepTests {
    enabled: Vec<DeepTest>,
    failed: Vec<DeepTest>,
    forbidden: Vec<String>,
}

impl DeepTests {
    /// Tests `enabled`, with the forbidden command verbs.
    pub fn new(enabled: Vec<DeepTest>, forbidden: &[String]) -> Self {
        Self {
            enabled,
            failed: Vec::new(),
            forbidden: forbidden.iter().map(|f| f.to_ascii_uppercase()).collect(),
        }
    }

    /// The enabled tests.
    pub fn enabled(&self) -> &[DeepTest] {
        &self.enabled
    }

    /// Whether any test failed.
    pub fn failed(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Whether `test` failed in this session.
    pub fn has_failed(&self, test: DeepTest) -> bool {
        self.failed.contains(&test)
    }

    /// Looks at one line; `pending` holds the bytes that had already arrived
    /// behind it, and `after` is the previous command (or `CONNECT`). Each
    /// enabled test reports its first violation, in the table's order.
    pub fn inspect(&mut self, line: &Line, pending: &[u8], after: &str) -> Vec<Violation> {
        let verb = line.verb();
        let text = escape(&line.text, 100);
        let look = Look {
            line,
            verb: &verb,
            text: &text,
            pending,
            after,
            forbidden: &self.forbidden,
        };
        let found: Vec<Violation> = DeepTest::ALL
            .into_iter()
            .filter(|test| self.enabled.contains(test) && !self.failed.contains(test))
            .filter_map(|test| (test.spec().check)(&look).map(|detail| Violation { test, detail }))
            .collect();
        self.failed.extend(found.iter().map(|v| v.test));
        found
    }
}

#[cfg(test)]
mod tests;
