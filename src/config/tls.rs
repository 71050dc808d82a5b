//! The `[tls]` section (STARTTLS in the built-in engine) and the
//! backends' TLS settings, as serde reads them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use doorman_gate_api::SectionError;

use super::bounds::{at_most, HumanDuration, TEN_MINUTES};
use super::{ClusterSection, SendProxy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The lowest TLS version the engine's STARTTLS accepts.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default; 1.0 and 1.1 are refused, as RFC 8996
    /// asks).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// One `[[tls.certificate]]`: a chain and its key, in PEM.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// A PEM certificate chain, leaf first. At least one
    /// `[[tls.certificate]]` is needed; SNI and signature schemes choose
    /// among them, the first is the default.
    pub chain: PathBuf,
    /// The chain's PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// Where `chain` is written in the config, for messages about it.
    #[serde(skip)]
    pub chain_at: Option<WrittenAt>,
    /// Where `key` is written in the config, for messages about it.
    #[serde(skip)]
    pub key_at: Option<WrittenAt>,
}

/// Where a key that names a file is written in the config file, so that a
/// message about that file can point at it as `FILE:LINE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenAt {
    /// The config file.
    pub config: PathBuf,
    /// The 1-based line of the key.
    pub line: usize,
}

impl WrittenAt {
    /// `doorman.toml:12: key = "/etc/doorman/mx.key": message`, for the
    /// key `key` naming `file`.
    pub fn says(&self, key: &str, file: &Path, message: &str) -> String {
        format!(
            "{}:{}: {key} = {:?}: {message}",
            self.config.display(),
            self.line,
            file.display().to_string()
        )
    }
}

/// The `[tls]` section: when present, the engine offers STARTTLS.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The lowest TLS version the engine's STARTTLS accepts (`"1.2"` or
    /// `"1.3"`).
    #[serde(default)]
    pub min_version: TlsVersion,
    /// How long a client may take over its handshake; above 0.
    #[serde(with = "humantime_serde", default = "default_handshake_timeout")]
    #[schemars(with = "HumanDuration", transform = at_most(TEN_MINUTES))]
    pub handshake_timeout: Duration,
    /// The certificates, chain and key; SNI chooses among them, the first
    /// is the default.
    #[serde(default, rename = "certificate")]
    #[schemars(extend("x-default" = "(at least one)"))]
    pub certificates: Vec<CertificateFiles>,
}

impl TlsSection {
    /// Checks the section and makes its paths relative to `base`; an error
    /// names the key to point at. `at` gives where a key of certificate
    /// `index` (`chain`, `key`) is written.
    pub(super) fn resolve(
        &mut self,
        base: &Path,
        at: impl Fn(usize, &str) -> WrittenAt,
    ) -> Result<(), SectionError> {
        if self.certificates.is_empty() {
            return Err(SectionError::key(
                "",
                "[tls] needs at least one [[tls.certificate]] (chain and key)",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(SectionError::key(
                "handshake_timeout",
                "tls handshake_timeout must be above 0",
            ));
        }
        SectionError::within("handshake_timeout", self.handshake_timeout, TEN_MINUTES)?;
        for (index, certificate) in self.certificates.iter_mut().enumerate() {
            certificate.chain = base.join(&certificate.chain);
            certificate.key = base.join(&certificate.key);
            certificate.chain_at = Some(at(index, "chain"));
            certificate.key_at = Some(at(index, "key"));
        }
        Ok(())
    }
}

impl super::BackendConfig {
    /// Checks the backend's TLS keys and makes its CA path relative to
    /// `base`.
    pub(super) fn resolve_tls(&mut self, base: &Path) -> Result<(), SectionError> {
        if let Some(ca) = &self.tls_ca_file {
            self.tls_ca_file = Some(base.join(ca));
        }
        if self.tls_verify && self.tls_ca_file.is_none() {
            return Err(SectionError::key(
                "tls_verify",
                format!("backend {}: tls_verify needs tls_ca_file", self.address),
            ));
        }
        Ok(())
    }
}

/// A minute: a real client finishes in milliseconds, and a silent one
/// holds a screening place until then.
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(60)
}

/// How doorman speaks to a backend when it hands over a client whose TLS
/// it terminated itself.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendTls {
    /// STARTTLS to the backend, so both legs are encrypted.
    Starttls,
    /// Plain text (a trusted network); a PROXY v2 header carries the
    /// client's TLS version and cipher in its SSL TLV.
    None,
}

impl super::Config {
    /// What `doorman check` and the start-up say when no `[tls]` is set
    /// and that costs something: clients whose conversation doorman reads
    /// (a gate judges their commands, named by the gate, their cluster is balanced by
    /// recipient, an XCLIENT backend trusts doorman, or relay mode) are offered no
    /// STARTTLS; otherwise a client that sends STARTTLS is handed to its
    /// backend at once and skips the deep tests that are on.
    pub fn starttls_warning(&self) -> Option<String> {
        if self.tls.is_some() {
            return None;
        }
        let mut read: Vec<&str> = self
            .gate_sections
            .iter()
            .filter(|(_, section)| section.judges_commands())
            .map(|(name, _)| *name)
            .collect();
        if self.clusters.values().any(ClusterSection::by_recipient) {
            read.push("routing by recipient");
        }
        if self
            .backends
            .iter()
            .any(|b| b.send_proxy == SendProxy::Xclient)
        {
            read.push("XCLIENT backends");
        }
        if self
            .backends
            .iter()
            .any(|b| b.send_proxy == SendProxy::Received)
        {
            read.push("relay mode");
        }
        if !read.is_empty() {
            return Some(format!(
                "no [tls] section: clients whose conversation doorman reads ({}) are not offered STARTTLS; add [tls] to offer it",
                read.join(", ")
            ));
        }
        self.deep_tests
            .enabled()
            .next()
            .is_some()
            .then(|| {
                "no [tls] section: clients that send STARTTLS are handed to a backend at once and skip the deep tests".to_string()
            })
    }
}
