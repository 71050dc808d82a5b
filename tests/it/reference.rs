//! The configuration reference cannot drift: its table is generated from
//! the config types (`doorman config keys`, `doorman::config::reference`),
//! `docs/configuration.md` (the page `doorman.toml(5)` is built from) holds
//! exactly that table, every key of the shipped config has a row, every
//! key serde reads has one, and every duration bound the table shows is
//! the one the loader enforces.

use std::path::Path;

use doorman::config::reference::{self, Row};
use doorman::config::Registry;

/// Prose in the shipped config's comments that reads like a key.
const NOT_KEYS: [(&str, &str); 2] = [
    ("engine", "smtpd_forbid_bare_newline"),
    ("route", "balance"),
];

/// The marker line after which `docs/configuration.md` holds the table.
const MARKER: &str = "<!-- The table below is generated from the config types by `doorman config keys`; run scripts/reference to rewrite it. -->";

fn rows() -> Vec<Row> {
    reference::rows(&Registry::standard()).expect("the reference generates")
}

/// `[[backend]]` and `[backend]` alike: the table's dotted name.
fn bare(section: &str) -> &str {
    section.trim_matches(['[', ']'])
}

#[test]
fn the_reference_page_holds_the_generated_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let generated = reference::markdown(&rows());
    let table = page
        .split_once(MARKER)
        .map(|(_, table)| table.trim_start_matches('\n'));
    assert!(
        table == Some(generated.as_str()),
        "docs/configuration.md does not hold the table `doorman config keys` prints \
         (the config types changed): run scripts/reference to rewrite it"
    );
}

#[test]
fn every_key_of_the_shipped_config_has_a_row_in_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("config/doorman.toml")).unwrap();
    let rows = rows();
    let mut section = String::new();
    let mut missing = Vec::new();
    for line in config.lines() {
        let bare_line = line.trim_start_matches('#').trim();
        if bare_line.starts_with('[') && bare_line.ends_with(']') && !bare_line.contains(' ') {
            section = bare(bare_line).to_string();
            // A cluster's section is written with its name.
            if section.starts_with("cluster.") {
                section = "cluster.NAME".to_string();
            }
            continue;
        }
        let Some((key, _)) = bare_line.split_once(" = ") else {
            continue;
        };
        if !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || NOT_KEYS.contains(&(section.as_str(), key))
        {
            continue;
        }
        if !rows
            .iter()
            .any(|row| bare(&row.section) == section && row.key == key)
        {
            missing.push(format!("[{section}] {key}"));
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "keys of config/doorman.toml with no row in the reference: {missing:?}"
    );
}

/// The README's move from postscreen is a whole config that `doorman
/// check` accepts as it is written.
#[test]
fn the_readmes_postscreen_example_is_a_config_doorman_accepts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = &readme[readme
        .find("### Worked example: moving from postscreen")
        .expect("the worked example")..];
    let start = example.find("```toml\n").expect("its config") + 8;
    let config = &example[start..start + example[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("doorman.toml"), config).unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "192.0.2.1\n").unwrap();
    std::fs::write(dir.path().join("access"), "192.0.2.0/24 permit\n").unwrap();
    let out = std::process::Command::new(crate::support::doorman_bin())
        .args(["check", "--config"])
        .arg(dir.path().join("doorman.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The field names a section type reads, as its `Deserialize` asks for
/// them (a deserializer that records `deserialize_struct`'s fields).
fn fields<T: serde::de::DeserializeOwned>() -> Vec<&'static str> {
    use serde::de::{value::Error, Deserializer, Visitor};
    struct Fields<'a>(&'a mut Vec<&'static str>);
    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(serde::de::Error::custom("fields only"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0.extend_from_slice(fields);
            Err(serde::de::Error::custom("fields only"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut found = Vec::new();
    let _ = T::deserialize(Fields(&mut found));
    found
}

/// Every key serde reads has a row: the schemas agree with the
/// `Deserialize` impls (the deep tests' schema is written by hand, and a
/// `#[schemars(skip)]` would drop a key).
#[test]
fn every_key_serde_reads_has_a_row() {
    use doorman::config::*;
    let rows = rows();
    let sections: Vec<(&str, Vec<&str>)> = vec![
        ("", fields::<Sections>()),
        ("proxy", fields::<ProxySection>()),
        ("listener", fields::<ListenerConfig>()),
        ("backend", fields::<BackendConfig>()),
        ("route", fields::<RouteConfig>()),
        ("cluster.NAME", fields::<ClusterSection>()),
        ("pool", fields::<PoolSection>()),
        ("greet", fields::<GreetSection>()),
        ("score", fields::<ScoreSection>()),
        ("dnsbl", fields::<SharedKeys>()),
        ("cache", fields::<CacheSection>()),
        ("engine", fields::<EngineSection>()),
        ("relay", fields::<RelaySection>()),
        ("limits", fields::<LimitsSection>()),
        ("admin", fields::<AdminSection>()),
        ("log", fields::<LogSection>()),
        ("runtime", fields::<RuntimeSection>()),
        ("deep_tests", fields::<doorman::deep::DeepTestsSection>()),
        ("tls", fields::<TlsSection>()),
        ("tls.certificate", fields::<CertificateFiles>()),
        ("access", fields::<doorman_access::AccessSection>()),
        ("dnsbl", fields::<doorman_dnsbl::DnsblSection>()),
        ("rdns", fields::<doorman_rdns::RdnsSection>()),
        ("greylist", fields::<doorman_greylist::Settings>()),
        ("policy", fields::<doorman_policy::PolicySection>()),
    ];
    let tests: Vec<String> = doorman::deep::DeepTest::ALL
        .iter()
        .map(|test| format!("deep_tests.{}", test.name()))
        .collect();
    let mut sections = sections;
    for test in &tests {
        sections.push((test, fields::<doorman::deep::DeepTestConfig>()));
    }
    // Every table of the reference is in the list above, so a new section
    // type or gate cannot skip this check by not being listed.
    let mut unlisted: Vec<&str> = rows
        .iter()
        .map(|row| bare(&row.section))
        .filter(|name| !sections.iter().any(|(listed, _)| listed == name))
        .collect();
    unlisted.dedup();
    assert!(
        unlisted.is_empty(),
        "tables of the reference whose section type is not listed here: {unlisted:?}"
    );
    let mut missing = Vec::new();
    for (section, keys) in &sections {
        assert!(!keys.is_empty(), "no fields read for [{section}]");
        for key in keys {
            let row = |row: &Row| bare(&row.section) == *section && row.key == *key;
            // A section of the file is a table of rows of its own.
            let table = |row: &Row| {
                let dotted = if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                };
                let name = bare(&row.section);
                name == dotted || name == format!("{dotted}.NAME")
            };
            if !rows.iter().any(|r| row(r) || table(r)) {
                missing.push(format!("[{section}] {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys serde reads with no row in the reference: {missing:?}"
    );
}

/// A config that loads, for [`every_duration_bound_in_the_reference_is_enforced`]:
/// its top-level lines and its tables, each with its lines.
fn base_config() -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let top = vec![
        "hostname = \"mx.doorman.test\"".to_string(),
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"rdns\", \"deep\", \"greylist\", \"policy\"]"
            .to_string(),
    ];
    let tables = [
        ("[[listener]]", "address = \"127.0.0.1:0\""),
        ("[[backend]]", "address = \"127.0.0.1:2526\""),
        ("[policy]", "address = \"127.0.0.1:10023\""),
    ];
    let tables = tables
        .iter()
        .map(|(name, line)| (name.to_string(), vec![line.to_string()]))
        .collect();
    (top, tables)
}

/// Every duration bound the reference shows (`at most "5m"`) is the one
/// the loader enforces: a value one second above it is refused, naming
/// the bound, at the key's line.
#[test]
fn every_duration_bound_in_the_reference_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doorman.toml");
    let mut checked = 0;
    for row in rows() {
        let Some(bound) = row
            .bounds
            .split_once("at most `\"")
            .and_then(|(_, rest)| rest.split_once("\"`"))
            .map(|(bound, _)| bound.to_string())
        else {
            continue;
        };
        let above = humantime::parse_duration(&bound).unwrap() + std::time::Duration::from_secs(1);
        let mut line = format!("{} = \"{}s\"", row.key, above.as_secs());
        if row.key == "min_ttl" {
            // min_ttl above max_ttl is refused for that first.
            line = format!("{line}\nmax_ttl = \"{}s\"", above.as_secs());
        }
        let (mut top, mut tables) = base_config();
        if row.section.is_empty() {
            top.push(line);
        } else {
            match tables.iter_mut().find(|(name, _)| *name == row.section) {
                Some((_, lines)) => lines.push(line),
                None => tables.push((row.section.replace("NAME", "\"\""), vec![line])),
            }
            if row.section == "[tls]" {
                let certificate = "chain = \"chain.pem\"\nkey = \"key.pem\"".to_string();
                tables.push(("[[tls.certificate]]".into(), vec![certificate]));
            }
        }
        let mut text = top.join("\n") + "\n";
        for (name, lines) in tables {
            text += &format!("{name}\n{}\n", lines.join("\n"));
        }
        let refused = doorman::config::Config::parse(&text, &path)
            .map(|_| ())
            .expect_err(&format!(
                "{} {} above {bound}:\n{text}",
                row.section, row.key
            ));
        let message = refused.to_string();
        assert!(
            message.contains("at most") && message.contains(&format!("{} = ", row.key)),
            "{} {}: {message}",
            row.section,
            row.key
        );
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} bounds checked");
}

/// `doorman config keys` prints the generated table.
#[test]
fn config_keys_prints_the_reference() {
    let out = std::process::Command::new(crate::support::doorman_bin())
        .args(["config", "keys"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        reference::markdown(&rows())
    );
}
