//! Client text in log lines, checked in the sources: every value a log
//! call (`info!`, `warn!`, `error!`, `debug!`, `trace!`) in `src/` and
//! `plugins/*/src` formats must go through the one escaping function
//! (`crate::log::escape`, or the gate API's `printable`, and the helpers
//! built on them), or be a value listed below as safe, with the reason.
//! A new log call that formats a HELO name, an address, a command, PROXY
//! input, a backend's reply, a PTR name or a policy service's answer raw
//! fails here; so does a new name nobody has judged yet.

use std::path::{Path, PathBuf};

/// Calls that escape what they are given (or build their line from
/// escaped parts).
const ESCAPING: &[&str] = &["escape(", "printable(", "one_line(", "smtpd_reject_line("];

/// Values a log line may format as they are: typed values (addresses,
/// networks, numbers, durations) and doorman's own words (constants, the
/// config). Each is (the value, or its root name before `.`/`(`; why).
const SAFE: &[(&str, &str)] = &[
    // Typed values: no client can put a byte of its choice in them.
    ("address", "a SocketAddr or an Ipv4Addr answer"),
    ("backend", "a backend's SocketAddr"),
    ("backends", "a number"),
    ("client", "a SocketAddr or an Endpoint"),
    ("connections", "a number"),
    ("count", "a number"),
    ("cut", "a number"),
    ("dropped", "a number"),
    ("grace", "a Duration"),
    ("index", "a number"),
    ("ip", "an IpAddr"),
    ("live", "a number"),
    ("network", "an IpNet"),
    ("next", "a backend's SocketAddr"),
    ("now", "a number"),
    ("offered", "a number"),
    ("peak", "a number"),
    ("rank", "a number"),
    ("remembered", "a backend's SocketAddr"),
    ("retained", "a number"),
    ("retries", "a number"),
    ("waited", "a number of seconds"),
    ("skipped", "a DNS budget refusal: doorman's own words"),
    ("weights", "configured weights"),
    ("input.len()", "a length"),
    ("delivery.size", "a length"),
    ("seconds", "a Duration, formatted"),
    ("summary", "a TlsSummary: protocol, cipher and group names"),
    (
        "whatsup",
        "a Whatsup, whose Display escapes its sender, recipient and HELO",
    ),
    // doorman's own words: literals, matched constants and the config.
    ("describe", "a backend state in doorman's words"),
    ("state", "a backend state in doorman's words"),
    ("verdict", "\"accept\" or \"reject\""),
    ("refused.proto", "SMTP or ESMTP"),
    ("by", "an Endpoint, as text"),
    ("cluster", "a cluster name from the config"),
    ("ended", "smtpd's words for where a handshake ended"),
    ("gates", "gate names from the config"),
    ("limit", "an engine limit's name"),
    ("line", "a deprecation notice about the config"),
    ("path", "the config file's path"),
    ("stage", "a stage name doorman passes (a constant)"),
    ("store", "a cache store's name"),
    ("test", "a deep test's log name (static)"),
    ("verb", "a verb doorman matched (static)"),
    ("what", "a config key that needs a restart"),
    ("why", "doorman's words, with an Endpoint"),
    ("warning", "a warning about the config"),
    ("zone", "a DNSBL zone from the config"),
    (
        "detail",
        "a deep test's detail, built with escape in src/deep",
    ),
    ("self.name()", "a cache store's name"),
    (
        "self.settings.address",
        "a policy service's configured address",
    ),
    ("self.settings.max_records_per_network", "a number"),
    ("self.network(client.ip())", "an IpNet"),
    (
        "error",
        "errors of doorman's own sockets, files, stores and config; one that \
         carries client or remote text (PROXY, TLS, backends, DNS, policy) is escaped",
    ),
];

/// One value a log call formats, where it is.
#[derive(Debug, PartialEq)]
struct Raw {
    at: String,
    value: String,
}

#[test]
fn every_log_call_escapes_client_text() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for plugin in std::fs::read_dir(root.join("plugins")).unwrap() {
        rust_files(&plugin.unwrap().path().join("src"), &mut files);
    }
    assert!(files.len() > 50, "found {} files", files.len());
    let mut raw = Vec::new();
    let mut calls = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(root).unwrap().display().to_string();
        calls += unescaped(&name, &text, &mut raw);
    }
    assert!(calls > 80, "found {calls} log calls");
    assert!(
        raw.is_empty(),
        "log calls format values that are not escaped nor known safe (escape them with \
         crate::log::escape or doorman_gate_api::printable, or add a typed value to SAFE \
         with the reason):\n{raw:#?}"
    );
}

#[test]
fn the_scan_catches_raw_client_text() {
    let mut raw = Vec::new();
    let source = r#"
        fn f() {
            tracing::info!("helo {helo} from {}", Endpoint(client));
            warn!("to=<{}> {}", recipient, escape(reply, 100));
            info!("ok {} {count}", printable(sender));
        }
    "#;
    assert_eq!(unescaped("x.rs", source, &mut raw), 3);
    let values: Vec<&str> = raw.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(values, ["helo", "recipient"]);
    assert_eq!(raw[0].at, "x.rs:3");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Adds the values of `text`'s log calls that are neither escaped nor
/// safe to `raw`; how many log calls there are.
fn unescaped(name: &str, text: &str, raw: &mut Vec<Raw>) -> usize {
    let mut calls = 0;
    for macro_name in ["info!", "warn!", "error!", "debug!", "trace!"] {
        for (start, _) in text.match_indices(macro_name) {
            let before = text[..start].chars().next_back().unwrap_or(' ');
            if before.is_alphanumeric() || before == '_' {
                continue;
            }
            let rest = text[start + macro_name.len()..].trim_start();
            let Some(body) = rest.strip_prefix('(').and_then(balanced) else {
                continue;
            };
            calls += 1;
            let line = text[..start].matches('\n').count() + 1;
            let arguments = split_top_level(body);
            let Some((format, values)) = arguments.split_first() else {
                continue;
            };
            let inline = inline_names(format);
            for value in inline
                .iter()
                .map(String::as_str)
                .chain(values.iter().map(|v| v.trim()))
            {
                if !is_fine(value) {
                    raw.push(Raw {
                        at: format!("{name}:{line}"),
                        value: value.to_string(),
                    });
                }
            }
        }
    }
    calls
}

/// Whether a formatted value is escaped or known safe.
fn is_fine(value: &str) -> bool {
    let value = value.trim();
    if ESCAPING.iter().any(|call| value.contains(call))
        || value.starts_with("Endpoint(")
        || value.ends_with(".endpoint()")
        // A choice between literals.
        || value.starts_with("if ")
        || value.starts_with("match ")
    {
        return true;
    }
    let root = value
        .split(['.', '(', ':'])
        .next()
        .unwrap_or(value)
        .trim_start_matches('&');
    SAFE.iter()
        .any(|(safe, _)| *safe == value || (!safe.contains(['.', '(']) && *safe == root))
}

/// The text up to the `)` that closes an opened `(`, skipping strings.
fn balanced(text: &str) -> Option<&str> {
    let mut depth = 1;
    let mut chars = text.char_indices();
    let mut in_string = false;
    while let Some((index, c)) = chars.next() {
        match c {
            '\\' if in_string => {
                chars.next();
            }
            '"' => in_string = !in_string,
            '(' | '[' | '{' if !in_string => depth += 1,
            ')' | ']' | '}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[..index]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The macro's arguments, split at the commas outside brackets and strings.
fn split_top_level(body: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut depth, mut in_string, mut escaped) = (0, false, false);
    for c in body.chars() {
        if in_string {
            in_string = escaped || c != '"';
            escaped = !escaped && c == '\\';
        } else {
            match c {
                '"' => in_string = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(String::new());
                    continue;
                }
                _ => {}
            }
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
        .into_iter()
        .map(|part| part.trim().to_string())
        .filter(|part| !part.is_empty())
        .collect()
}

/// The names a format string captures inline: `{name}`, `{name:?}`.
fn inline_names(format: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            continue;
        }
        let end = rest.find('}').unwrap_or(rest.len());
        let name = rest[..end].split(':').next().unwrap_or_default();
        if name.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            names.push(name.to_string());
        }
        rest = &rest[end..];
    }
    names
}
