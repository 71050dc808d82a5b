//! When a certificate may be served: its validity period, read from the
//! leaf, and the warning an operator gets when that period is over, has not
//! begun, or ends within [`EXPIRY_WARNING`].
//!
//! A certificate out of its period is still served, as Postfix's smtpd
//! serves one: refusing to start would stop all mail, and a sender that
//! does not verify certificates (most of them) still gets its encryption.
//! So `doorman check`, the start-up and every reload say so instead.

use std::time::{Duration, SystemTime};

/// How long before its expiry a certificate is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86400);

/// A leaf certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// The first second it is valid.
    pub not_before: SystemTime,
    /// The last second it is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// The period of `certificate` (DER); `None` when it cannot be parsed.
    pub fn of(certificate: &[u8]) -> Option<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
        let validity = parsed.validity();
        Some(Self {
            not_before: at(validity.not_before.timestamp()),
            not_after: at(validity.not_after.timestamp()),
        })
    }

    /// The warning about the certificate in `file` at `now`: expired, not
    /// yet valid, or expiring within [`EXPIRY_WARNING`]; `None` when it is
    /// well within its period.
    pub fn warning(&self, file: &str, now: SystemTime) -> Option<String> {
        const SERVED: &str = "doorman serves it anyway, but senders that verify certificates (MTA-STS, DANE) refuse it";
        if let Ok(ago) = now.duration_since(self.not_after) {
            return Some(format!(
                "{file}: the certificate expired on {} ({} ago); {SERVED}",
                date(self.not_after),
                days(ago)
            ));
        }
        if let Ok(ahead) = self.not_before.duration_since(now) {
            return Some(format!(
                "{file}: the certificate is not valid yet: its validity begins on {} (in {}); {SERVED}",
                date(self.not_before),
                days(ahead)
            ));
        }
        let left = self.not_after.duration_since(now).ok()?;
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "{file}: the certificate expires in {} days, on {}",
                left.as_secs() / 86400,
                date(self.not_after)
            )
        })
    }
}

/// The time of a Unix timestamp (before 1970: 1970).
fn at(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// `2025-01-01 00:00:00 UTC`.
fn date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    i64::try_from(seconds)
        .ok()
        .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
        .map_or_else(
            || format!("{seconds} seconds after 1970"),
            |time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// `1 day`, `365 days`; under a day, `less than a day`.
fn days(span: Duration) -> String {
    match span.as_secs() / 86400 {
        0 => "less than a day".to_string(),
        1 => "1 day".to_string(),
        n => format!("{n} days"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    /// 2025-01-01 00:00:00 UTC to 2026-01-01 00:00:00 UTC.
    fn year_2025() -> Validity {
        Validity {
            not_before: at(1_735_689_600),
            not_after: at(1_767_225_600),
        }
    }

    #[test]
    fn an_expired_certificate_is_named_with_its_date() {
        let now = year_2025().not_after + 365 * DAY;
        let warning = year_2025().warning("c.pem", now).expect("a warning");
        assert_eq!(
            warning,
            "c.pem: the certificate expired on 2026-01-01 00:00:00 UTC (365 days ago); doorman serves it anyway, but senders that verify certificates (MTA-STS, DANE) refuse it"
        );
    }

    #[test]
    fn a_certificate_not_valid_yet_is_named_with_its_date() {
        let now = year_2025().not_before - 2 * DAY;
        let warning = year_2025().warning("c.pem", now).expect("a warning");
        assert!(
            warning.starts_with(
                "c.pem: the certificate is not valid yet: its validity begins on 2025-01-01 00:00:00 UTC (in 2 days)"
            ),
            "{warning}"
        );
    }

    #[test]
    fn soon_is_warned_of_and_later_is_not() {
        let soon = year_2025().not_after - 3 * DAY - Duration::from_secs(60);
        assert_eq!(
            year_2025().warning("c.pem", soon).as_deref(),
            Some("c.pem: the certificate expires in 3 days, on 2026-01-01 00:00:00 UTC")
        );
        let later = year_2025().not_after - 30 * DAY;
        assert_eq!(year_2025().warning("c.pem", later), None);
        // The last hours are "0 days", not "expired".
        let hours = year_2025().not_after - Duration::from_secs(3600);
        assert!(year_2025()
            .warning("c.pem", hours)
            .is_some_and(|w| w.contains("expires in 0 days")));
    }
}
