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
