//! The `[engine]` section: the limits of the built-in engine and of the
//! conversation doorman reads after a replay, and what a bare newline in
//! it gets.

use std::time::Duration;

use doorman_gate_api::SectionError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::bounds::{at_most, HumanDuration, HOUR};
use super::defaults::*;
pub use crate::smtp::body::BareNewline;

/// The `[engine]` section: limits of the built-in SMTP engine.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// The built-in engine's commands per session (QUIT excepted).
    #[serde(default = "default_command_limit")]
    #[schemars(range(min = 1))]
    pub command_limit: usize,
    /// The longest command line, CRLF included (also after the replay).
    #[serde(default = "default_line_length")]
    #[schemars(range(min = MIN_LINE_LENGTH))]
    pub line_length: usize,
    /// How long one whole command may take to arrive (also after the
    /// replay).
    #[serde(with = "humantime_serde", default = "default_command_time")]
    #[schemars(with = "HumanDuration", transform = at_most(HOUR))]
    pub command_time: Duration,
    /// What a bare CR or LF in a message or command doorman reads gets:
    /// `normalize` (CRLF, as Postfix 3.9's default
    /// `smtpd_forbid_bare_newline = normalize`) or `reject` (the message
    /// refused with `550 5.5.2 <hostname> Error: bare <LF> received`).
    #[serde(default)]
    pub bare_newline: BareNewline,
    /// The reply code of a `reject`, a 4xx or 5xx code (Postfix's
    /// `smtpd_forbid_bare_newline_reject_code`).
    #[serde(default = "default_bare_newline_reject_code")]
    #[schemars(range(min = 400, max = 599))]
    pub bare_newline_reject_code: u16,
    /// The 4xx and 5xx replies a session may get (doorman's and the
    /// backend's) before doorman ends it with `421 4.7.0 <hostname> Error:
    /// too many errors`, as smtpd's `smtpd_hard_error_limit`; 0: no limit.
    #[serde(default = "default_hard_error_limit")]
    pub hard_error_limit: usize,
}

/// The shortest `line_length` taken.
const MIN_LINE_LENGTH: usize = 16;

impl EngineSection {
    /// Checks the engine's limits.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.command_limit == 0 || self.line_length < MIN_LINE_LENGTH {
            return Err(SectionError::key(
                "",
                "command_limit must be above 0 and line_length at least 16",
            ));
        }
        if !(400..600).contains(&self.bare_newline_reject_code) {
            return Err(SectionError::key(
                "bare_newline_reject_code",
                "must be a 4xx or 5xx code",
            ));
        }
        SectionError::within("command_time", self.command_time, HOUR)
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            command_limit: default_command_limit(),
            line_length: default_line_length(),
            command_time: default_command_time(),
            bare_newline: BareNewline::default(),
            bare_newline_reject_code: default_bare_newline_reject_code(),
            hard_error_limit: default_hard_error_limit(),
        }
    }
}
