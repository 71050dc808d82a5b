//! The units of the upper bounds every duration in the config has, so that
//! a typo such as `wait = "1d"` is refused instead of silently holding
//! every client for a day. Each section checks its own durations against
//! them (with `SectionError::within`); each bound admits every sane
//! setting. postscreen's and Postfix's own limits are the guide: a pass is
//! remembered at most a year, and a client is never made to wait past
//! RFC 5321's five minutes for a greeting.

use std::time::Duration;

/// A minute.
pub const MINUTE: Duration = Duration::from_secs(60);
/// Five minutes: RFC 5321's shortest command timeout.
pub const FIVE_MINUTES: Duration = Duration::from_secs(5 * 60);
/// An hour.
pub const HOUR: Duration = Duration::from_secs(3600);
/// A day.
pub const DAY: Duration = Duration::from_secs(86400);
/// A week.
pub const WEEK: Duration = Duration::from_secs(7 * 86400);
/// A year: the longest anything is remembered.
pub const YEAR: Duration = Duration::from_secs(365 * 86400);
