//! The Redis store, shared by a fleet of doorman instances.
//!
//! Keys are `<prefix>pass:<ip>` (postscreen-style records, with native
//! expiry at the latest pass plus the retention time) and
//! `<prefix>dnsbl:<query name>` (DNS answers, expiring with their clamped
//! TTL), so one instance's lookups serve the others. Every call has a short
//! deadline. When Redis fails, doorman says so once, serves from its local
//! memory cache, reconnects in the background, and says when it is back.
//! Coming back, it first offers Redis the passes it knows (`SET NX`, so
//! nothing newer is overwritten): a Redis that restarted empty learns the
//! fleet's clients again instead of having them all screened anew.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use doorman_gate_api::{AnswerStore, GateFuture};
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use tokio::sync::Notify;

use super::entry::Entry;
use super::{CacheError, Known};
use crate::config::CacheSection;

/// How often a lost connection is tried again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// Passes offered back per pipelined round trip, and its deadline.
const OFFER_BATCH: usize = 500;
const OFFER_TIMEOUT: Duration = Duration::from_secs(2);

/// Seconds until a pass record expires (`retention` after its latest pass);
/// `None` when it already has.
fn seconds_left(entry: &Entry, retention: Duration, now: SystemTime) -> Option<u64> {
    let until = entry.latest()? + retention;
    let left = until.duration_since(now).ok()?.as_secs();
    (left > 0).then_some(left)
}

/// Where the Redis master is.
enum Source {
    /// One server.
    Direct(redis::Client),
    /// Whichever server the Sentinels name as the master now.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Direct(_) => "Direct",
            Source::Sentinel(_) => "Sentinel",
        })
    }
}

/// A Redis connection that may be down.
#[derive(Debug)]
pub struct RedisStore {
    source: Source,
    url: String,
    prefix: String,
    timeout: Duration,
    link: Mutex<Option<MultiplexedConnection>>,
    down: AtomicBool,
    wake: Notify,
}

impl RedisStore {
    /// A store for `[cache] redis_url`, or for the master the
    /// `redis_sentinels` name; nothing is connected until
    /// [`RedisStore::keep_connected`] runs.
    pub fn new(settings: &CacheSection) -> Result<Self, CacheError> {
        let (source, url) = if settings.redis_sentinels.is_empty() {
            let url = &settings.redis_url;
            let client = redis::Client::open(url.as_str())
                .map_err(|e| CacheError::Store(format!("redis_url {url:?}: {e}")))?;
            (Source::Direct(client), url.clone())
        } else {
            let sentinels: Vec<String> = settings
                .redis_sentinels
                .iter()
                .map(|address| format!("redis://{address}"))
                .collect();
            let client = SentinelClient::build(
                sentinels,
                settings.redis_master_name.clone(),
                None,
                SentinelServerType::Master,
            )
            .map_err(|e| CacheError::Store(format!("redis_sentinels: {e}")))?;
            (
                Source::Sentinel(tokio::sync::Mutex::new(client)),
                format!(
                    "sentinel/{}@{}",
                    settings.redis_master_name,
                    settings.redis_sentinels.join(",")
                ),
            )
        };
        Ok(Self {
            source,
            url,
            prefix: settings.redis_prefix.clone(),
            timeout: settings.redis_timeout,
            link: Mutex::new(None),
            down: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// The store's name in log lines: `redis:<url>`.
    pub fn name(&self) -> String {
        format!("redis:{}", self.url)
    }

    /// Connects, pings a live link so an outage is noticed even without
    /// traffic, and connects again whenever the link is lost, until the
    /// process ends.
    pub async fn keep_connected(self: Arc<Self>, known: Known, retention: Duration) {
        loop {
            let connected = self.link.lock().map(|l| l.is_some()).unwrap_or(true);
            if connected {
                let _: Option<String> = self.call(redis::cmd("PING").clone()).await;
            } else {
                self.connect_once(Some((&known, retention))).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One connection attempt within a second. After an outage, the passes
    /// in `known` are offered back before the link is used again.
    pub async fn connect_once(&self, known: Option<(&Known, Duration)>) -> bool {
        let attempt = tokio::time::timeout(Duration::from_secs(1), self.open_connection()).await;
        match attempt {
            Ok(Ok(mut connection)) => {
                let offered = match known {
                    Some((known, retention)) if self.down.load(Ordering::SeqCst) => {
                        self.offer_back(&mut connection, known, retention).await
                    }
                    _ => 0,
                };
                if let Ok(mut link) = self.link.lock() {
                    *link = Some(connection);
                }
                if self.down.swap(false, Ordering::SeqCst) {
                    tracing::info!(
                        "cache {} is back; sharing resumes ({offered} passes it lacked written back)",
                        self.name()
                    );
                }
                true
            }
            Ok(Err(error)) => {
                self.mark_down(&error.to_string());
                false
            }
            Err(_) => {
                self.mark_down("connect timed out");
                false
            }
        }
    }

    /// A connection to the server, or to the master the Sentinels name now.
    async fn open_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        match &self.source {
            Source::Direct(client) => client.get_multiplexed_async_connection().await,
            Source::Sentinel(sentinel) => {
                let master = sentinel.lock().await.async_get_client().await?;
                master.get_multiplexed_async_connection().await
            }
        }
    }

    /// Writes the passes in `known` that Redis lacks; how many it took.
    async fn offer_back(
        &self,
        connection: &mut MultiplexedConnection,
        known: &Known,
        retention: Duration,
    ) -> usize {
        let entries: Vec<(IpAddr, Entry)> = known
            .lock()
            .map(|memory| {
                memory
                    .iter()
                    .map(|(ip, entry)| (*ip, entry.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let now = SystemTime::now();
        let mut written = 0;
        for batch in entries.chunks(OFFER_BATCH) {
            let mut pipe = redis::pipe();
            for (ip, entry) in batch {
                if let Some(left) = seconds_left(entry, retention, now) {
                    pipe.cmd("SET")
                        .arg(self.pass_key(*ip))
                        .arg(entry.encode())
                        .arg("EX")
                        .arg(left)
                        .arg("NX");
                }
            }
            let replies = tokio::time::timeout(
                OFFER_TIMEOUT,
                pipe.query_async::<Vec<Option<String>>>(connection),
            )
            .await;
            match replies {
                Ok(Ok(replies)) => written += replies.iter().flatten().count(),
                _ => break,
            }
        }
        written
    }

    /// Whether the link to Redis is up now.
    pub fn is_up(&self) -> bool {
        self.link.lock().map(|l| l.is_some()).unwrap_or(false)
    }

    fn mark_down(&self, why: &str) {
        if let Ok(mut link) = self.link.lock() {
            *link = None;
        }
        if !self.down.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "warning: cache {}: {}; using the local memory cache until it is back",
                self.name(),
                crate::log::escape(why.as_bytes(), 200)
            );
        }
        self.wake.notify_one();
    }

    /// Runs one command within the deadline; `None` when Redis is down or
    /// slow (which marks it down).
    async fn call<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Option<T> {
        let mut connection = self.link.lock().ok()?.clone()?;
        match tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.mark_down(&error.to_string());
                None
            }
            Err(_) => {
                self.mark_down(&format!("no answer within {:?}", self.timeout));
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
        let Some(mut connection) = self.link.lock().ok().and_then(|l| l.clone()) else {
            return;
        };
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, command.query_async::<()>(&mut connection)).await;
        });
    }
}
