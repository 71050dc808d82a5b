//! Postfix's configuration files as Postfix reads them: main.cf's
//! parameters with their `$` expansions, and master.cf's postscreen
//! service.

use std::collections::BTreeMap;

/// How deep `$` expansions may nest (a loop `a = $b`, `b = $a` stops).
const MAX_DEPTH: usize = 10;

/// The longest a parameter's expanded value may grow, so references that
/// fan out (`a = $a$a$a...`) stop as a loop does, in bounded time.
const MAX_EXPANDED: usize = 64 * 1024;

/// The parameters of a main.cf (or of `postconf -n`).
#[derive(Clone, Debug, Default)]
pub struct Parameters {
    values: BTreeMap<String, String>,
}

impl Parameters {
    /// Reads `name = value` lines; `#` lines and blank lines are skipped,
    /// and a line that starts with white space continues the one before.
    pub fn parse(text: &str) -> Self {
        let mut values = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                if let Some(value) = last.as_ref().and_then(|name| values.get_mut(name)) {
                    let value: &mut String = value;
                    value.push(' ');
                    value.push_str(trimmed);
                }
                continue;
            }
            let Some((name, value)) = trimmed.split_once('=') else {
                last = None;
                continue;
            };
            let name = name.trim().to_string();
            values.insert(name.clone(), value.trim().to_string());
            last = Some(name);
        }
        Self { values }
    }

    /// A parameter as written, if it is set.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A parameter with its `$` expansions done, if it is set.
    pub fn value(&self, name: &str) -> Option<String> {
        self.raw(name).map(|raw| self.expand(raw, 0))
    }

    /// A list parameter (comma or white space separated), expanded.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.value(name)
            .map(|value| {
                value
                    .split([',', ' ', '\t'])
                    .filter(|item| !item.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A boolean parameter as Postfix reads it (`yes`/`no`, in any case).
    pub fn flag(&self, name: &str) -> Option<bool> {
        self.value(name)
            .map(|value| value.eq_ignore_ascii_case("yes") || value.eq_ignore_ascii_case("true"))
    }

    /// A time parameter as a TOML duration string (`"6s"`); a bare number
    /// is seconds, as Postfix reads it; `None` when it is not a time.
    pub fn duration(&self, name: &str) -> Option<String> {
        let value = self.value(name)?;
        let digits = value.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let unit = &value[digits.len()..];
        match unit {
            "" => Some(format!("\"{digits}s\"")),
            "s" | "m" | "h" | "d" | "w" => Some(format!("\"{value}\"")),
            _ => None,
        }
    }

    /// What a parameter's default is, where a postscreen setting refers to
    /// it; doorman is never under stress when its config is made.
    fn builtin(name: &str) -> Option<&'static str> {
        match name {
            "mail_name" => Some("Postfix"),
            "smtpd_banner" => Some("$myhostname ESMTP $mail_name"),
            "stress" => Some(""),
            "default_process_limit" => Some("100"),
            "smtpd_client_connection_count_limit" => Some("50"),
            _ => None,
        }
    }

    /// `text` with every `$name`, `${name}`, `$(name)`, `${name?value}`,
    /// `${name:value}` and `${name?{a}:{b}}` replaced.
    fn expand(&self, text: &str, depth: usize) -> String {
        if depth > MAX_DEPTH || text.len() > MAX_EXPANDED {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (inner, used) = match after.chars().next() {
                Some(open @ ('{' | '(')) => {
                    let close = if open == '{' { '}' } else { ')' };
                    match closing(after, open, close) {
                        Some(end) => (&after[1..end], end + 1),
                        None => {
                            out.push('$');
                            rest = after;
                            continue;
                        }
                    }
                }
                _ => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], end)
                }
            };
            out.push_str(&self.substitute(inner, depth));
            rest = &after[used..];
            if out.len() > MAX_EXPANDED {
                out.truncate(MAX_EXPANDED);
                return out;
            }
        }
        out.push_str(rest);
        out
    }

    /// One `$` expression's value (`inner`: what is between the braces).
    fn substitute(&self, inner: &str, depth: usize) -> String {
        let split = inner.find(['?', ':']);
        let (name, condition) = match split {
            Some(at) => (&inner[..at], Some((&inner[at..at + 1], &inner[at + 1..]))),
            None => (inner, None),
        };
        let value = self
            .raw(name)
            .or_else(|| Self::builtin(name))
            .map(|raw| self.expand(raw, depth + 1))
            .unwrap_or_default();
        match condition {
            None => value,
            Some((operator, rest)) => {
                let chosen = match (operator, branches(rest)) {
                    ("?", Some((when_set, when_unset))) => match value.is_empty() {
                        true => when_unset,
                        false => when_set,
                    },
                    ("?", None) if !value.is_empty() => unbraced(rest),
                    (":", _) if value.is_empty() => unbraced(rest),
                    _ => "",
                };
                self.expand(chosen, depth + 1)
            }
        }
    }
}

/// Where the bracket opened at `text[0]` closes.
fn closing(text: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 0usize;
    for (index, c) in text.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(index);
            }
        }
    }
    None
}

/// A conditional's value without the braces Postfix 3 allows around it
/// (`${name?{value}}`).
fn unbraced(text: &str) -> &str {
    match closing(text, '{', '}') {
        Some(end) if text.starts_with('{') && end + 1 == text.len() => &text[1..end],
        _ => text,
    }
}

/// The `{a}:{b}` form of a conditional's branches.
fn branches(text: &str) -> Option<(&str, &str)> {
    let first_end = closing(text, '{', '}').filter(|_| text.starts_with('{'))?;
    let second = text[first_end + 1..].strip_prefix(':')?;
    let second_end = closing(second, '{', '}').filter(|_| second.starts_with('{'))?;
    Some((&text[1..first_end], &second[1..second_end]))
}

/// The address master.cf's postscreen service listens on, as a doorman
/// listener address (`smtp` is port 25; no host: every address).
pub fn postscreen_address(master_cf: &str) -> Option<String> {
    master_cf.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(char::is_whitespace) || line.trim_start().starts_with('#') {
            return None;
        }
        let (service, kind, command) = (fields.first()?, fields.get(1)?, fields.get(7)?);
        if *kind != "inet" || *command != "postscreen" {
            return None;
        }
        let (host, port) = match service.rsplit_once(':') {
            Some((host, port)) => (host.trim_matches(['[', ']']), port),
            None => ("", *service),
        };
        let port = match port {
            "smtp" => "25",
            "submission" => "587",
            other => other,
        };
        port.parse::<u16>().ok()?;
        Some(match host {
            "" => format!("[::]:{port}"),
            host if host.contains(':') => format!("[{host}]:{port}"),
            host => format!("{host}:{port}"),
        })
    })
}
