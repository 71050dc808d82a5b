//! The configuration reference, generated from the section types: one row
//! per key (its section, its name, its default, its bounds, its meaning),
//! read from each type's JSON Schema (schemars). The meaning is the
//! field's doc comment, the default is serde's (as the file writes it),
//! the bounds are the ones the section's check enforces (see
//! `doorman_gate_api::schema`), and the allowed words of an enum are its
//! variants. The core's sections come from [`Sections`], every gate's from
//! the [`Registry`], so a key cannot exist without its row, and a field
//! without a doc comment is an error here ([`ReferenceError::Undocumented`]).
//!
//! `doorman config keys` prints [`markdown`]; `docs/configuration.md`
//! holds the same table (`scripts/reference` writes it, a test compares),
//! and `doorman.toml(5)` is built from that page.

use doorman_gate_api::schema::{format_duration, AT_MOST, DEFAULT_TEXT, DURATION_FORMAT};
use serde_json::{Map, Value};

use super::{Registry, Sections, SharedKeys};

/// One key of the configuration reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Its table as the file writes it (`[proxy]`, `[[backend]]`,
    /// `[cluster.NAME]`); empty for a key at the top of the file.
    pub section: String,
    /// The key.
    pub key: String,
    /// Its default as the file would write it (`"30s"`), `(required)`,
    /// `none`, or words for a computed default.
    pub default: String,
    /// What values it takes: its upper bound, its range, its words.
    pub bounds: String,
    /// What it means: the field's doc comment.
    pub meaning: String,
}

/// Why the reference cannot be generated.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// A key's field has no doc comment, which would be its meaning.
    #[error(
        "{0} has no doc comment: write one on its field, it is the key's meaning in the configuration reference"
    )]
    Undocumented(String),
    /// A schema names a definition it does not hold (a schemars bug, or a
    /// hand-written schema's).
    #[error("{place}: the schema refers to {reference}, which it does not define")]
    Unresolved {
        /// The key or section.
        place: String,
        /// The `$ref`.
        reference: String,
    },
}

/// Every key of the config file with `registry`'s gates: the top-level
/// keys first, then every section's (the core's, the gates', and the
/// shared resolver's keys in the gate table that holds them), sorted by
/// section and key.
pub fn rows(registry: &Registry) -> Result<Vec<Row>, ReferenceError> {
    let mut rows = Vec::new();
    let core = schemars::schema_for!(Sections);
    Walk::new(&core).table("", "", core.as_value(), &mut rows)?;
    let shared = schemars::schema_for!(SharedKeys);
    for (name, schema) in registry.schemas() {
        let heading = format!("[{name}]");
        Walk::new(&schema).table(&heading, name, schema.as_value(), &mut rows)?;
        if registry.resolver() == Some(name) {
            Walk::new(&shared).table(&heading, name, shared.as_value(), &mut rows)?;
        }
    }
    let order = |row: &Row| {
        (
            row.section.trim_matches(['[', ']']).to_string(),
            row.key.clone(),
        )
    };
    rows.sort_by_key(order);
    Ok(rows)
}

/// The reference as a markdown table, the way `doorman config keys`
/// prints it and `docs/configuration.md` holds it.
pub fn markdown(rows: &[Row]) -> String {
    let mut out =
        String::from("| section | key | default | bounds | meaning |\n|---|---|---|---|---|\n");
    for row in rows {
        let section = if row.section.is_empty() {
            String::new()
        } else {
            format!("`{}`", row.section)
        };
        let cells = [
            section,
            format!("`{}`", row.key),
            row.default.clone(),
            row.bounds.clone(),
            row.meaning.clone(),
        ];
        out.push('|');
        for cell in cells {
            out.push(' ');
            out.push_str(&cell.replace('|', "\\|"));
            out.push_str(" |");
        }
        out.push('\n');
    }
    out
}

/// What a key's schema describes.
enum Shape<'a> {
    /// A value.
    Key,
    /// A table of keys (`[a.b]`).
    Table(&'a Value),
    /// An array of tables (`[[a.b]]`).
    Tables(&'a Value),
    /// Tables by name (`[a.NAME]`).
    Named(&'a Value),
}

/// A walk through one root schema and its definitions.
struct Walk<'a> {
    definitions: Option<&'a Map<String, Value>>,
}

impl<'a> Walk<'a> {
    fn new(root: &'a schemars::Schema) -> Self {
        let definitions = root.get("$defs").and_then(Value::as_object);
        Self { definitions }
    }

    /// The rows of `table`'s keys, under `heading` (empty at the top of
    /// the file); `path` is its dotted name.
    fn table(
        &self,
        heading: &str,
        path: &str,
        table: &'a Value,
        rows: &mut Vec<Row>,
    ) -> Result<(), ReferenceError> {
        let required: Vec<&str> = table
            .get("required")
            .and_then(Value::as_array)
            .map(|keys| keys.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(properties) = table.get("properties").and_then(Value::as_object) else {
            return Ok(());
        };
        for (key, field) in properties {
            let place = format!("{heading} {key}").trim().to_string();
            let dotted = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let (nested, inner_path, kind) = match self.shape(&place, field)? {
                Shape::Key => {
                    rows.push(self.row(heading, key, field, required.contains(&key.as_str()))?);
                    continue;
                }
                Shape::Table(inner) => (format!("[{dotted}]"), dotted, (inner, "table")),
                Shape::Tables(inner) => (format!("[[{dotted}]]"), dotted, (inner, "tables")),
                Shape::Named(inner) => {
                    let named = format!("{dotted}.NAME");
                    (format!("[{named}]"), named, (inner, "tables"))
                }
            };
            // A table inside a section is a key of that section too.
            if !heading.is_empty() {
                let mut row = self.row(heading, key, field, required.contains(&key.as_str()))?;
                row.bounds = format!("{} `{nested}`", kind.1);
                rows.push(row);
            }
            self.table(&nested, &inner_path, kind.0, rows)?;
        }
        Ok(())
    }

    /// `schema` with its `$ref` followed and an `Option`'s null dropped.
    fn resolve(&self, place: &str, mut schema: &'a Value) -> Result<&'a Value, ReferenceError> {
        loop {
            if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
                let name = reference.trim_start_matches("#/$defs/");
                schema = self
                    .definitions
                    .and_then(|definitions| definitions.get(name))
                    .ok_or_else(|| ReferenceError::Unresolved {
                        place: place.to_string(),
                        reference: reference.to_string(),
                    })?;
                continue;
            }
            let not_null = schema
                .get("anyOf")
                .and_then(Value::as_array)
                .filter(|options| options.len() == 2)
                .and_then(|options| options.iter().find(|option| !is_null(option)));
            match not_null {
                Some(inner) => schema = inner,
                None => return Ok(schema),
            }
        }
    }

    fn shape(&self, place: &str, field: &'a Value) -> Result<Shape<'a>, ReferenceError> {
        let target = self.resolve(place, field)?;
        let table = |schema: &'a Value| -> Result<Option<&'a Value>, ReferenceError> {
            let inner = self.resolve(place, schema)?;
            Ok(inner.get("properties").is_some().then_some(inner))
        };
        if target.get("properties").is_some() {
            return Ok(Shape::Table(target));
        }
        if let Some(items) = target.get("items").filter(|items| items.is_object()) {
            if let Some(inner) = table(items)? {
                return Ok(Shape::Tables(inner));
            }
        }
        if let Some(values) = target
            .get("additionalProperties")
            .filter(|values| values.is_object())
        {
            if let Some(inner) = table(values)? {
                return Ok(Shape::Named(inner));
            }
        }
        Ok(Shape::Key)
    }

    fn row(
        &self,
        section: &str,
        key: &str,
        field: &'a Value,
        required: bool,
    ) -> Result<Row, ReferenceError> {
        let place = format!("{section} {key}").trim().to_string();
        let meaning = field
            .get("description")
            .and_then(Value::as_str)
            .map(meaning)
            .filter(|text| !text.is_empty())
            .ok_or_else(|| ReferenceError::Undocumented(place.clone()))?;
        let target = self.resolve(&place, field)?;
        let duration = [field, target]
            .iter()
            .any(|schema| schema.get("format").and_then(Value::as_str) == Some(DURATION_FORMAT));
        let default = match (
            field.get(DEFAULT_TEXT).and_then(Value::as_str),
            field.get("default"),
        ) {
            (Some(text), _) => text.to_string(),
            (None, Some(Value::Null)) | (None, None) if !required => "none".to_string(),
            (None, Some(value)) => format!("`{}`", toml_value(value, duration)),
            (None, None) => "(required)".to_string(),
        };
        Ok(Row {
            section: section.to_string(),
            key: key.to_string(),
            default,
            bounds: bounds(field, target),
            meaning,
        })
    }
}

fn is_null(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

/// A doc comment as one line of reference text: paragraphs joined, link
/// brackets (`` [`Type`] ``) dropped.
fn meaning(doc: &str) -> String {
    doc.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("[`", "`")
        .replace("`]", "`")
}

/// A default as the config file writes it.
fn toml_value(value: &Value, duration: bool) -> String {
    match value {
        Value::String(text) if duration => humantime::parse_duration(text).map_or_else(
            |_| format!("{text:?}"),
            |d| format!("{:?}", format_duration(d)),
        ),
        Value::String(text) => format!("{text:?}"),
        Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|item| toml_value(item, duration))
                .collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(key, item)| {
                    let duration = key == "ttl";
                    format!("{key} = {}", toml_value(item, duration))
                })
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
        other => other.to_string(),
    }
}

/// What values a key takes, as its schema says: a duration's bound, a
/// number's range (less what its type implies), an enum's words.
fn bounds(field: &Value, target: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(bound) = field.get(AT_MOST).and_then(Value::as_str) {
        parts.push(format!("at most `\"{bound}\"`"));
    }
    let format = target.get("format").and_then(Value::as_str).unwrap_or("");
    let number = |name: &str| {
        field
            .get(name)
            .or_else(|| target.get(name))
            .and_then(Value::as_f64)
    };
    let minimum = number("minimum").filter(|min| !(format.starts_with("uint") && *min == 0.0));
    let maximum = number("maximum").filter(|max| Some(*max) != implied_maximum(format));
    match (minimum, maximum) {
        (Some(min), Some(max)) => parts.push(format!("{min} to {max}")),
        (Some(min), None) => parts.push(format!("at least {min}")),
        (None, Some(max)) => parts.push(format!("at most {max}")),
        (None, None) => {}
    }
    let words = enum_words(target);
    if !words.is_empty() {
        let words: Vec<String> = words.iter().map(|word| format!("`{word}`")).collect();
        parts.push(format!("one of {}", words.join(", ")));
    }
    parts.join("; ")
}

/// The largest value of an integer format, which says nothing of a key.
fn implied_maximum(format: &str) -> Option<f64> {
    let bits: i32 = format.strip_prefix("uint")?.parse().ok()?;
    Some(2f64.powi(bits) - 1.0)
}

/// An enum's words, in the order of its variants.
fn enum_words(schema: &Value) -> Vec<String> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect();
    }
    let options = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array);
    options
        .into_iter()
        .flatten()
        .flat_map(|option| {
            let constant = option
                .get("const")
                .and_then(Value::as_str)
                .map(String::from);
            constant.into_iter().chain(enum_words(option))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_row_with_a_meaning() {
        let rows = rows(&Registry::standard()).unwrap();
        let find = |section: &str, key: &str| {
            rows.iter()
                .find(|row| row.section == section && row.key == key)
                .unwrap_or_else(|| panic!("no row for {section} {key}"))
        };
        assert_eq!(find("", "hostname").default, "(required)");
        let timeout = find("[proxy]", "timeout");
        assert_eq!(timeout.default, "`\"30s\"`");
        assert_eq!(timeout.bounds, "at most `\"5m\"`");
        assert_eq!(find("[greet]", "ttl").default, "`\"1d\"`");
        assert!(find("[[backend]]", "send_proxy")
            .bounds
            .contains("`received`"));
        assert_eq!(find("[limits]", "ipv4_prefix").bounds, "at most 32");
        assert_eq!(find("[dnsbl]", "min_ttl").default, "`\"1m\"`");
        assert_eq!(
            find("[deep_tests.pipelining]", "action").default,
            "`\"enforce\"`"
        );
        assert_eq!(
            find("[deep_tests.non_smtp_command]", "action").default,
            "`\"drop\"`"
        );
        assert!(find("[tls]", "certificate")
            .bounds
            .contains("`[[tls.certificate]]`"));
        assert_eq!(find("[[tls.certificate]]", "chain").default, "(required)");
        assert_eq!(find("[cluster.NAME]", "user_expire").default, "`\"15m\"`");
        assert!(rows.iter().all(|row| !row.meaning.is_empty()));
    }

    /// A section field without a doc comment fails the generation.
    #[test]
    fn a_field_without_a_doc_comment_is_an_error() {
        #[derive(schemars::JsonSchema)]
        #[allow(dead_code)]
        struct Section {
            /// Documented.
            documented: u32,
            bare: u32,
        }
        let schema = schemars::schema_for!(Section);
        let error = Walk::new(&schema)
            .table("[probe]", "probe", schema.as_value(), &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "[probe] bare has no doc comment: write one on its field, it is the key's meaning in the configuration reference"
        );
    }
}
