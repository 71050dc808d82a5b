//! The docs name the current files: every backticked path of the repo in
//! the README, SECURITY.md, CONTRIBUTING.md, bench/README.md and docs/*.md
//! exists, a `file.rs::name` names a function of that file (of a folder:
//! of a file in it), and every test name the docs cite (a backticked
//! snake_case word of five parts or more) is a function in the tree.

use std::path::{Path, PathBuf};

/// The repo's top folders whose paths the docs name.
const ROOTS: [&str; 12] = [
    "src/",
    "plugins/",
    "tests/",
    "bench/",
    "config/",
    "docs/",
    "fixtures/",
    "scripts/",
    "fuzz/",
    "contrib/",
    "debian/",
    ".ci/",
];

/// Paths the docs name on purpose although the repo has none: made at run
/// time, or another project's.
const NOT_IN_THE_REPO: [(&str, &str); 3] = [
    (
        "config/doorman-cache.redb",
        "the pass cache the quick start makes",
    ),
    ("config/plugins", "Haraka's plugin list"),
    ("debian/rules", "the file the package does without"),
];

/// Names cited as what they are, not functions: Postfix's parameters and
/// doorman's metrics.
const NOT_FUNCTIONS: [&str; 3] = ["smtpd_", "postscreen_", "doorman_"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The docs that name files.
fn docs() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = [
        "README.md",
        "SECURITY.md",
        "CONTRIBUTING.md",
        "bench/README.md",
    ]
    .iter()
    .map(|name| root().join(name))
    .collect();
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// Each backticked span of `text`, with its line number.
fn spans(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            found.push((n + 1, inside.to_string()));
        }
    }
    found
}

/// Every `.rs` file under `dir` (or `dir` itself).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Whether a file among `files` has `fn name`.
fn defines(files: &[PathBuf], name: &str) -> bool {
    let wanted = format!("fn {name}(");
    let generic = format!("fn {name}<");
    files.iter().any(|file| {
        std::fs::read_to_string(file)
            .is_ok_and(|text| text.contains(&wanted) || text.contains(&generic))
    })
}

/// What is wrong with the path a span names, if it names one.
fn stale(span: &str) -> Option<String> {
    if span.contains(char::is_whitespace) || !ROOTS.iter().any(|r| span.starts_with(r)) {
        return None;
    }
    let (path, function) = match span.split_once("::") {
        Some((path, function)) => (path, Some(function)),
        None => (span, None),
    };
    let path = path.trim_end_matches('/');
    if NOT_IN_THE_REPO.iter().any(|(name, _)| *name == path) {
        return None;
    }
    let on_disk = root().join(path);
    if !on_disk.exists() {
        return Some(format!("{path} does not exist"));
    }
    match function {
        Some(name) if !defines(&rust_files(&on_disk), name) => {
            Some(format!("{path} has no fn {name}"))
        }
        _ => None,
    }
}

#[test]
fn every_repo_path_the_docs_name_exists() {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for doc in docs() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (line, span) in spans(&text) {
            if ROOTS.iter().any(|r| span.starts_with(r)) {
                checked += 1;
            }
            if let Some(why) = stale(&span) {
                wrong.push(format!("{}:{line}: {why}", doc.display()));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} paths found: is the scan broken?"
    );
    assert!(wrong.is_empty(), "stale paths:\n{}", wrong.join("\n"));
}

#[test]
fn every_test_the_docs_cite_is_a_function_in_the_tree() {
    let mut code = Vec::new();
    for dir in ["src", "tests", "plugins", "fuzz"] {
        code.extend(rust_files(&root().join(dir)));
    }
    let mut missing = Vec::new();
    let mut cited = 0;
    for doc in docs() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (line, span) in spans(&text) {
            let is_name = span.split('_').count() >= 5
                && span
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !is_name || NOT_FUNCTIONS.iter().any(|p| span.starts_with(p)) {
                continue;
            }
            cited += 1;
            if !defines(&code, &span) {
                missing.push(format!("{}:{line}: {span}", doc.display()));
            }
        }
    }
    assert!(
        cited > 5,
        "only {cited} test names found: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "no such function:\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_stale_path_is_caught() {
    assert_eq!(
        stale("src/session.rs"),
        Some("src/session.rs does not exist".to_string())
    );
    assert_eq!(
        stale("tests/it/pool.rs::no_such_test"),
        Some("tests/it/pool.rs has no fn no_such_test".to_string())
    );
    assert_eq!(stale("src/session/"), None);
    assert_eq!(
        stale("tests/it/lost_backend.rs::a_backend_lost_in_the_byte_copy_gets_the_client_a_421_at_every_stage"),
        None
    );
    assert_eq!(stale("config/plugins"), None, "Haraka's");
}
