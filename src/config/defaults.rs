//! The defaults of the core's config keys (postscreen's, where a setting
//! is postscreen's), for serde's `default = "..."`.

use std::path::PathBuf;
use std::time::Duration;

use super::DEFAULT_ORDER;

pub(super) fn default_gates() -> Vec<String> {
    DEFAULT_ORDER.iter().map(ToString::to_string).collect()
}

/// The doubtful score's threshold when its gate's section sets none.
pub(super) fn default_doubtful() -> i32 {
    1
}

pub(super) fn default_trusted() -> Vec<ipnet::IpNet> {
    ["127.0.0.1/32", "::1/128"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect()
}

pub(super) fn default_ipv6_prefix() -> u8 {
    64
}

pub(super) fn default_ipv4_prefix() -> u8 {
    32
}

pub(super) fn default_ipv4_aggregate_prefix() -> u8 {
    16
}

pub(super) fn default_ipv6_aggregate_prefix() -> u8 {
    48
}

pub(super) fn default_flush_grace() -> Duration {
    Duration::from_secs(10)
}

pub(super) fn default_proxy_timeout() -> Duration {
    Duration::from_secs(30)
}

pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

pub(super) fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

pub(super) fn default_greet_wait() -> Duration {
    Duration::from_secs(6)
}

pub(super) fn default_greet_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

pub(super) fn default_threshold() -> i32 {
    1
}

pub(super) fn default_min_ttl() -> Duration {
    Duration::from_secs(60)
}

pub(super) fn default_max_ttl() -> Duration {
    Duration::from_secs(3600)
}

pub(super) fn default_dnsbl_timeout() -> Duration {
    Duration::from_secs(10)
}

pub(super) fn default_max_queries() -> usize {
    1000
}

pub(super) fn default_max_queries_per_network() -> usize {
    100
}

pub(super) fn default_cache_size() -> usize {
    100_000
}

pub(super) fn default_max_records() -> u64 {
    100_000
}

pub(super) fn default_weight() -> u32 {
    1
}

pub(super) fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}

pub(super) fn default_rise() -> u32 {
    2
}

pub(super) fn default_fall() -> u32 {
    3
}

pub(super) fn default_client_connections() -> usize {
    50
}

pub(super) fn default_screening() -> usize {
    100
}

pub(super) fn default_total() -> usize {
    10_000
}

pub(super) fn default_syslog_tag() -> String {
    "postfix/postscreen".to_string()
}

pub(super) fn default_syslog_socket() -> PathBuf {
    PathBuf::from("/dev/log")
}

pub(super) fn default_cache_path() -> PathBuf {
    PathBuf::from("doorman-cache.redb")
}

pub(super) fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

pub(super) fn default_redis_master_name() -> String {
    "doorman".into()
}

pub(super) fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".to_string()
}

pub(super) fn default_redis_prefix() -> String {
    "doorman:".to_string()
}

pub(super) fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

pub(super) fn default_cleanup_interval() -> Duration {
    Duration::from_secs(12 * 3600)
}

pub(super) fn default_retention_time() -> Duration {
    Duration::from_secs(7 * 86400)
}

pub(super) fn default_command_limit() -> usize {
    20
}

pub(super) fn default_line_length() -> usize {
    2048
}

pub(super) fn default_command_time() -> Duration {
    Duration::from_secs(300)
}

pub(super) fn default_bare_newline_reject_code() -> u16 {
    550
}

pub(super) fn default_hard_error_limit() -> usize {
    20
}
