//! The units of the upper bounds every duration in the config has, so that
//! a typo such as `wait = "1d"` is refused instead of silently holding
//! every client for a day. Each section checks its own durations against
//! them (with `SectionError::within`) and names the same constant in its
//! schema (`#[schemars(transform = at_most(...))]`), so the configuration
//! reference shows the bound the check enforces; each bound admits every
//! sane setting. postscreen's and Postfix's own limits are the guide: a
//! pass is remembered at most a year, and a client is never made to wait
//! past RFC 5321's five minutes for a greeting. The constants live in the
//! gate API, which the gates' sections share.

pub use doorman_gate_api::schema::{
    at_most, HumanDuration, DAY, FIVE_MINUTES, HOUR, MINUTE, WEEK, YEAR,
};

/// `[tls] handshake_timeout`'s bound: ten minutes.
pub const TEN_MINUTES: std::time::Duration = std::time::Duration::from_secs(10 * 60);
