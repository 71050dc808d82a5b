//! doorman's configuration: the TOML file and the files it names.
//!
//! The file is read into serde types that refuse unknown keys, then checked
//! as a whole. Every error names the file and the line, as
//! `FILE:LINE: what is wrong`. Paths in the file are relative to the folder
//! the config file is in. A loaded [`Config`] is an immutable snapshot: a
//! connection takes an `Arc` of it once.

mod bounds;
mod hosts;
mod screening;
mod sections;
mod source;
mod tls;

use crate::gates::{Registry, BUILT_IN, DEFAULT_ORDER};
use source::{line_in_table, line_of, line_of_key, read_file};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use doorman_access::AccessList;
use doorman_dnsbl::Site;
use serde::Deserialize;

pub use hosts::ProxyHosts;
pub use screening::*;
pub use sections::*;
pub use tls::*;

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

/// The config file as written.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    hostname: String,
    #[serde(default = "default_gates")]
    gates: Vec<String>,
    #[serde(with = "humantime_serde", default = "default_shutdown_grace")]
    shutdown_grace: Duration,
    #[serde(default)]
    proxy: ProxySection,
    #[serde(default, rename = "listener")]
    listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "backend")]
    backends: Vec<BackendConfig>,
    #[serde(default, rename = "route")]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    access: AccessSection,
    #[serde(default)]
    greet: GreetSection,
    #[serde(default)]
    dnsbl: DnsblSection,
    #[serde(default)]
    rdns: RdnsSection,
    #[serde(default)]
    greylist: GreylistSection,
    #[serde(default)]
    policy: PolicySection,
    #[serde(default)]
    cache: CacheSection,
    #[serde(default)]
    engine: EngineSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    pool: PoolSection,
    #[serde(default)]
    admin: AdminSection,
    #[serde(default)]
    deep_tests: DeepTestsSection,
    #[serde(default)]
    tls: Option<TlsSection>,
}

/// A loaded, checked configuration with the files it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The config file this came from.
    pub path: PathBuf,
    /// The name doorman uses in its own replies.
    pub hostname: String,
    /// The gates, in the order they run (names a [`Registry`] knows).
    pub gates: Vec<String>,
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
    /// The routes to backend clusters, in order (the first match wins).
    pub routes: Vec<Route>,
    /// The `[access]` section.
    pub access: AccessSection,
    /// The parsed access list, when `[access] file` names one.
    pub access_list: Option<AccessList>,
    /// The `[greet]` section.
    pub greet: GreetSection,
    /// The `[dnsbl]` section.
    pub dnsbl: DnsblSection,
    /// The `[rdns]` section.
    pub rdns: RdnsSection,
    /// The `[greylist]` section.
    pub greylist: GreylistSection,
    /// The `[policy]` section.
    pub policy: PolicySection,
    /// The parsed DNSBL sites.
    pub dnsbl_sites: Vec<Site>,
    /// The `[cache]` section.
    pub cache: CacheSection,
    /// The `[engine]` section.
    pub engine: EngineSection,
    /// The `[log]` section.
    pub log: LogSection,
    /// The `[limits]` section.
    pub limits: LimitsSection,
    /// The `[pool]` section.
    pub pool: PoolSection,
    /// The `[admin]` section.
    pub admin: AdminSection,
    /// The admin token read from `[admin] token_file`.
    pub admin_token: Option<String>,
    /// The `[deep_tests]` section.
    pub deep_tests: DeepTestsSection,
    /// The `[tls]` section, paths resolved; `None`: the engine offers no
    /// STARTTLS of its own.
    pub tls: Option<TlsSection>,
}

impl Config {
    /// The teaser text: `[greet] banner`, or `<hostname> ESMTP` when unset.
    /// Empty means no teaser and no pregreet test.
    pub fn greet_banner(&self) -> String {
        self.greet
            .banner
            .clone()
            .unwrap_or_else(|| format!("{} ESMTP", self.hostname))
    }

    /// The cluster a client that connected to `destination` on `listener`
    /// goes to: the first matching route's, else the default (`""`).
    pub fn cluster_for(&self, destination: SocketAddr, listener: SocketAddr) -> &str {
        self.routes
            .iter()
            .find(|route| route.matches(destination, listener))
            .map_or("", |route| route.cluster.as_str())
    }

    /// The shortest TTL of any test, enabled or not (postscreen's
    /// `psc_min_ttl`): how long an ignored deep-test failure counts as a
    /// pass, so the test comes back when something else expires.
    pub fn shortest_ttl(&self) -> Duration {
        let deep = &self.deep_tests;
        [
            self.greet.ttl,
            self.dnsbl.min_ttl,
            deep.pipelining.ttl(),
            deep.non_smtp_command.ttl(),
            deep.bare_newline.ttl(),
        ]
        .into_iter()
        .min()
        .unwrap_or_default()
    }
}

impl Config {
    /// What a client that sends STARTTLS skips when no `[tls]` is set (it
    /// is handed to the backend at its STARTTLS): the engine's gates and
    /// deep tests that are on. Empty when `[tls]` is set.
    pub fn skipped_by_starttls(&self) -> Vec<&'static str> {
        if self.tls.is_some() {
            return Vec::new();
        }
        let deep = &self.deep_tests;
        let mut skipped = Vec::new();
        if self.gates.iter().any(|gate| gate == "greylist") {
            skipped.push("greylisting");
        }
        if self.gates.iter().any(|gate| gate == "policy") {
            skipped.push("the policy service");
        }
        if [&deep.pipelining, &deep.non_smtp_command, &deep.bare_newline]
            .iter()
            .any(|test| test.enable)
        {
            skipped.push("the deep tests");
        }
        skipped
    }
}

impl Config {
    /// Reads, parses and checks the config file at `path` and every file it
    /// names, with the gates doorman ships.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &Registry::standard())
    }

    /// As [`Config::load`], with the gates `registry` knows.
    pub fn load_with(path: &Path, registry: &Registry) -> Result<Self, ConfigError> {
        Self::parse_with(&read_file(path)?, path, registry)
    }

    /// Parses and checks config text; `path` names the file in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with(text, path, &Registry::standard())
    }

    /// As [`Config::parse`], with the gates `registry` knows.
    pub fn parse_with(text: &str, path: &Path, registry: &Registry) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| {
            let line = error
                .span()
                .map(|span| line_of(text, span.start))
                .unwrap_or(1);
            // The line itself names the key and the value refused.
            let written = text.lines().nth(line - 1).unwrap_or_default().trim();
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                message: format!(
                    "{}: {}",
                    crate::log::escape(written.as_bytes(), 200),
                    error.message().trim_end()
                ),
            }
        })?;
        // A file the config names that cannot be read: where it is named.
        let unreadable = |table: &str, key: &str, error: ConfigError| match error {
            ConfigError::Read { path: file, source } => ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_in_table(text, table, key),
                message: format!(
                    "{key} = {:?}: cannot read: {source}",
                    file.display().to_string()
                ),
            },
            other => other,
        };
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
        check_gates(&file.gates, registry).map_err(|message| invalid("gates", message))?;
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
        if let Some((table, key, value, bound)) = bounds::exceeded(&bounds::durations(&file)) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_in_table(text, table, key),
                message: format!(
                    "{key}{} = {:?}: at most {:?} (the configuration reference lists every bound)",
                    if table == "deep_tests" { " ttl" } else { "" },
                    humantime::format_duration(value).to_string(),
                    humantime::format_duration(bound).to_string()
                ),
            });
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut proxy = file.proxy;
        let proxy_hosts = match &proxy.hosts_file {
            Some(hosts_file) => {
                let resolved = base.join(hosts_file);
                let hosts = ProxyHosts::load(&resolved)
                    .map_err(|error| unreadable("proxy", "hosts_file", error))?;
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
        if let Some(banner) = &file.greet.banner {
            if banner.bytes().any(|b| b.is_ascii_control()) {
                return Err(invalid(
                    "banner",
                    "banner must not hold control characters".into(),
                ));
            }
        }
        if file.greet.wait.is_zero() && file.greet.banner.as_deref() != Some("") {
            return Err(invalid(
                "wait",
                "greet wait must be above 0 (set banner = \"\" to turn the pregreet test off)"
                    .into(),
            ));
        }
        if file.limits.ipv4_prefix > 32 || file.limits.ipv6_prefix > 128 {
            return Err(invalid(
                "[limits]",
                "ipv4_prefix must be at most 32 and ipv6_prefix at most 128".into(),
            ));
        }
        if file.greylist.ipv4_prefix > 32
            || file.greylist.ipv6_prefix > 128
            || file.greylist.text.bytes().any(|b| b.is_ascii_control())
        {
            return Err(invalid(
                "[greylist]",
                "ipv4_prefix must be at most 32, ipv6_prefix at most 128, and text one line".into(),
            ));
        }
        if file.gates.iter().any(|gate| gate == "policy") && file.policy.address.is_none() {
            return Err(invalid(
                "[policy]",
                "the policy gate needs [policy] address (\"host:port\" or \"unix:/path\")".into(),
            ));
        }
        if doorman_policy::protocol::meaning(&file.policy.default_action).is_none()
            || file.policy.timeout.is_zero()
        {
            return Err(invalid(
                "default_action",
                format!(
                    "policy default_action {:?} is no access(5) action, or timeout is 0",
                    file.policy.default_action
                ),
            ));
        }
        if file.engine.command_limit == 0 || file.engine.line_length < 16 {
            return Err(invalid(
                "[engine]",
                "command_limit must be above 0 and line_length at least 16".into(),
            ));
        }
        if file.pool.check_interval.is_zero() || file.pool.rise == 0 || file.pool.fall == 0 {
            return Err(invalid(
                "[pool]",
                "check_interval, rise and fall must be above 0".into(),
            ));
        }
        if file.dnsbl.min_ttl > file.dnsbl.max_ttl {
            return Err(invalid("min_ttl", "dnsbl min_ttl is above max_ttl".into()));
        }
        if file.dnsbl.allowlist_threshold > 0 {
            return Err(invalid(
                "allowlist_threshold",
                "allowlist_threshold must be 0 (off) or negative".into(),
            ));
        }
        let mut dnsbl_sites = Vec::new();
        for entry in &file.dnsbl.sites {
            let site = Site::parse(entry).map_err(|error| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of_key(text, entry),
                message: error.to_string(),
            })?;
            dnsbl_sites.push(site);
        }
        if file.cache.flush_interval.is_zero() || file.cache.redis_timeout.is_zero() {
            return Err(invalid(
                "[cache]",
                "flush_interval and redis_timeout must be above 0".into(),
            ));
        }
        let mut cache = file.cache;
        cache.path = base.join(&cache.path);
        let mut access = file.access;
        let access_list = match &access.file {
            Some(table) => {
                let resolved = base.join(table);
                let text =
                    read_file(&resolved).map_err(|error| unreadable("access", "file", error))?;
                let list = AccessList::parse(&text, &resolved, access.action.into()).map_err(
                    |doorman_access::AccessError::Syntax {
                         path,
                         line,
                         message,
                     }| ConfigError::Invalid {
                        path,
                        line,
                        message,
                    },
                )?;
                access.file = Some(resolved);
                Some(list)
            }
            None => None,
        };
        let mut routes = Vec::with_capacity(file.routes.len());
        for route in &file.routes {
            let parsed = Route::parse(route).map_err(|message| invalid("[[route]]", message))?;
            if !file.backends.iter().any(|b| b.cluster == parsed.cluster) {
                return Err(invalid(
                    "[[route]]",
                    format!(
                        "route to cluster {:?}, which has no [[backend]]",
                        parsed.cluster
                    ),
                ));
            }
            routes.push(parsed);
        }
        let mut admin = file.admin;
        let admin_token = match &admin.token_file {
            Some(token_file) => {
                let resolved = base.join(token_file);
                let token = read_file(&resolved)
                    .map_err(|error| unreadable("admin", "token_file", error))?
                    .trim()
                    .to_string();
                if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(ConfigError::Invalid {
                        path: resolved,
                        line: 1,
                        message: "the admin token must be one word of printable ASCII".into(),
                    });
                }
                admin.token_file = Some(resolved);
                Some(token)
            }
            None => None,
        };
        let mut tls = file.tls;
        if let Some(tls) = &mut tls {
            tls.resolve(base)
                .map_err(|(key, message)| invalid(key, message))?;
        }
        let mut backends = file.backends;
        for backend in &mut backends {
            backend
                .resolve_tls(base)
                .map_err(|(key, message)| invalid(key, message))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            hostname: file.hostname,
            gates: file.gates,
            shutdown_grace: file.shutdown_grace,
            proxy,
            proxy_hosts,
            listeners: file.listeners,
            backends,
            routes,
            access,
            access_list,
            greet: file.greet,
            dnsbl: file.dnsbl,
            rdns: file.rdns,
            greylist: file.greylist,
            policy: file.policy,
            dnsbl_sites,
            cache,
            engine: file.engine,
            log: file.log,
            limits: file.limits,
            pool: file.pool,
            admin,
            admin_token,
            deep_tests: file.deep_tests,
            tls,
        })
    }
}

fn default_gates() -> Vec<String> {
    DEFAULT_ORDER.iter().map(ToString::to_string).collect()
}

/// Every name in `gates` must be known, and listed once.
fn check_gates(gates: &[String], registry: &Registry) -> Result<(), String> {
    for (index, name) in gates.iter().enumerate() {
        if !registry.knows(name) {
            return Err(format!(
                "unknown gate {name:?} (known: {registry:?} and {BUILT_IN:?})"
            ));
        }
        if gates[..index].contains(name) {
            return Err(format!("gate {name:?} is listed twice"));
        }
    }
    Ok(())
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
        assert_eq!(config.greet_banner(), "mx.test ESMTP");
        assert_eq!(config.greet.wait, Duration::from_secs(6));
        assert_eq!(config.greet.ttl, Duration::from_secs(86400));
        assert_eq!(config.dnsbl.threshold, 1);
        assert_eq!(config.dnsbl.min_ttl, Duration::from_secs(60));
        assert_eq!(config.dnsbl.max_ttl, Duration::from_secs(3600));
        assert_eq!(config.cache.size, 100_000);
        assert_eq!(config.engine.command_limit, 20);
        assert_eq!(config.engine.line_length, 2048);
        assert!(config.access_list.is_none() && config.dnsbl_sites.is_empty());
    }

    #[test]
    fn gating_sections() {
        let text = format!(
            "{MINIMAL}[greet]\nbanner = \"\"\naction = \"drop\"\n[dnsbl]\nsites = [\"zen.test=127.0.0.[2..11]*3\", \"wl.test*-2\"]\nallowlist_threshold = -1\nnameservers = [\"127.0.0.1:5300\"]\nreply_map = {{ \"zen.test\" = \"zen.example\" }}\n"
        );
        let config = Config::parse(&text, Path::new("d.toml")).expect("ok");
        assert_eq!(config.greet_banner(), "");
        assert_eq!(config.greet.action, ActionName::Drop);
        assert_eq!(config.dnsbl_sites.len(), 2);
        assert_eq!(config.dnsbl_sites[1].weight, -2);
        assert_eq!(config.dnsbl.reply_map["zen.test"], "zen.example");
        let bad = text.replace("*-2", "*two");
        let shown = Config::parse(&bad, Path::new("d.toml"))
            .expect_err("bad site")
            .to_string();
        assert!(
            shown.starts_with("d.toml:10: bad DNSBL weight factor"),
            "{shown}"
        );
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
