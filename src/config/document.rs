//! The config file as a TOML document with the place of every key: split
//! into the core's part and each gate's table, deserialized part by part,
//! and every error turned into `FILE:LINE: message` from the spans. It
//! imports nothing from the runtime.

use std::path::Path;

use doorman_gate_api::SectionError;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, Deserializer, ValueDeserializer};
use toml::Spanned;

use super::registry::ReadError;
use super::ConfigError;

/// A table of the document, with its place.
pub(super) type Table<'t> = Spanned<DeValue<'t>>;

/// The parsed file: its text, its name, and every key's place.
pub(super) struct Document<'t> {
    text: &'t str,
    path: &'t Path,
    root: Spanned<DeTable<'t>>,
}

impl<'t> Document<'t> {
    /// Parses `text`; a syntax error names its line.
    pub fn parse(text: &'t str, path: &'t Path) -> Result<Self, ConfigError> {
        let document = Self {
            text,
            path,
            root: Spanned::new(0..0, DeTable::new()),
        };
        let root = DeTable::parse(text).map_err(|error| document.toml_error(error))?;
        Ok(Self { root, ..document })
    }

    /// Where the key at `at` is written, for messages about the file it
    /// names.
    pub fn written_at(&self, at: &[&str]) -> super::WrittenAt {
        super::WrittenAt {
            config: self.path.to_path_buf(),
            line: self.line(at),
        }
    }

    /// Whether `name` is a key (or table) at the top of the file.
    pub fn has_top_key(&self, name: &str) -> bool {
        self.root.get_ref().get(name).is_some()
    }

    /// A copy of the whole document, to take parts out of.
    pub fn root(&self) -> Spanned<DeTable<'t>> {
        self.root.clone()
    }

    /// Deserializes the core's part of the document.
    pub fn read_root<T: DeserializeOwned>(
        &self,
        root: Spanned<DeTable<'t>>,
    ) -> Result<T, ConfigError> {
        T::deserialize(Deserializer::from(root)).map_err(|error| self.toml_error(error))
    }

    /// Deserializes one table (an absent one as empty, so defaults apply).
    pub fn read_table<T: DeserializeOwned>(
        &self,
        table: Option<Table<'t>>,
    ) -> Result<T, ConfigError> {
        T::deserialize(self.deserializer(table)).map_err(|error| self.toml_error(error))
    }

    /// A deserializer of one table (an absent one as empty).
    pub fn deserializer(&self, table: Option<Table<'t>>) -> ValueDeserializer<'t> {
        ValueDeserializer::from(table.unwrap_or_else(empty_table))
    }

    /// The error of reading gate `name`'s section.
    pub fn read_error(&self, name: &str, error: ReadError) -> ConfigError {
        match error {
            ReadError::Toml(error) => self.toml_error(error),
            ReadError::Check(error) => self.section_error(name, error),
        }
    }

    /// The error of a section's check, in section `table` (dotted for an
    /// entry of an array of tables: `backend.2`).
    pub fn section_error(&self, table: &str, error: SectionError) -> ConfigError {
        match error {
            SectionError::Key { key, message } => {
                let at: Vec<&str> = table
                    .split('.')
                    .chain(key.split('.'))
                    .filter(|part| !part.is_empty())
                    .collect();
                self.error(&at, message)
            }
            SectionError::File {
                path,
                line,
                message,
            } => ConfigError::Invalid {
                path,
                line,
                message,
            },
        }
    }

    /// `message` at the key `at` (table names, keys and array indexes).
    pub fn error(&self, at: &[&str], message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: self.line(at),
            message: message.into(),
        }
    }

    /// `error`, from reading a file the key `at` names.
    pub fn unreadable(&self, at: &[&str], error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Read { path: file, error } => self.error(
                at,
                format!(
                    "{} = {:?}: cannot read: {error}",
                    at.last().copied().unwrap_or_default(),
                    file.display().to_string()
                ),
            ),
            other => other,
        }
    }

    /// The 1-based line of the key at `at`; of the nearest table around it
    /// when it is not written; 1 for the top level.
    pub fn line(&self, at: &[&str]) -> usize {
        let mut offset = 0;
        let mut table = self.root.get_ref();
        let mut value: Option<&Spanned<DeValue<'t>>> = None;
        for part in at {
            let next = match value.map(Spanned::get_ref) {
                Some(DeValue::Array(array)) => {
                    part.parse::<usize>().ok().and_then(|i| array.get(i))
                }
                Some(DeValue::Table(inner)) => {
                    table = inner;
                    table.get(*part)
                }
                None => table.get(*part),
                Some(_) => None,
            };
            let Some(next) = next else { break };
            offset = key_offset(table, part).unwrap_or(next.span().start);
            value = Some(next);
        }
        line_of(self.text, offset)
    }

    /// A TOML or serde error at its span, with the line it names.
    fn toml_error(&self, error: toml::de::Error) -> ConfigError {
        let line = error
            .span()
            .map_or(1, |span| line_of(self.text, span.start));
        // The line itself names the key and the value refused.
        let written = self.text.lines().nth(line - 1).unwrap_or_default().trim();
        let message = error.message().trim_end();
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            message: format!(
                "{}: {message}{}",
                crate::log::escape(written.as_bytes(), 200),
                hint(message).unwrap_or_default()
            ),
        }
    }
}

/// What the valid form is, for the serde errors that do not say it.
fn hint(message: &str) -> Option<&'static str> {
    if message.contains("invalid socket address syntax") {
        Some(": expected IP:PORT, e.g. 127.0.0.1:2525 or [::1]:2525 (an IPv6 address in brackets)")
    } else if message.contains("expected a duration") {
        Some(": a duration is a number with its unit, e.g. \"6s\", \"500ms\", \"5m\", \"1h\", \"30d\"")
    } else {
        None
    }
}

/// Where `key` is written in `table`, when it is a key of it.
fn key_offset(table: &DeTable<'_>, key: &str) -> Option<usize> {
    table
        .iter()
        .find(|(name, _)| name.get_ref() == key)
        .map(|(name, _)| name.span().start)
}

/// An empty table, for a section the file does not have.
fn empty_table<'t>() -> Table<'t> {
    Spanned::new(0..0, DeValue::Table(DeTable::new()))
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Takes the keys `keys` out of table `value` into a table of their own
/// (the core's keys of a table it shares with a gate).
pub(super) fn split_off<'t>(value: &mut Table<'t>, keys: &[&str]) -> Table<'t> {
    let mut taken = DeTable::new();
    if let DeValue::Table(table) = value.get_mut() {
        for key in keys {
            if let Some((name, entry)) = table.remove_entry(*key) {
                taken.insert(name, entry);
            }
        }
    }
    Spanned::new(value.span(), DeValue::Table(taken))
}
