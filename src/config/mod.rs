//! doorman's configuration: the TOML file and the files it names.
//!
//! The file is read into serde types that refuse unknown keys, then checked
//! as a whole. Every error names the file and the line, as
//! `FILE:LINE: what is wrong`. Paths in the file are relative to the folder
//! the config file is in. A loaded [`Config`] is an immutable snapshot: a
//! connection takes an `Arc` of it once.

mod hosts;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use hosts::ProxyHosts;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read at all.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file was read but something in it is wrong.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Whether a listener takes PROXY headers, and from whom.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// Listed hosts must send a PROXY header; other hosts speak SMTP directly
    /// (Haraka's rule).
    #[default]
    Optional,
    /// Only listed hosts may connect at all; others are closed at once.
    Required,
}

/// What doorman sends a backend before the client's bytes.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SendProxy {
    /// A PROXY protocol v2 (binary) header.
    #[default]
    V2,
    /// A PROXY protocol v1 (text) line.
    V1,
    /// Nothing: the backend sees doorman as the client.
    None,
}

/// The `[proxy]` section.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// The `haproxy_hosts` file, relative to the config file's folder.
    pub hosts_file: Option<PathBuf>,
    /// How long a listed host may take to send its whole header.
    #[serde(with = "humantime_serde", default = "default_proxy_timeout")]
    pub timeout: Duration,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            hosts_file: None,
            timeout: default_proxy_timeout(),
        }
    }
}

/// One `[[listener]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address to listen on; port 0 picks a free port.
    pub address: SocketAddr,
    /// Who may (or must) send a PROXY header here.
    #[serde(default)]
    pub proxy: ProxyMode,
}

/// One `[[backend]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The smtpd to hand clients to.
    pub address: SocketAddr,
    /// How the backend learns the real client.
    #[serde(default)]
    pub send_proxy: SendProxy,
    /// How long a connection attempt may take.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
}

/// The config file as written.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    hostname: String,
    #[serde(with = "humantime_serde", default = "default_shutdown_grace")]
    shutdown_grace: Duration,
    #[serde(default)]
    proxy: ProxySection,
    #[serde(default, rename = "listener")]
    listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "backend")]
    backends: Vec<BackendConfig>,
}

/// A loaded, checked configuration with the files it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The config file this came from.
    pub path: PathBuf,
    /// The name doorman uses in its own replies.
    pub hostname: String,
    /// How long live sessions may go on after SIGTERM.
    pub shutdown_grace: Duration,
    /// The `[proxy]` section.
    pub proxy: ProxySection,
    /// The parsed `haproxy_hosts` list (empty when no file is named).
    pub proxy_hosts: ProxyHosts,
    /// The listeners, at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The backends, at least one, in the order they are tried.
    pub backends: Vec<BackendConfig>,
}

impl Config {
    /// Reads, parses and checks the config file at `path` and every file it
    /// names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `path` names the file in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: error
                .span()
                .map(|span| line_of(text, span.start))
                .unwrap_or(1),
            message: error.message().to_string(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of_key(text, key),
            message,
        };
        if file.hostname.is_empty()
            || !file
                .hostname
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']')
        {
            return Err(invalid(
                "hostname",
                format!(
                    "hostname {:?} must be one word of printable ASCII",
                    file.hostname
                ),
            ));
        }
        if file.proxy.timeout.is_zero() {
            return Err(invalid("timeout", "proxy timeout must be above 0".into()));
        }
        if file.listeners.is_empty() {
            return Err(invalid(
                "[[listener]]",
                "at least one [[listener]] is needed".into(),
            ));
        }
        if file.backends.is_empty() {
            return Err(invalid(
                "[[backend]]",
                "at least one [[backend]] is needed".into(),
            ));
        }
        if let Some(backend) = file.backends.iter().find(|b| b.connect_timeout.is_zero()) {
            return Err(invalid(
                "connect_timeout",
                format!(
                    "backend {}: connect_timeout must be above 0",
                    backend.address
                ),
            ));
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut proxy = file.proxy;
        let proxy_hosts = match &proxy.hosts_file {
            Some(hosts_file) => {
                let resolved = base.join(hosts_file);
                let hosts = ProxyHosts::load(&resolved)?;
                proxy.hosts_file = Some(resolved);
                hosts
            }
            None => ProxyHosts::default(),
        };
        if proxy_hosts.is_empty()
            && file
                .listeners
                .iter()
                .any(|l| l.proxy == ProxyMode::Required)
        {
            return Err(invalid(
                "required",
                "a listener with proxy = \"required\" needs a non-empty hosts_file".into(),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            hostname: file.hostname,
            shutdown_grace: file.shutdown_grace,
            proxy,
            proxy_hosts,
            listeners: file.listeners,
            backends: file.backends,
        })
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The first line that mentions `key`, for checks that run after parsing.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| line.split('#').next().unwrap_or_default().contains(key))
        .map_or(1, |index| index + 1)
}

fn default_proxy_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:10026\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(MINIMAL, Path::new("/etc/doorman/doorman.toml")).expect("ok");
        assert_eq!(config.proxy.timeout, Duration::from_secs(30));
        assert_eq!(config.backends[0].send_proxy, SendProxy::V2);
        assert_eq!(config.backends[0].connect_timeout, Duration::from_secs(5));
        assert_eq!(config.listeners[0].proxy, ProxyMode::Optional);
        assert!(config.proxy_hosts.is_empty());
    }

    #[test]
    fn errors_carry_file_and_line() {
        let text = format!("{MINIMAL}send_proxy = \"v3\"\n");
        let error = Config::parse(&text, Path::new("d.toml")).expect_err("bad value");
        let shown = error.to_string();
        assert!(shown.starts_with("d.toml:6: "), "{shown}");
        assert!(shown.contains("v3"), "{shown}");

        let text = MINIMAL.replace("[[backend]]", "bogus = 1\n[[backend]]");
        let shown = Config::parse(&text, Path::new("d.toml"))
            .expect_err("unknown key")
            .to_string();
        assert!(shown.starts_with("d.toml:4: "), "{shown}");
        assert!(shown.contains("bogus"), "{shown}");

        let text = MINIMAL.replace("\"mx.test\"", "\"mx test\"");
        let shown = Config::parse(&text, Path::new("d.toml"))
            .expect_err("bad hostname")
            .to_string();
        assert!(shown.starts_with("d.toml:1: "), "{shown}");
    }

    #[test]
    fn durations_and_modes() {
        let text = "hostname = \"h\"\n[proxy]\ntimeout = \"1500ms\"\n[[listener]]\naddress = \"[::1]:2525\"\nproxy = \"optional\"\n[[backend]]\naddress = \"127.0.0.1:1\"\nsend_proxy = \"none\"\nconnect_timeout = \"2s\"\n";
        let config = Config::parse(text, Path::new("x.toml")).expect("ok");
        assert_eq!(config.proxy.timeout, Duration::from_millis(1500));
        assert_eq!(config.backends[0].send_proxy, SendProxy::None);
        assert_eq!(config.listeners[0].address, "[::1]:2525".parse().unwrap());
    }

    #[test]
    fn required_mode_needs_hosts() {
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:0\"",
            "address = \"127.0.0.1:0\"\nproxy = \"required\"",
        );
        let shown = Config::parse(&text, Path::new("d.toml"))
            .expect_err("needs hosts")
            .to_string();
        assert!(shown.contains("hosts_file"), "{shown}");
    }
}
