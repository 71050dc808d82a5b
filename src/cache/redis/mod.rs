//! The Redis store, shared by a fleet of doorman instances.
//!
//! Keys are `<prefix>pass:<ip>` (postscreen-style records, with native
//! expiry at the latest pass plus the retention time) and
//! `<prefix>dnsbl:<query name>` (DNS answers, expiring with their clamped
//! TTL), so one instance's lookups serve the others. Every call has a short
//! deadline. When Redis fails, doorman says so once, serves from its local
//! memory cache, reconnects in the background, and says when it is back.
//! Coming back, it offers Redis the passes it knows (`replay`): a Redis
//! that restarted empty learns the fleet's clients again instead of having
//! them all screened anew. An error reply fails its request only; the link
//! goes down only when it broke (`failure`). Passwords, ACL users,
//! Sentinels and TLS are `source`'s.

mod failure;
mod replay;
mod source;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use doorman_gate_api::{AnswerStore, GateFuture};
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::entry::Entry;
use super::{CacheError, Known};
use crate::config::CacheSection;
use failure::{describe, judge, Failure, RequestFailures};
use source::Source;

/// How often a lost connection is tried again, and a live one pinged.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// How long the liveness ping may take before the link counts as dead (a
/// slow reply to a session's request fails that request only).
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Seconds until a pass record expires (`retention` after its latest pass);
/// `None` when it already has.
fn seconds_left(entry: &Entry, retention: Duration, now: SystemTime) -> Option<u64> {
    let until = entry.latest()? + retention;
    let left = until.duration_since(now).ok()?.as_secs();
    (left > 0).then_some(left)
}

/// The live connection, and which one it is: a failure on an older one
/// must not drop a newer one.
type Link = Option<(u64, MultiplexedConnection)>;

/// A Redis connection that may be down.
#[derive(Debug)]
pub struct RedisStore {
    source: Source,
    url: String,
    prefix: String,
    timeout: Duration,
    link: Mutex<Link>,
    connections: AtomicU64,
    down: AtomicBool,
    wake: Notify,
    failures: RequestFailures,
}

impl RedisStore {
    /// A store for `[cache] redis_url`, or for the master the
    /// `redis_sentinels` name; nothing is connected until
    /// [`RedisStore::keep_connected`] runs.
    pub fn new(settings: &CacheSection) -> Result<Self, CacheError> {
        let (source, url) = Source::new(settings)?;
        Ok(Self {
            source,
            url,
            prefix: settings.redis_prefix.clone(),
            timeout: settings.redis_timeout,
            link: Mutex::new(None),
            connections: AtomicU64::new(0),
            down: AtomicBool::new(false),
            wake: Notify::new(),
            failures: RequestFailures::default(),
        })
    }

    /// The store's name in log lines: `redis:<url>`, without a password.
    pub fn name(&self) -> String {
        format!("redis:{}", self.url)
    }

    /// Connects, pings a live link so an outage is noticed even without
    /// traffic, and connects again whenever the link is lost, until the
    /// process ends.
    pub async fn keep_connected(self: Arc<Self>, known: Known, retention: Duration) {
        loop {
            match self.current() {
                Some((id, mut connection)) => {
                    let ping = redis::cmd("PING");
                    match tokio::time::timeout(
                        PING_TIMEOUT,
                        ping.query_async::<String>(&mut connection),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => self.failed(id, &error),
                        Err(_) => self
                            .drop_link(id, &format!("no answer to a ping within {PING_TIMEOUT:?}")),
                    }
                }
                None => {
                    self.connect_once(Some((&known, retention))).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One connection attempt within a second. After an outage, the
    /// passes in `known` are offered back once the link serves again.
    pub async fn connect_once(&self, known: Option<(&Known, Duration)>) -> bool {
        let attempt = tokio::time::timeout(Duration::from_secs(1), self.source.connect()).await;
        match attempt {
            Ok(Ok(connection)) => {
                let id = self.connections.fetch_add(1, Ordering::SeqCst) + 1;
                if let Ok(mut link) = self.link.lock() {
                    *link = Some((id, connection.clone()));
                }
                let offered = match known {
                    Some((known, retention)) if self.down.load(Ordering::SeqCst) => {
                        let mut connection = connection;
                        replay::offer_back(&mut connection, known, &self.prefix, retention).await
                    }
                    _ => 0,
                };
                let still_live = self.current().is_some_and(|(live, _)| live == id);
                if still_live && self.down.swap(false, Ordering::SeqCst) {
                    tracing::info!(
                        "cache {} is back; sharing resumes ({offered} passes it lacked written back)",
                        self.name()
                    );
                }
                true
            }
            Ok(Err(error)) => {
                self.mark_down(&describe(&error));
                false
            }
            Err(_) => {
                self.mark_down("connect timed out");
                false
            }
        }
    }

    /// Whether the link to Redis is up now.
    pub fn is_up(&self) -> bool {
        self.link.lock().map(|l| l.is_some()).unwrap_or(false)
    }

    /// The live connection and its number.
    fn current(&self) -> Link {
        self.link.lock().ok()?.clone()
    }

    /// Drops connection `id` if it is still the live one, and says so.
    fn drop_link(&self, id: u64, why: &str) {
        let dropped = self.link.lock().is_ok_and(|mut link| {
            let current = link.as_ref().is_some_and(|(live, _)| *live == id);
            if current {
                *link = None;
            }
            current
        });
        if dropped {
            self.mark_down(why);
        }
    }

    /// Says once per outage that Redis is down, and wakes the reconnector.
    fn mark_down(&self, why: &str) {
        if !self.down.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "warning: cache {}: {}; using the local memory cache until it is back",
                self.name(),
                crate::log::escape(why.as_bytes(), 200)
            );
        }
        self.wake.notify_one();
    }

    /// A call on connection `id` failed: the request, or the link.
    fn failed(&self, id: u64, error: &redis::RedisError) {
        match judge(error) {
            Failure::Link => self.drop_link(id, &describe(error)),
            Failure::Request => self.failures.note(&self.name(), &describe(error)),
        }
    }

    /// Runs one command within the deadline; `None` when Redis is down,
    /// slow, or refused the command (which fails only this call, unless
    /// the link broke).
    async fn call<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Option<T> {
        let (id, mut connection) = self.current()?;
        match tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(id, &error);
                None
            }
            Err(_) => {
                self.failures.note(
                    &self.name(),
                    &format!("no answer within {:?}", self.timeout),
                );
                None
            }
        }
    }

    fn pass_key(&self, ip: IpAddr) -> String {
        format!("{}pass:{ip}", self.prefix)
    }

    /// The entry for `ip`: `Err` when Redis could not be asked.
    pub async fn get(&self, ip: IpAddr) -> Result<Option<Entry>, CacheError> {
        let value: Option<String> = self
            .call(redis::cmd("GET").arg(self.pass_key(ip)).clone())
            .await
            .ok_or(CacheError::Unavailable)?;
        Ok(value.and_then(|v| Entry::decode(&v)))
    }

    /// Stores the entry, expiring `retention` after its latest pass.
    pub async fn put(&self, ip: IpAddr, entry: Entry, retention: Duration) {
        let Some(left) = seconds_left(&entry, retention, SystemTime::now()) else {
            return;
        };
        let _: Option<()> = self
            .call(
                redis::cmd("SET")
                    .arg(self.pass_key(ip))
                    .arg(entry.encode())
                    .arg("EX")
                    .arg(left)
                    .clone(),
            )
            .await;
    }

    /// A gate's record; `None` when Redis could not be asked.
    pub async fn record(&self, key: &str) -> Option<Option<String>> {
        let key = format!("{}gate:{key}", self.prefix);
        self.call(redis::cmd("GET").arg(key).clone()).await
    }

    /// Stores a gate's record for `ttl`; `None` when Redis could not be
    /// asked.
    pub async fn keep_record(&self, key: &str, value: &str, ttl: Duration) -> Option<()> {
        let key = format!("{}gate:{key}", self.prefix);
        self.call(
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .clone(),
        )
        .await
    }

    /// Deletes the entry; whether there was one.
    pub async fn delete(&self, ip: IpAddr) -> Result<bool, CacheError> {
        let removed: i64 = self
            .call(redis::cmd("DEL").arg(self.pass_key(ip)).clone())
            .await
            .ok_or(CacheError::Unavailable)?;
        Ok(removed > 0)
    }

    /// How many pass entries carry this store's prefix.
    pub async fn count(&self) -> Result<u64, CacheError> {
        let pattern = format!("{}pass:*", self.prefix);
        let mut cursor = 0u64;
        let mut count = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .call(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .clone(),
                )
                .await
                .ok_or(CacheError::Unavailable)?;
            count += keys.len() as u64;
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
    }
}

impl AnswerStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> GateFuture<'a, Option<String>> {
        Box::pin(async move {
            let key = format!("{}{key}", self.prefix);
            self.call(redis::cmd("GET").arg(key).clone()).await?
        })
    }

    fn put(&self, key: &str, value: &str, ttl: Duration) {
        let command = redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(value)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .clone();
        let Some((_, mut connection)) = self.current() else {
            return;
        };
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, command.query_async::<()>(&mut connection)).await;
        });
    }
}
