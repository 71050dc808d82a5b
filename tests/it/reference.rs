//! The configuration reference cannot drift: every key of the shipped
//! config (set or commented out) has a row in `docs/configuration.md`, the
//! page `doorman.toml(5)` is built from.

use std::path::Path;

/// Prose in the shipped config's comments that reads like a key.
const NOT_KEYS: [(&str, &str); 2] = [
    ("engine", "smtpd_forbid_bare_newline"),
    ("route", "balance"),
];

#[test]
fn every_key_of_the_shipped_config_has_a_row_in_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("config/doorman.toml")).unwrap();
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let rows: Vec<&str> = reference
        .lines()
        .filter(|line| line.starts_with("| `"))
        .collect();
    let mut section = String::new();
    let mut missing = Vec::new();
    for line in config.lines() {
        let bare = line.trim_start_matches('#').trim();
        if bare.starts_with('[') && bare.ends_with(']') && !bare.contains(' ') {
            section = bare.trim_matches(['[', ']']).to_string();
            // A cluster's section is written with its name.
            if section.starts_with("cluster.") {
                section = "cluster.NAME".to_string();
            }
            continue;
        }
        let Some((key, _)) = bare.split_once(" = ") else {
            continue;
        };
        if !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || NOT_KEYS.contains(&(section.as_str(), key))
        {
            continue;
        }
        let named = |row: &&str| {
            let first = row.split('|').nth(1).unwrap_or_default();
            let in_section = if section.is_empty() {
                !first.contains("`[")
            } else {
                first.contains(&format!("`[{section}]"))
                    || first.contains(&format!("`[[{section}]]"))
            };
            in_section
                && (first.contains(&format!("`{key}`")) || first.contains(&format!(" {key}`")))
        };
        if !rows.iter().any(named) {
            missing.push(format!("[{section}] {key}"));
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "keys of config/doorman.toml with no row in docs/configuration.md: {missing:?}"
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

/// Every key of every section type, shipped config or not, has a row in
/// the reference: a key cannot exist without its documentation.
#[test]
fn every_key_of_every_section_type_has_a_row_in_the_reference() {
    use doorman::config::*;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let rows: Vec<&str> = reference
        .lines()
        .filter(|line| line.starts_with("| `"))
        .collect();
    let sections: Vec<(&str, Vec<&str>)> = vec![
        ("proxy", fields::<ProxySection>()),
        ("[listener]", fields::<ListenerConfig>()),
        ("[backend]", fields::<BackendConfig>()),
        ("[route]", fields::<RouteConfig>()),
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
        ("tls", fields::<TlsSection>()),
        ("[tls.certificate]", fields::<CertificateFiles>()),
        ("access", fields::<doorman_access::AccessSection>()),
        ("dnsbl", fields::<doorman_dnsbl::DnsblSection>()),
        ("rdns", fields::<doorman_rdns::RdnsSection>()),
        ("greylist", fields::<doorman_greylist::Settings>()),
        ("policy", fields::<doorman_policy::PolicySection>()),
    ];
    let mut missing = Vec::new();
    for (section, keys) in &sections {
        assert!(!keys.is_empty(), "no fields read for [{section}]");
        for key in keys {
            // `[tls] certificate` is the `[[tls.certificate]]` table;
            // `[dnsbl]`'s old score keys are listed under `[score]`.
            if (*section == "tls" && *key == "certificate")
                || (*section == "dnsbl"
                    && ["threshold", "allowlist_threshold", "action"].contains(key))
            {
                continue;
            }
            let heading = format!("`[{section}]");
            let named = rows.iter().any(|row| {
                let first = row.split('|').nth(1).unwrap_or_default();
                first.contains(&heading)
                    && (first.contains(&format!("`{key}`")) || first.contains(&format!(" {key}`")))
            });
            if !named {
                missing.push(format!("[{section}] {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys with no row in docs/configuration.md: {missing:?}"
    );
}
