//! The gates a build knows: each name with its section type, and which
//! gate's table holds what several gates share (the doubtful score's
//! threshold, the resolver's keys), so the core names no gate. The config
//! reads and checks each listed gate's section through it; the runtime
//! builds the gates from the checked sections. Adding a gate touches its
//! crate, one line of [`Registry::standard`] and `Cargo.toml`. This module
//! imports nothing from the runtime.

use std::fmt;
use std::sync::Arc;

use doorman_gate_api::{BuildError, Gate, GateSection, Resources, SectionContext, SectionError};
use toml::de::ValueDeserializer;

/// The session's own tests, listed and ordered like gates.
pub const BUILT_IN: [&str; 2] = ["pregreet", "deep"];

/// The gate order when the config names none: postscreen's.
pub const DEFAULT_ORDER: [&str; 4] = ["access", "pregreet", "dnsbl", "deep"];

/// A gate's section, read and checked: what the runtime builds the gate
/// from.
pub trait CheckedSection: fmt::Debug + Send + Sync {
    /// Builds the gate; `None` when the section leaves it nothing to do.
    fn build(
        &self,
        shared: &SectionContext,
        resources: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError>;

    /// Whether the gate judges commands (see `GateSection::judges_commands`).
    fn judges_commands(&self) -> bool;
}

impl<S: GateSection> CheckedSection for S {
    fn build(
        &self,
        shared: &SectionContext,
        resources: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError> {
        GateSection::build(self, shared, resources)
    }

    fn judges_commands(&self) -> bool {
        GateSection::judges_commands(self)
    }
}

/// Why a section could not be read.
pub(super) enum ReadError {
    /// Its TOML does not fit the section's type.
    Toml(toml::de::Error),
    /// Its check refused it.
    Check(SectionError),
}

/// Reads a section of one type, and checks it when `Some`.
type Reader = fn(
    ValueDeserializer<'_>,
    Option<&SectionContext>,
) -> Result<Arc<dyn CheckedSection>, ReadError>;

fn read<S: GateSection>(
    table: ValueDeserializer<'_>,
    check: Option<&SectionContext>,
) -> Result<Arc<dyn CheckedSection>, ReadError> {
    let mut section: S = serde::Deserialize::deserialize(table).map_err(ReadError::Toml)?;
    if let Some(shared) = check {
        section.check(shared).map_err(ReadError::Check)?;
    }
    Ok(Arc::new(section))
}

/// The JSON Schema of a section type, for the configuration reference.
type SchemaOf = fn() -> schemars::Schema;

fn schema<S: GateSection>() -> schemars::Schema {
    schemars::schema_for!(S)
}

/// Gate names and their section types.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<(&'static str, Reader, SchemaOf)>,
    /// The gate whose section's `threshold` says when a client is
    /// doubtful, for every gate that acts on doubtful clients.
    doubtful: Option<&'static str>,
    /// The gate whose table also holds the keys every DNS gate shares (the
    /// resolver) and the old names of `[score]`'s keys, which the core
    /// reads out of it.
    resolver: Option<&'static str>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(name, ..)| name))
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::standard()
    }
}

impl Registry {
    /// Every gate doorman ships.
    pub fn standard() -> Self {
        Self {
            entries: Vec::new(),
            doubtful: Some("greylist"),
            resolver: Some("dnsbl"),
        }
        .with::<doorman_access::AccessSection>("access")
        .with::<doorman_dnsbl::DnsblSection>("dnsbl")
        .with::<doorman_rdns::RdnsSection>("rdns")
        .with::<doorman_greylist::Settings>("greylist")
        .with::<doorman_policy::PolicySection>("policy")
    }

    /// This registry with one more gate, configured by the `[name]`
    /// section of type `S` (for a build with a gate of its own, and the
    /// tests).
    pub fn with<S: GateSection>(mut self, name: &'static str) -> Self {
        self.entries.push((name, read::<S>, schema::<S>));
        self
    }

    /// The gate whose section's `threshold` says when a client is
    /// doubtful (greylisting's, in the standard registry).
    pub fn doubtful(&self) -> Option<&'static str> {
        self.doubtful
    }

    /// The gate whose table holds the shared resolver's keys and the old
    /// names of `[score]`'s keys (DNSBL's, in the standard registry, where
    /// postscreen's operators look for them).
    pub fn resolver(&self) -> Option<&'static str> {
        self.resolver
    }

    /// Whether `name` is a gate (or one of the session's own tests).
    pub fn knows(&self, name: &str) -> bool {
        BUILT_IN.contains(&name) || self.entries.iter().any(|(known, ..)| *known == name)
    }

    /// The gates' names, in the order they were registered.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|(name, ..)| *name)
    }

    /// Each gate's name with its section's JSON Schema, in the order they
    /// were registered: the gates' part of the configuration reference.
    pub fn schemas(&self) -> impl Iterator<Item = (&'static str, schemars::Schema)> + '_ {
        self.entries
            .iter()
            .map(|(name, _, schema)| (*name, schema()))
    }

    /// Reads gate `name`'s section from `table`, and checks it when
    /// `check` is `Some` (a gate not listed has its keys read, so a typo
    /// is refused, but nothing checked).
    pub(super) fn read(
        &self,
        name: &str,
        table: ValueDeserializer<'_>,
        check: Option<&SectionContext>,
    ) -> Option<Result<Arc<dyn CheckedSection>, ReadError>> {
        let (_, reader, _) = self.entries.iter().find(|(known, ..)| *known == name)?;
        Some(reader(table, check))
    }

    /// Every name in `gates` must be known, and listed once.
    pub(super) fn check(&self, gates: &[String]) -> Result<(), String> {
        for (index, name) in gates.iter().enumerate() {
            if !self.knows(name) {
                let known: Vec<&str> = self.names().chain(BUILT_IN).collect();
                let meant = super::words::closest(name, &known)
                    .map(|meant| format!(" (did you mean {meant:?}?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown gate {name:?}{meant}: the gates are {}",
                    super::words::list(&known)
                ));
            }
            if gates[..index].contains(name) {
                return Err(format!("gate {name:?} is listed twice"));
            }
        }
        Ok(())
    }
}
