//! The `[cache]` section: where the pass cache and the gates' records live,
//! and how doorman reaches and authenticates to a shared Redis.

use std::path::{Path, PathBuf};
use std::time::Duration;

use doorman_gate_api::SectionError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bounds::{at_most, HumanDuration, MINUTE, WEEK, YEAR};
use super::defaults::*;

/// Where the pass cache keeps its entries.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheStore {
    /// A redb file on this machine; survives restarts.
    #[default]
    Embedded,
    /// A Redis server shared by several instances.
    Redis,
    /// Memory only; lost on restart.
    Memory,
}

/// The `[cache]` section: clients that passed.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Where the pass cache's entries live: `embedded` (a redb file),
    /// `redis` (shared by several instances) or `memory` (lost on
    /// restart).
    #[serde(default)]
    pub store: CacheStore,
    /// The embedded store's file, relative to the config file's folder.
    #[serde(default = "default_cache_path")]
    pub path: PathBuf,
    /// How often pending writes reach the file; above 0.
    #[serde(with = "humantime_serde", default = "default_flush_interval")]
    #[schemars(with = "HumanDuration", transform = at_most(MINUTE))]
    pub flush_interval: Duration,
    /// The Redis store's server:
    /// `redis[s]://[user][:password@]host[:port][/db]`.
    #[serde(default = "default_redis_url")]
    pub redis_url: String,
    /// The prefix of every Redis key.
    #[serde(default = "default_redis_prefix")]
    pub redis_prefix: String,
    /// The deadline of every Redis call; above 0.
    #[serde(with = "humantime_serde", default = "default_redis_timeout")]
    #[schemars(with = "HumanDuration", transform = at_most(MINUTE))]
    pub redis_timeout: Duration,
    /// Redis Sentinel: the Sentinels that name the current master (then
    /// `redis_url` is not used and doorman follows a failover), each
    /// `host:port` or `redis[s]://[user][:password@]host:port`. With
    /// `rediss://` Sentinels the master is reached over TLS too.
    #[serde(default)]
    pub redis_sentinels: Vec<String>,
    /// The master's name at the Sentinels.
    #[serde(default = "default_redis_master_name")]
    pub redis_master_name: String,
    /// The Sentinels' ACL user (else the one in a Sentinel's address,
    /// `"redis://user:PASSWORD@host:port"`, else none); Sentinel only.
    #[serde(default)]
    pub redis_sentinel_username: Option<String>,
    /// The Sentinels' password (`requirepass`, or the ACL user's); or in a
    /// Sentinel's address, `"redis://:PASSWORD@host:port"`; Sentinel only.
    #[serde(default)]
    pub redis_sentinel_password: Option<String>,
    /// The ACL user doorman logs in to the master the Sentinels name as;
    /// Sentinel only.
    #[serde(default)]
    pub redis_master_username: Option<String>,
    /// The password of the master the Sentinels name; Sentinel only.
    #[serde(default)]
    pub redis_master_password: Option<String>,
    /// A PEM file of the certificate authorities that verify the
    /// certificate of a `rediss://` Redis or Sentinel, relative to the
    /// config file's folder.
    #[serde(default)]
    #[schemars(extend("x-default" = "none (the system's CAs)"))]
    pub redis_tls_ca: Option<PathBuf>,
    /// How often expired entries are cleaned up; 0 turns cleanup off.
    #[serde(with = "humantime_serde", default = "default_cleanup_interval")]
    #[schemars(with = "HumanDuration", transform = at_most(WEEK))]
    pub cleanup_interval: Duration,
    /// How long an entry is kept after its last pass expired.
    #[serde(with = "humantime_serde", default = "default_retention_time")]
    #[schemars(with = "HumanDuration", transform = at_most(YEAR))]
    pub retention_time: Duration,
    /// How many client addresses the in-memory cache holds.
    #[serde(default = "default_cache_size")]
    pub size: usize,
    /// How many gates' records (greylist triplets, user assignments) the
    /// memory and embedded stores hold; the oldest go first.
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1, max = MAX_RECORDS_BOUND))]
    pub max_records: u64,
}

/// The most `max_records` may be: a hundred million records is some 10 GiB
/// of redb file, past any single mail server's triplets.
pub const MAX_RECORDS_BOUND: u64 = 100_000_000;

impl CacheSection {
    /// Checks the store's timing, and that Sentinel settings come with
    /// Sentinels.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.flush_interval.is_zero() || self.redis_timeout.is_zero() {
            return Err(SectionError::key(
                "",
                "flush_interval and redis_timeout must be above 0",
            ));
        }
        if self.redis_sentinels.is_empty() {
            let sentinel_only = [
                ("redis_sentinel_username", &self.redis_sentinel_username),
                ("redis_sentinel_password", &self.redis_sentinel_password),
                ("redis_master_username", &self.redis_master_username),
                ("redis_master_password", &self.redis_master_password),
            ];
            if let Some((key, _)) = sentinel_only.iter().find(|(_, value)| value.is_some()) {
                return Err(SectionError::key(
                    *key,
                    format!(
                        "{key} is for Sentinel only: set redis_sentinels, or put the \
                         credentials in redis_url"
                    ),
                ));
            }
        }
        if !(1..=MAX_RECORDS_BOUND).contains(&self.max_records) {
            return Err(SectionError::key(
                "max_records",
                format!("max_records must be between 1 and {MAX_RECORDS_BOUND}"),
            ));
        }
        SectionError::within("flush_interval", self.flush_interval, MINUTE)?;
        SectionError::within("redis_timeout", self.redis_timeout, MINUTE)?;
        SectionError::within("cleanup_interval", self.cleanup_interval, WEEK)?;
        SectionError::within("retention_time", self.retention_time, YEAR)
    }

    /// Makes the section's file names absolute, from the config file's
    /// folder `base`.
    pub(super) fn resolve(&mut self, base: &Path) {
        self.path = base.join(&self.path);
        if let Some(ca) = &mut self.redis_tls_ca {
            *ca = base.join(&*ca);
        }
    }
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            store: CacheStore::default(),
            path: default_cache_path(),
            flush_interval: default_flush_interval(),
            redis_url: default_redis_url(),
            redis_prefix: default_redis_prefix(),
            redis_timeout: default_redis_timeout(),
            redis_sentinels: Vec::new(),
            redis_master_name: default_redis_master_name(),
            redis_sentinel_username: None,
            redis_sentinel_password: None,
            redis_master_username: None,
            redis_master_password: None,
            redis_tls_ca: None,
            cleanup_interval: default_cleanup_interval(),
            retention_time: default_retention_time(),
            size: default_cache_size(),
            max_records: default_max_records(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_credentials_need_sentinels() {
        let lone = CacheSection {
            redis_master_password: Some("pw".into()),
            ..CacheSection::default()
        };
        let refused = lone.check();
        assert!(
            matches!(&refused, Err(SectionError::Key { key, .. }) if key == "redis_master_password"),
            "{refused:?}"
        );
        let followed = CacheSection {
            redis_sentinels: vec!["127.0.0.1:26379".into()],
            ..lone
        };
        assert!(followed.check().is_ok());
    }

    #[test]
    fn max_records_is_bounded() {
        for refused in [0, MAX_RECORDS_BOUND + 1] {
            let section = CacheSection {
                max_records: refused,
                ..CacheSection::default()
            };
            let checked = section.check();
            assert!(
                matches!(&checked, Err(SectionError::Key { key, .. }) if key == "max_records"),
                "{refused}: {checked:?}"
            );
        }
        assert_eq!(CacheSection::default().max_records, 100_000);
        assert!(CacheSection::default().check().is_ok());
    }

    #[test]
    fn the_ca_file_is_found_beside_the_config() {
        let mut section = CacheSection {
            redis_tls_ca: Some("redis-ca.pem".into()),
            ..CacheSection::default()
        };
        section.resolve(Path::new("/etc/doorman"));
        assert_eq!(
            section.redis_tls_ca.as_deref(),
            Some(Path::new("/etc/doorman/redis-ca.pem"))
        );
        assert_eq!(section.path, Path::new("/etc/doorman/doorman-cache.redb"));
    }
}
