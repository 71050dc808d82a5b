//! Where the Redis master is and how doorman logs in to it: one server
//! (`redis_url`, whose user and password the crate sends with `AUTH`), or
//! whichever server the Sentinels name now, with credentials of its own for
//! the Sentinels and for the master, over TLS when the addresses say
//! `rediss://`. Names in log lines never show a password.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates, TlsMode};

use crate::cache::CacheError;
use crate::config::CacheSection;

/// Where the Redis master is.
pub(super) enum Source {
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

/// `url` with its password, if any, replaced by `***`.
pub(super) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    let password = rest[..at].contains(':');
    format!(
        "{scheme}://{user}{}@{}",
        if password { ":***" } else { "" },
        &rest[at + 1..]
    )
}

/// The config's CA file, read, for a TLS connection.
fn certificates(settings: &CacheSection) -> Result<Option<TlsCertificates>, CacheError> {
    let Some(path) = &settings.redis_tls_ca else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .map_err(|e| CacheError::Store(format!("redis_tls_ca {}: {e}", path.display())))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A Sentinel's address (`host:port` or a URL), and the user and password
/// its URL names.
fn sentinel_address(
    entry: &str,
) -> Result<(ConnectionAddr, Option<String>, Option<String>), CacheError> {
    let url = if entry.contains("://") {
        entry.to_string()
    } else {
        format!("redis://{entry}")
    };
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| CacheError::Store(format!("redis_sentinels {:?}: {e}", redacted(entry))))?;
    let settings = info.redis_settings();
    Ok((
        info.addr().clone(),
        settings.username().map(str::to_string),
        settings.password().map(str::to_string),
    ))
}

impl Source {
    /// The source `settings` name, and its name for log lines.
    pub(super) fn new(settings: &CacheSection) -> Result<(Self, String), CacheError> {
        let certificates = certificates(settings)?;
        if settings.redis_sentinels.is_empty() {
            let url = &settings.redis_url;
            let shown = redacted(url);
            let client = match certificates {
                Some(certificates) if url.starts_with("rediss://") => {
                    redis::Client::build_with_tls(url.as_str(), certificates)
                }
                _ => redis::Client::open(url.as_str()),
            }
            .map_err(|e| CacheError::Store(format!("redis_url {shown:?}: {e}")))?;
            return Ok((Source::Direct(client), shown));
        }
        let mut addresses = Vec::new();
        let (mut username, mut password) = (
            settings.redis_sentinel_username.clone(),
            settings.redis_sentinel_password.clone(),
        );
        for entry in &settings.redis_sentinels {
            let (address, user, pass) = sentinel_address(entry)?;
            username = username.or(user);
            password = password.or(pass);
            addresses.push(address);
        }
        let tls = addresses
            .iter()
            .any(|address| matches!(address, ConnectionAddr::TcpTls { .. }));
        let client =
            Self::sentinel_client(settings, addresses, username, password, tls, certificates)
                .map_err(|e| CacheError::Store(format!("redis_sentinels: {e}")))?;
        let shown: Vec<String> = settings
            .redis_sentinels
            .iter()
            .map(|s| redacted(s))
            .collect();
        Ok((
            Source::Sentinel(tokio::sync::Mutex::new(client)),
            format!(
                "sentinel/{}@{}",
                settings.redis_master_name,
                shown.join(",")
            ),
        ))
    }

    /// A client that asks the Sentinels at `addresses` for the master and
    /// logs in to both.
    fn sentinel_client(
        settings: &CacheSection,
        addresses: Vec<ConnectionAddr>,
        username: Option<String>,
        password: Option<String>,
        tls: bool,
        certificates: Option<TlsCertificates>,
    ) -> redis::RedisResult<SentinelClient> {
        let mut builder = SentinelClientBuilder::new(
            addresses,
            &settings.redis_master_name,
            SentinelServerType::Master,
        )?;
        if let Some(username) = username {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if let Some(username) = &settings.redis_master_username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &settings.redis_master_password {
            builder = builder.set_client_to_redis_password(password);
        }
        if tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certificates) = certificates {
                builder = builder
                    .set_client_to_sentinel_certificates(certificates.clone())
                    .set_client_to_redis_certificates(certificates);
            }
        }
        builder.build()
    }

    /// A connection to the server, or to the master the Sentinels name now.
    /// Its calls have no deadline of their own: the store sets each one's.
    pub(super) async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(None);
        match self {
            Source::Direct(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
            Source::Sentinel(sentinel) => {
                let master = sentinel.lock().await.async_get_client().await?;
                master
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("redis://:s3cret@10.0.0.1:6379/2"),
            "redis://:***@10.0.0.1:6379/2"
        );
        assert_eq!(
            redacted("rediss://doorman:p@ss:w@rd@redis.test"),
            "rediss://doorman:***@redis.test"
        );
        assert_eq!(
            redacted("redis://doorman@redis.test"),
            "redis://doorman@redis.test"
        );
        assert_eq!(redacted("127.0.0.1:26379"), "127.0.0.1:26379");
    }

    #[test]
    fn sentinel_addresses_carry_their_credentials() {
        let (address, user, password) = sentinel_address("127.0.0.1:26379").unwrap();
        assert!(matches!(address, ConnectionAddr::Tcp(ref host, 26379) if host == "127.0.0.1"));
        assert_eq!((user, password), (None, None));
        let (address, user, password) =
            sentinel_address("rediss://watcher:pw@sentinel.test:26380").unwrap();
        assert!(matches!(
            address,
            ConnectionAddr::TcpTls { port: 26380, .. }
        ));
        assert_eq!(user.as_deref(), Some("watcher"));
        assert_eq!(password.as_deref(), Some("pw"));
    }
}
