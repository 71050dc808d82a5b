//! The upper bound of every duration in the config, so that a typo such as
//! `wait = "1d"` is refused instead of silently holding every client for a
//! day. Each bound admits every sane setting; postscreen's and Postfix's
//! own limits are the guide (a pass is remembered at most a year; a client
//! is never made to wait past RFC 5321's five minutes for a greeting).

use std::time::Duration;

use super::ConfigFile;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

/// The bound of each duration key, by table (`""`: the top level) and key.
pub const BOUNDS: &[(&str, &str, Duration)] = &[
    ("", "shutdown_grace", HOUR),
    ("proxy", "timeout", Duration::from_secs(5 * 60)),
    ("backend", "connect_timeout", Duration::from_secs(5 * 60)),
    ("greet", "wait", Duration::from_secs(5 * 60)),
    ("greet", "ttl", Duration::from_secs(365 * 86400)),
    ("dnsbl", "min_ttl", Duration::from_secs(365 * 86400)),
    ("dnsbl", "max_ttl", Duration::from_secs(365 * 86400)),
    ("dnsbl", "timeout", Duration::from_secs(5 * 60)),
    ("greylist", "delay", DAY),
    ("greylist", "retry_window", Duration::from_secs(365 * 86400)),
    ("greylist", "max_age", Duration::from_secs(365 * 86400)),
    ("policy", "timeout", Duration::from_secs(5 * 60)),
    ("pool", "check_interval", HOUR),
    ("pool", "flush_grace", DAY),
    ("cache", "flush_interval", MINUTE),
    ("cache", "redis_timeout", MINUTE),
    ("cache", "cleanup_interval", Duration::from_secs(7 * 86400)),
    ("cache", "retention_time", Duration::from_secs(365 * 86400)),
    ("engine", "command_time", HOUR),
    ("deep_tests", "pipelining", Duration::from_secs(365 * 86400)),
    (
        "deep_tests",
        "non_smtp_command",
        Duration::from_secs(365 * 86400),
    ),
    (
        "deep_tests",
        "bare_newline",
        Duration::from_secs(365 * 86400),
    ),
    ("tls", "handshake_timeout", Duration::from_secs(10 * 60)),
];

/// The first of `values` (table, key, value) above its bound: the table,
/// the key, the value and the bound.
pub fn exceeded<'a>(
    values: &[(&'a str, &'a str, Duration)],
) -> Option<(&'a str, &'a str, Duration, Duration)> {
    values.iter().find_map(|&(table, key, value)| {
        BOUNDS
            .iter()
            .find(|(t, k, _)| *t == table && *k == key)
            .filter(|(_, _, bound)| value > *bound)
            .map(|&(_, _, bound)| (table, key, value, bound))
    })
}

/// Every duration of `file`, by table and key, for [`exceeded`].
pub(super) fn durations(file: &ConfigFile) -> Vec<(&'static str, &'static str, Duration)> {
    let deep = &file.deep_tests;
    let mut all = vec![
        ("", "shutdown_grace", file.shutdown_grace),
        ("proxy", "timeout", file.proxy.timeout),
        ("greet", "wait", file.greet.wait),
        ("greet", "ttl", file.greet.ttl),
        ("dnsbl", "min_ttl", file.dnsbl.min_ttl),
        ("dnsbl", "max_ttl", file.dnsbl.max_ttl),
        ("dnsbl", "timeout", file.dnsbl.timeout),
        ("greylist", "delay", file.greylist.delay),
        ("greylist", "retry_window", file.greylist.retry_window),
        ("greylist", "max_age", file.greylist.max_age),
        ("policy", "timeout", file.policy.timeout),
        ("pool", "check_interval", file.pool.check_interval),
        ("pool", "flush_grace", file.pool.flush_grace),
        ("cache", "flush_interval", file.cache.flush_interval),
        ("cache", "redis_timeout", file.cache.redis_timeout),
        ("cache", "cleanup_interval", file.cache.cleanup_interval),
        ("cache", "retention_time", file.cache.retention_time),
        ("engine", "command_time", file.engine.command_time),
        ("deep_tests", "pipelining", deep.pipelining.ttl()),
        (
            "deep_tests",
            "non_smtp_command",
            deep.non_smtp_command.ttl(),
        ),
        ("deep_tests", "bare_newline", deep.bare_newline.ttl()),
    ];
    all.extend(
        file.backends
            .iter()
            .map(|backend| ("backend", "connect_timeout", backend.connect_timeout)),
    );
    if let Some(tls) = &file.tls {
        all.push(("tls", "handshake_timeout", tls.handshake_timeout));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_admits_the_defaults_and_refuses_above() {
        assert_eq!(exceeded(&[("greet", "wait", Duration::from_secs(6))]), None);
        assert_eq!(
            exceeded(&[("greet", "wait", DAY)]),
            Some(("greet", "wait", DAY, Duration::from_secs(300)))
        );
        assert_eq!(exceeded(&[("nowhere", "wait", DAY * 1000)]), None);
    }
}
