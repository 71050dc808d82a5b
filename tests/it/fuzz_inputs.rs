//! Every fuzz seed, corpus entry and regression input, replayed through the
//! fuzz targets' entry points as ordinary tests (`fuzz/README.md`).

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 8] = [
    ("proxy_header", doorman::fuzzing::proxy_header),
    ("smtp_engine", doorman::fuzzing::smtp_engine),
    ("smtp_body", doorman::fuzzing::smtp_body),
    ("smtp_address", doorman::fuzzing::smtp_address),
    ("dnsbl_sites", doorman::fuzzing::dnsbl_sites),
    ("access_table", doorman::fuzzing::access_table),
    ("haproxy_hosts", doorman::fuzzing::haproxy_hosts),
    ("config", doorman::fuzzing::config),
];

/// Runs `target` on every file under `fuzz/<kind>/<name>/`; returns how many.
fn replay(kind: &str, name: &str, target: Target) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries.flatten() {
        // A running fuzzer may remove corpus entries as it shrinks them.
        let Ok(data) = std::fs::read(entry.path()) else {
            continue;
        };
        target(&data);
        count += 1;
    }
    count
}

#[test]
fn seeds_corpora_and_regressions_replay_cleanly() {
    for (name, target) in TARGETS {
        let seeds = replay("seeds", name, target);
        assert!(seeds > 0, "no seeds for {name}");
        let corpus = replay("corpus", name, target);
        assert!(corpus > 0, "no committed corpus for {name}");
        replay("regressions", name, target);
    }
}
