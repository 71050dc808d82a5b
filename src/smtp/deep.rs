//! postscreen's deep protocol tests, sans-IO: pipelining, non-SMTP
//! commands and bare newlines.
//!
//! [`DeepTests::inspect`] looks at one command line (and whether more bytes
//! had already arrived behind it, which is pipelining: doorman never
//! announces PIPELINING) and reports each test's first violation. A test
//! that saw no violation by the time the client reaches RCPT TO has passed.

use super::line::Line;
use crate::log::escape;

/// The deep tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeepTest {
    /// A command sent before the reply to the previous one.
    Pipelining,
    /// A forbidden command or a header-like line.
    NonSmtpCommand,
    /// A line ending in LF without CR.
    BareNewline,
}

impl DeepTest {
    /// The name in postscreen's log lines.
    pub fn log_name(self) -> &'static str {
        match self {
            DeepTest::Pipelining => "COMMAND PIPELINING",
            DeepTest::NonSmtpCommand => "NON-SMTP COMMAND",
            DeepTest::BareNewline => "BARE NEWLINE",
        }
    }

    /// The name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            DeepTest::Pipelining => "pipelining",
            DeepTest::NonSmtpCommand => "non_smtp_command",
            DeepTest::BareNewline => "bare_newline",
        }
    }

    /// The refusal of a client that failed this test under `action`
    /// (postscreen's `5.5.1 Protocol error`; the drop of a non-SMTP
    /// command has its own reply, `reply::NON_SMTP_DROP`).
    pub fn refusal(self, action: doorman_gate_api::Action) -> doorman_gate_api::Rejection {
        doorman_gate_api::Rejection::new(action, "5.5.1", "Protocol error")
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
    /// behind it, and `after` is the previous command (or `CONNECT`). The
    /// bytes behind a `BDAT` line are its chunk, not pipelined commands.
    pub fn inspect(&mut self, line: &Line, pending: &[u8], after: &str) -> Vec<Violation> {
        let mut found = Vec::new();
        let verb = line.verb();
        let text = escape(&line.text, 100);
        if !pending.is_empty() && verb != "BDAT" {
            found.push(Violation {
                test: DeepTest::Pipelining,
                detail: format!(
                    "after {}: {}",
                    verb_or_line(&verb, &text),
                    escape(pending, 100)
                ),
            });
        }
        if self.forbidden.contains(&verb) || is_header_label(&line.text) {
            found.push(Violation {
                test: DeepTest::NonSmtpCommand,
                detail: format!("after {after}: {text}"),
            });
        }
        if line.bare_newline {
            // postscreen names the line that ended in the bare newline.
            found.push(Violation {
                test: DeepTest::BareNewline,
                detail: format!("after {text}"),
            });
        }
        found.retain(|v| self.enabled.contains(&v.test) && !self.failed.contains(&v.test));
        self.failed.extend(found.iter().map(|v| v.test));
        found
    }
}

fn verb_or_line(verb: &str, text: &str) -> String {
    if verb.is_empty() {
        text.to_string()
    } else {
        verb.to_string()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, bare: bool) -> Line {
        Line {
            text: text.as_bytes().to_vec(),
            bare_newline: bare,
        }
    }

    fn all() -> DeepTests {
        DeepTests::new(
            vec![
                DeepTest::Pipelining,
                DeepTest::NonSmtpCommand,
                DeepTest::BareNewline,
            ],
            &["CONNECT".into(), "GET".into(), "POST".into()],
        )
    }

    #[test]
    fn violations_once_each() {
        let mut deep = all();
        let v = deep.inspect(&line("EHLO x", false), b"MAIL FROM:<a@b>\r\n", "CONNECT");
        assert_eq!(
            v,
            vec![Violation {
                test: DeepTest::Pipelining,
                detail: "after EHLO: MAIL FROM:<a@b>\\r\\n".into()
            }]
        );
        assert!(
            deep.inspect(&line("NOOP", false), b"x", "EHLO").is_empty(),
            "once"
        );
        let v = deep.inspect(&line("GET / HTTP/1.0", false), b"", "EHLO");
        assert_eq!(v[0].detail, "after EHLO: GET / HTTP/1.0");
        let v = deep.inspect(&line("RSET", true), b"", "GET");
        assert_eq!(v[0].detail, "after RSET");
        assert!(deep.failed());
    }

    #[test]
    fn a_bdat_chunk_is_not_pipelining() {
        let mut deep = all();
        assert!(deep
            .inspect(&line("BDAT 5 LAST", false), b"hello", "RCPT")
            .is_empty());
        assert!(!deep.has_failed(DeepTest::Pipelining));
        let v = deep.inspect(&line("DATA", false), b"Subject: x\r\n", "RCPT");
        assert_eq!(v[0].test, DeepTest::Pipelining);
        assert!(deep.has_failed(DeepTest::Pipelining));
    }

    #[test]
    fn header_labels_and_disabled_tests() {
        let mut deep = all();
        assert_eq!(
            deep.inspect(&line("Host: example.com", false), b"", "GET")
                .len(),
            1
        );
        let mut deep = all();
        assert!(deep
            .inspect(&line("MAIL FROM:<a@b>", false), b"", "EHLO")
            .is_empty());
        let mut only_bare = DeepTests::new(vec![DeepTest::BareNewline], &[]);
        assert!(only_bare
            .inspect(&line("GET /", false), b"x", "CONNECT")
            .is_empty());
        assert!(!only_bare.failed());
    }
}
