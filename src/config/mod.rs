//! doorman's configuration: the TOML file and the files it names.
//!
//! The file is read as a TOML document that knows where each key is
//! written (the `document` module). The core's sections are read into serde types
//! that refuse unknown keys, each gate's section into its own crate's type
//! through the [`Registry`]; every section checks itself next to its
//! definition, and every error names the file and the line, as
//! `FILE:LINE: what is wrong`. Paths in the file are relative to the folder
//! the config file is in. A loaded [`Config`] is an immutable snapshot: a
//! connection takes an `Arc` of it once. This module imports nothing from
//! the runtime.

mod admin;
mod bounds;
mod cache;
mod cluster;
mod defaults;
mod document;
mod engine;
mod hosts;
mod limits;
mod queries;
pub mod reference;
mod registry;
mod relay;
mod restart;
mod runtime;
mod screening;
mod sections;
mod source;
mod tls;
mod words;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use doorman_gate_api::SectionContext;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::deep::DeepTestsSection;
use bounds::{at_most, HumanDuration, YEAR};
use defaults::*;
use document::{split_off, Document, Table};
use source::read_file;

pub use admin::{AdminSection, MIN_TOKEN_LENGTH};
pub use cache::{CacheSection, CacheStore};
pub use cluster::{ClusterSection, RecipientKey};
pub use engine::*;
pub use hosts::ProxyHosts;
pub use limits::{LimitsSection, AGGREGATE_FACTOR};
pub use registry::{CheckedSection, Registry, BUILT_IN, DEFAULT_ORDER};
pub use relay::RelaySection;
pub use restart::RestartOnly;
pub use runtime::{RuntimeSection, ThreadModel, MAX_THREADS};
pub use screening::*;
pub use sections::*;
pub use tls::*;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read at all (the OS error is in the message).
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
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

/// The core's sections of the config file, as written and checked (paths
/// made absolute). The gates' sections are in [`Config::gate_sections`].
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sections {
    /// The name in doorman's own replies: one word of printable ASCII.
    pub hostname: String,
    /// The gates in the order a client meets them: `access`, `pregreet`,
    /// `dnsbl`, `rdns` (wait gates, their weights summed into one score),
    /// `deep`, `greylist`, `policy` (in the engine); each gate reads its
    /// own section.
    #[serde(default = "default_gates")]
    pub gates: Vec<String>,
    /// How long live sessions may go on after SIGTERM.
    #[serde(with = "humantime_serde", default = "default_shutdown_grace")]
    #[schemars(with = "HumanDuration", transform = at_most(bounds::HOUR))]
    pub shutdown_grace: Duration,
    /// The `[proxy]` section.
    #[serde(default)]
    pub proxy: ProxySection,
    /// The listeners, at least one.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// The backends, at least one, in the order they are tried.
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
    /// The routes to backend clusters, in order (the first match wins).
    #[serde(default, rename = "route")]
    #[schemars(with = "Vec<RouteConfig>")]
    pub routes: Vec<Route>,
    /// The `[cluster.NAME]` sections, by cluster name.
    #[serde(default, rename = "cluster")]
    pub clusters: std::collections::BTreeMap<String, ClusterSection>,
    /// The `[greet]` section.
    #[serde(default)]
    pub greet: GreetSection,
    /// The `[score]` section (with its old keys applied).
    #[serde(default)]
    pub score: ScoreSection,
    /// The core's keys in the table `Registry::resolver` names.
    #[serde(skip)]
    pub shared: SharedKeys,
    /// The `[cache]` section.
    #[serde(default)]
    pub cache: CacheSection,
    /// The `[engine]` section.
    #[serde(default)]
    pub engine: EngineSection,
    /// The `[log]` section.
    #[serde(default)]
    pub log: LogSection,
    /// The `[limits]` section.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The `[pool]` section.
    #[serde(default)]
    pub pool: PoolSection,
    /// The `[admin]` section.
    #[serde(default)]
    pub admin: AdminSection,
    /// The `[runtime]` section.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// The `[deep_tests]` section.
    #[serde(default)]
    pub deep_tests: DeepTestsSection,
    /// The `[relay]` section: relay mode's limits.
    #[serde(default)]
    pub relay: RelaySection,
    /// The `[tls]` section; `None`: the engine offers no STARTTLS of its
    /// own.
    pub tls: Option<TlsSection>,
}

/// A loaded, checked configuration: the sections as written, and what the
/// files they name hold.
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file this came from.
    pub path: PathBuf,
    /// The core's sections (a `Config` derefs to them).
    pub sections: Sections,
    /// The parsed `haproxy_hosts` list (empty when no file is named).
    pub proxy_hosts: ProxyHosts,
    /// The admin token read from `[admin] token_file`.
    pub admin_token: Option<String>,
    /// What gates may use from the rest of the config.
    pub context: SectionContext,
    /// The listed gates' checked sections, in the order they run.
    pub gate_sections: Vec<(&'static str, Arc<dyn CheckedSection>)>,
    /// A line for each deprecated key the file uses.
    pub deprecated: Vec<String>,
}

impl Deref for Config {
    type Target = Sections;

    fn deref(&self) -> &Sections {
        &self.sections
    }
}

/// The `threshold` of the gate the registry names as the one that says
/// when a client is doubtful (see `Registry::doubtful`): every gate that
/// acts on doubtful clients reads it through its `SectionContext`.
#[derive(Deserialize)]
struct Doubtful {
    #[serde(default = "default_doubtful")]
    threshold: i32,
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
        let document = Document::parse(text, path)?;
        let mut root = document.root();
        // The gates' tables go to the gates; the core keeps the resolver's
        // and the old score keys out of the table the registry names.
        let resolver = registry.resolver();
        let mut gate_tables: Vec<(&'static str, Table)> = Vec::new();
        let mut shared = None;
        for name in registry.names() {
            if let Some((_, mut table)) = root.get_mut().remove_entry(name) {
                if resolver == Some(name) {
                    shared = Some(split_off(&mut table, &SharedKeys::KEYS));
                }
                gate_tables.push((name, table));
            }
        }
        let score_written = root.get_ref().get("score").is_some();
        let mut sections: Sections = document
            .read_root(root)
            .map_err(|error| words::unknown_at_top(error, &document, registry))?;
        sections.shared = document.read_table(shared)?;
        sections.check(&document, registry)?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let loaded = sections.load(&document, base)?;
        let (score, deprecated) = sections
            .shared
            .score(score_written.then_some(sections.score))
            .map_err(|error| document.section_error(resolver.unwrap_or_default(), error))?;
        sections.score = score;
        let table = |name: &str| {
            gate_tables
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, table)| table.clone())
        };
        let doubtful: Doubtful = document.read_table(registry.doubtful().and_then(table))?;
        let context = SectionContext {
            hostname: sections.hostname.clone(),
            base: base.to_path_buf(),
            cache_size: sections.cache.size,
            resolver: sections.shared.resolver(),
            doubtful: doubtful.threshold,
        };
        let mut gate_sections = Vec::new();
        for name in registry.names() {
            let listed = sections.gates.iter().any(|gate| gate == name);
            let written = table(name);
            if !listed && written.is_none() {
                continue;
            }
            let check = listed.then_some(&context);
            let read = registry.read(name, document.deserializer(written), check);
            if let Some(result) = read {
                let section = result.map_err(|error| document.read_error(name, error))?;
                if listed {
                    gate_sections.push((name, section));
                }
            }
        }
        let order = |name: &str| sections.gates.iter().position(|gate| gate == name);
        gate_sections.sort_by_key(|(name, _)| order(name));
        Ok(Self {
            path: path.to_path_buf(),
            sections,
            proxy_hosts: loaded.proxy_hosts,
            admin_token: loaded.admin_token,
            context,
            gate_sections,
            deprecated,
        })
    }
}

/// What the files the core's sections name hold.
struct Loaded {
    proxy_hosts: ProxyHosts,
    admin_token: Option<String>,
}

impl Sections {
    /// Every section's own check, then what spans sections.
    fn check(&self, document: &Document, registry: &Registry) -> Result<(), ConfigError> {
        let at = |table: &'static str| move |error| document.section_error(table, error);
        let resolver = registry.resolver().unwrap_or_default();
        if self.hostname.is_empty()
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']')
        {
            return Err(document.error(
                &["hostname"],
                format!(
                    "hostname {:?} must be one word of printable ASCII",
                    self.hostname
                ),
            ));
        }
        registry
            .check(&self.gates)
            .map_err(|message| document.error(&["gates"], message))?;
        if self.shutdown_grace > bounds::HOUR {
            return Err(document.error(
                &["shutdown_grace"],
                doorman_gate_api::section::bound_message(
                    "shutdown_grace",
                    self.shutdown_grace,
                    bounds::HOUR,
                ),
            ));
        }
        self.proxy.check().map_err(at("proxy"))?;
        if self.listeners.is_empty() {
            return Err(document.error(&["listener"], "at least one [[listener]] is needed"));
        }
        if let Some(index) = self
            .listeners
            .iter()
            .position(|l| l.defer_accept && l.proxy != ProxyMode::Required)
        {
            // Other hosts speak SMTP, server first: they would wait for
            // their banner until the kernel gave up deferring.
            return Err(document.error(
                &["listener", &index.to_string(), "defer_accept"],
                "defer_accept needs proxy = \"required\" (other clients wait for the banner)",
            ));
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        if let Some(index) = self.listeners.iter().position(|l| l.defer_accept) {
            return Err(document.error(
                &["listener", &index.to_string(), "defer_accept"],
                "defer_accept is Linux's TCP_DEFER_ACCEPT, which this system lacks",
            ));
        }
        if self.backends.is_empty() {
            return Err(document.error(&["backend"], "at least one [[backend]] is needed"));
        }
        for (index, backend) in self.backends.iter().enumerate() {
            backend
                .check()
                .map_err(|error| document.section_error(&format!("backend.{index}"), error))?;
        }
        if let Some((index, message)) = relay::mixed_cluster(&self.backends) {
            return Err(document.error(&["backend", &index.to_string(), "send_proxy"], message));
        }
        if let Some(name) = relay::relay_by_recipient(&self.backends, &self.clusters) {
            return Err(document.error(
                &["cluster", name, "balance"],
                "a relay-mode cluster (send_proxy = \"received\") cannot be balanced by recipient",
            ));
        }
        for (index, route) in self.routes.iter().enumerate() {
            if !self.backends.iter().any(|b| b.cluster == route.cluster) {
                return Err(document.error(
                    &["route", &index.to_string()],
                    format!(
                        "route to cluster {:?}, which has no [[backend]]",
                        route.cluster
                    ),
                ));
            }
        }
        for (name, cluster) in &self.clusters {
            if !self.backends.iter().any(|b| &b.cluster == name) {
                return Err(document.error(
                    &["cluster", name],
                    format!("[cluster.{name}] names a cluster with no [[backend]]"),
                ));
            }
            // A cluster's name may be "" (the default cluster), so its
            // path is given part by part.
            cluster.check().map_err(|error| match error {
                doorman_gate_api::SectionError::Key { key, message } => {
                    document.error(&["cluster", name, &key], message)
                }
                other => document.section_error("cluster", other),
            })?;
        }
        self.greet.check().map_err(at("greet"))?;
        self.score.check().map_err(at("score"))?;
        self.shared.check().map_err(at(resolver))?;
        self.cache.check().map_err(at("cache"))?;
        self.engine.check().map_err(at("engine"))?;
        self.limits.check().map_err(at("limits"))?;
        self.pool.check().map_err(at("pool"))?;
        self.runtime.check().map_err(at("runtime"))?;
        self.relay.check().map_err(at("relay"))?;
        self.deep_tests.check(YEAR).map_err(at("deep_tests"))
    }

    /// Makes the paths absolute and reads the files the core's sections
    /// name.
    fn load(&mut self, document: &Document, base: &Path) -> Result<Loaded, ConfigError> {
        let proxy_hosts = match &self.proxy.hosts_file {
            Some(hosts_file) => {
                let resolved = base.join(hosts_file);
                let hosts = ProxyHosts::load(&resolved)
                    .map_err(|error| document.unreadable(&["proxy", "hosts_file"], error))?;
                self.proxy.hosts_file = Some(resolved);
                hosts
            }
            None => ProxyHosts::default(),
        };
        if proxy_hosts.is_empty() {
            if let Some(index) = self
                .listeners
                .iter()
                .position(|l| l.proxy == ProxyMode::Required)
            {
                return Err(document.error(
                    &["listener", &index.to_string(), "proxy"],
                    "a listener with proxy = \"required\" needs a non-empty hosts_file",
                ));
            }
        }
        self.cache.resolve(base);
        let admin_token = match &self.admin.token_file {
            Some(token_file) => {
                let resolved = base.join(token_file);
                let token = admin::read_token(&resolved)
                    .map_err(|error| document.unreadable(&["admin", "token_file"], error))?;
                self.admin.token_file = Some(resolved);
                Some(token)
            }
            None => None,
        };
        if let Some(tls) = &mut self.tls {
            tls.resolve(base, |index, key| {
                document.written_at(&["tls", "certificate", &index.to_string(), key])
            })
            .map_err(|error| document.section_error("tls", error))?;
        }
        for (index, backend) in self.backends.iter_mut().enumerate() {
            backend
                .resolve_tls(base)
                .map_err(|error| document.section_error(&format!("backend.{index}"), error))?;
        }
        Ok(Loaded {
            proxy_hosts,
            admin_token,
        })
    }
}

#[cfg(test)]
mod tests;
