//! The Redis store, shared by a fleet of doorman instances.
//!
//! Keys are `<prefix>pass:<ip>` (postscreen-style records, with native
//! expiry at the latest pass plus the retention time) and
//! `<prefix>dnsbl:<query name>` (DNS answers, expiring with their clamped
//! TTL), so one instance's lookups serve the others. Every call has a short
//! deadline. When Redis fails, doorman says so once, serves from its local
//! memory cache, reconnects in the background, and says when it is back.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use doorman_dnsbl::{Answer, AnswerStore};
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::entry::Entry;
use super::CacheError;

/// How often a lost connection is tried again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// A Redis connection that may be down.
#[derive(Debug)]
pub struct RedisStore {
    client: redis::Client,
    url: String,
    prefix: String,
    timeout: Duration,
    link: Mutex<Option<MultiplexedConnection>>,
    down: AtomicBool,
    wake: Notify,
}

impl RedisStore {
    /// A store for `url`; nothing is connected until [`RedisStore::keep_connected`] runs.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        let client = redis::Client::open(url)
            .map_err(|e| CacheError::Store(format!("redis_url {url:?}: {e}")))?;
        Ok(Self {
            client,
            url: url.to_string(),
            prefix: prefix.to_string(),
            timeout,
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
    pub async fn keep_connected(self: Arc<Self>) {
        loop {
            let connected = self.link.lock().map(|l| l.is_some()).unwrap_or(true);
            if connected {
                let _: Option<String> = self.call(redis::cmd("PING").clone()).await;
            } else {
                self.connect_once().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One connection attempt within a second.
    pub async fn connect_once(&self) -> bool {
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            self.client.get_multiplexed_async_connection(),
        )
        .await;
        match attempt {
            Ok(Ok(connection)) => {
                if let Ok(mut link) = self.link.lock() {
                    *link = Some(connection);
                }
                if self.down.swap(false, Ordering::SeqCst) {
                    tracing::info!("cache {} is back; sharing resumes", self.name());
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

    fn mark_down(&self, why: &str) {
        if let Ok(mut link) = self.link.lock() {
            *link = None;
        }
        if !self.down.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "warning: cache {}: {why}; using the local memory cache until it is back",
                self.name()
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
        let remaining = entry
            .latest()
            .and_then(|latest| latest.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
            + retention;
        let _: Option<()> = self
            .call(
                redis::cmd("SET")
                    .arg(self.pass_key(ip))
                    .arg(entry.encode())
                    .arg("EX")
                    .arg(remaining.as_secs().max(1))
                    .clone(),
            )
            .await;
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
    fn get<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Answer>> + Send + 'a>> {
        Box::pin(async move {
            let key = format!("{}dnsbl:{name}", self.prefix);
            let value: Option<String> = self.call(redis::cmd("GET").arg(key).clone()).await?;
            value.and_then(|v| Answer::decode(&v))
        })
    }

    fn put(&self, name: &str, answer: &Answer, ttl: Duration) {
        let command = redis::cmd("SET")
            .arg(format!("{}dnsbl:{name}", self.prefix))
            .arg(answer.encode())
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
