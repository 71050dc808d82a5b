//! The words a section's JSON Schema (schemars) uses for what serde alone
//! cannot say, so that the configuration reference (`doorman config
//! keys`, `docs/configuration.md`, `doorman.toml(5)`) is generated from
//! the section types: a duration as the config writes it, a duration's
//! upper bound, and a default that is computed rather than a value.
//!
//! A gate's section derives `schemars::JsonSchema` (a [`GateSection`]
//! must), with a doc comment on every field: the comment is the key's
//! meaning in the reference, and a field without one fails the reference's
//! generation. The bounds below are the ones the sections' checks use
//! ([`SectionError::within`]), so a bound is written once.
//!
//! [`GateSection`]: crate::GateSection
//! [`SectionError::within`]: crate::SectionError::within

use std::borrow::Cow;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

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

/// The schema keyword of a duration's upper bound (a string such as
/// `"5m"`), set by [`at_most`].
pub const AT_MOST: &str = "x-at-most";

/// The schema keyword of a default the reference shows in words because
/// it is computed when the key is unset (`"<hostname> ESMTP"`), set with
/// `#[schemars(extend("x-default" = "..."))]`.
pub const DEFAULT_TEXT: &str = "x-default";

/// The schema `format` of a duration field.
pub const DURATION_FORMAT: &str = "duration";

/// A duration as the config file writes it (`humantime_serde`: `"30s"`,
/// `"500ms"`, `"1d"`), for `#[schemars(with = "HumanDuration")]` beside
/// `#[serde(with = "humantime_serde")]`.
pub struct HumanDuration;

impl JsonSchema for HumanDuration {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "HumanDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": DURATION_FORMAT })
    }
}

/// A schema transform that records `bound` as a duration's upper bound:
/// `#[schemars(transform = at_most(HOUR))]`, with the same constant the
/// section's check passes to [`SectionError::within`](crate::SectionError::within).
pub fn at_most(bound: Duration) -> impl FnMut(&mut Schema) {
    move |schema: &mut Schema| {
        schema.insert(AT_MOST.into(), format_duration(bound).into());
    }
}

/// `duration` in the largest unit that holds it whole (`"5m"`, `"1d"`,
/// `"1000s"`, `"500ms"`), as the config file may write it.
pub fn format_duration(duration: Duration) -> String {
    const UNITS: [(&str, u64); 4] = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)];
    if duration.is_zero() {
        return "0s".into();
    }
    if duration.subsec_nanos() != 0 {
        if duration.subsec_nanos().is_multiple_of(1_000_000) {
            return format!("{}ms", duration.as_millis());
        }
        return format!("{}ns", duration.as_nanos());
    }
    let seconds = duration.as_secs();
    UNITS
        .iter()
        .find(|(_, size)| seconds.is_multiple_of(*size))
        .map_or_else(
            || format!("{seconds}s"),
            |(unit, size)| format!("{}{unit}", seconds / size),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_in_their_largest_whole_unit() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(50), "50ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(1000), "1000s"),
            (HOUR, "1h"),
            (DAY, "1d"),
            (YEAR, "365d"),
        ];
        for (duration, written) in cases {
            assert_eq!(format_duration(duration), written);
        }
    }
}
