//! Names in messages: a list in words, and the name an operator most
//! likely meant when a section, key or gate is misspelt. It imports
//! nothing from the runtime.

use super::document::Document;
use super::{ConfigError, Registry};

/// `a`, `a and b`, `a, b and c`.
pub(super) fn list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [only] => (*only).to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The candidate closest to `word`, when one is within two edits of it
/// (a typo, not another word).
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| (distance(word, candidate), *candidate))
        .filter(|(edits, _)| *edits <= 2 && *edits < word.len())
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, candidate)| candidate)
}

/// The Levenshtein distance between `a` and `b`, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, left) in a.chars().enumerate() {
        let mut row = vec![i + 1];
        for (j, right) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(left != *right);
            row.push(substitute.min(previous[j + 1] + 1).min(row[j] + 1));
        }
        previous = row;
    }
    previous[b.len()]
}

/// A key or section at the top of the file that the core does not know
/// (serde's `unknown field` error, which lists the core's names): the
/// gates' sections are named too, and the likely one when it is a typo.
pub(super) fn unknown_at_top(
    error: ConfigError,
    document: &Document<'_>,
    registry: &Registry,
) -> ConfigError {
    let ConfigError::Invalid {
        path,
        line,
        mut message,
    } = error
    else {
        return error;
    };
    let unknown = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name.to_string());
    if let Some(unknown) = unknown.filter(|name| document.has_top_key(name)) {
        let core: Vec<&str> = message
            .split_once("expected one of ")
            .map_or("", |(_, names)| names)
            .split(['`', ',', ' '])
            .filter(|name| !name.is_empty())
            .collect();
        if core.contains(&"hostname") {
            let gates: Vec<&str> = registry
                .names()
                .filter(|name| !core.contains(name))
                .collect();
            let all: Vec<&str> = core.iter().copied().chain(gates.iter().copied()).collect();
            let meant = closest(&unknown, &all)
                .map(|meant| format!(" (did you mean `{meant}`?)"))
                .unwrap_or_default();
            let gates: Vec<String> = gates.iter().map(|gate| format!("`{gate}`")).collect();
            message = format!(
                "{message}, or a gate's section: {}{meant}",
                gates.join(", ")
            );
        }
    }
    ConfigError::Invalid {
        path,
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_as_words() {
        assert_eq!(list(&["a"]), "a");
        assert_eq!(list(&["a", "b"]), "a and b");
        assert_eq!(list(&["a", "b", "c"]), "a, b and c");
    }

    #[test]
    fn a_typo_finds_its_word_and_another_word_does_not() {
        let names = ["access", "dnsbl", "greylist", "policy"];
        assert_eq!(closest("acess", &names), Some("access"));
        assert_eq!(closest("greylsit", &names), Some("greylist"));
        assert_eq!(closest("tls", &names), None);
        assert_eq!(closest("cache", &names), None);
    }
}
