//! The argument of the SMTP `MAIL` and `RCPT` commands, parsed into the
//! address and the ESMTP parameters after it.
//!
//! It follows Postfix's smtpd with its default `strict_rfc821_envelopes = no`
//! (`extract_addr`, `mail_cmd` and `rcpt_cmd` in `src/smtpd/smtpd.c`): the
//! keyword is matched case-insensitively, whitespace may follow its colon,
//! the angle brackets may be left out, a source route is dropped and `<>` is
//! the empty address. Where Postfix falls back on its RFC 822 parser (comments,
//! phrases, text glued after `>`), this module refuses instead; see
//! [`parse_path`].
//!
//! It is sans-IO: a pure function of the text, with no socket, no deadline
//! and no config. Whether an empty address or one without a domain is
//! acceptable is the caller's decision.

/// A MAIL or RCPT argument, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// The address, without angle brackets and without a source route; empty for `<>`.
    pub address: String,
    /// The ESMTP parameters after the address, trimmed (may be empty), as sent.
    pub parameters: String,
}

impl Path {
    /// The value of ESMTP parameter `name` (any case; `""` for a keyword
    /// without a value), if the path carries it.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .split_ascii_whitespace()
            .find_map(|parameter| {
                let (keyword, value) = parameter.split_once('=').unwrap_or((parameter, ""));
                keyword.eq_ignore_ascii_case(name).then_some(value)
            })
    }
}

/// Why an argument is not a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The keyword (`FROM:` / `TO:`) is missing: Postfix's `501 5.5.4 Syntax: MAIL FROM:<address>`.
    #[error("missing FROM:/TO: keyword")]
    Syntax,
    /// The address cannot be parsed: `501 5.1.7 Bad sender address syntax` / `501 5.1.3 Bad recipient address syntax`.
    #[error("bad address syntax")]
    Address,
}

/// Parses the argument of MAIL (`keyword` = "FROM:") or RCPT (`keyword` = "TO:"), keyword matched case-insensitively.
///
/// With `<`, the address runs to the matching `>` (one inside a quoted
/// string does not count) and the parameters follow after whitespace.
/// Without `<`, the address is the first whitespace-delimited token, quotes
/// respected. A leading source route (`@a,@b:`) is dropped; quoted local
/// parts are kept as sent. The address is refused ([`PathError::Address`])
/// if it is missing, has an unterminated `<` or quoted string, has a
/// control character, has whitespace, `<` or `>` outside quotes, has more
/// than one `@` outside quotes, or if text is glued directly after `>`.
pub fn parse_path(argument: &str, keyword: &str) -> Result<Path, PathError> {
    let rest = match (argument.get(..keyword.len()), argument.get(keyword.len()..)) {
        (Some(head), Some(rest)) if head.eq_ignore_ascii_case(keyword) => rest,
        _ => return Err(PathError::Syntax),
    };
    let rest = rest.trim_start_matches(is_wsp);
    if rest.is_empty() {
        return Err(PathError::Address);
    }
    let (inner, parameters) = match rest.strip_prefix('<') {
        Some(body) => {
            let close = find_unquoted(body, |c| c == '>').ok_or(PathError::Address)?;
            let (inner, tail) = body.split_at_checked(close).ok_or(PathError::Address)?;
            let tail = tail.strip_prefix('>').ok_or(PathError::Address)?;
            if !tail.is_empty() && !tail.starts_with(is_wsp) {
                return Err(PathError::Address);
            }
            (inner, tail)
        }
        None => {
            let end = find_unquoted(rest, is_wsp).unwrap_or(rest.len());
            rest.split_at_checked(end).ok_or(PathError::Address)?
        }
    };
    check(inner)?;
    let mailbox = match inner.split_once(':') {
        Some((_route, mailbox)) if inner.starts_with('@') => mailbox,
        _ => inner,
    };
    // What is left of a route is a mailbox, never another route: what the
    // gates judge must be what any reader of it would take.
    if mailbox.starts_with('@') {
        return Err(PathError::Address);
    }
    if check(mailbox)? > 1 {
        return Err(PathError::Address);
    }
    Ok(Path {
        address: mailbox.to_owned(),
        parameters: parameters.trim_matches(is_wsp).to_owned(),
    })
}

/// SMTP whitespace: space and horizontal tab.
fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Where the text stands with respect to quoted strings (`"..."` with `\`
/// escapes).
#[derive(Default)]
struct Quoting {
    quoted: bool,
    escaped: bool,
}

impl Quoting {
    /// Feeds one character; true if it stands outside a quoted string and is
    /// not itself a quote.
    fn outside(&mut self, c: char) -> bool {
        if self.escaped {
            self.escaped = false;
        } else if self.quoted {
            match c {
                '\\' => self.escaped = true,
                '"' => self.quoted = false,
                _ => {}
            }
        } else if c == '"' {
            self.quoted = true;
        } else {
            return true;
        }
        false
    }
}

/// The byte offset of the first character outside quotes for which `stop`
/// holds.
fn find_unquoted(text: &str, stop: impl Fn(char) -> bool) -> Option<usize> {
    let mut quoting = Quoting::default();
    text.char_indices()
        .find(|&(_, c)| quoting.outside(c) && stop(c))
        .map(|(at, _)| at)
}

/// Checks an address (with or without its source route) and counts its `@`
/// signs outside quotes.
fn check(address: &str) -> Result<usize, PathError> {
    let mut quoting = Quoting::default();
    let mut ats = 0;
    for c in address.chars() {
        if c < ' ' || c == '\x7f' {
            return Err(PathError::Address);
        }
        if quoting.outside(c) {
            match c {
                '<' | '>' | ' ' => return Err(PathError::Address),
                '@' => ats += 1,
                _ => {}
            }
        }
    }
    if quoting.quoted || quoting.escaped {
        return Err(PathError::Address);
    }
    Ok(ats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The expected address and parameters, or the error.
    type Expected = Result<(&'static str, &'static str), PathError>;
    const BAD: Expected = Err(PathError::Address);
    const SYNTAX: Expected = Err(PathError::Syntax);

    /// (argument, keyword, expected (address, parameters) or error)
    const CASES: &[(&str, &str, Expected)] = &[
        // The common forms.
        ("FROM:<a@b>", "FROM:", Ok(("a@b", ""))),
        // What is left of a route is never another route.
        ("FROM:<@x:@y:u@d>", "FROM:", Err(PathError::Address)),
        ("FROM:<a@b> SIZE=100", "FROM:", Ok(("a@b", "SIZE=100"))),
        ("from: a@b", "FROM:", Ok(("a@b", ""))),
        ("FROM: <a@b>", "FROM:", Ok(("a@b", ""))),
        ("From:\t<a@b>\tSIZE=1", "FROM:", Ok(("a@b", "SIZE=1"))),
        (
            "FROM:<a@b>   SIZE=1 BODY=8BITMIME  ",
            "FROM:",
            Ok(("a@b", "SIZE=1 BODY=8BITMIME")),
        ),
        ("FROM:a@b SIZE=1", "FROM:", Ok(("a@b", "SIZE=1"))),
        ("to:<user@example.com>", "TO:", Ok(("user@example.com", ""))),
        (
            "TO:<@relay.example,@r2:user@example.com> NOTIFY=NEVER",
            "TO:",
            Ok(("user@example.com", "NOTIFY=NEVER")),
        ),
        (
            "TO:@a:user@example.com",
            "TO:",
            Ok(("user@example.com", "")),
        ),
        (
            "TO:<bob@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.org",
            "TO:",
            Ok((
                "bob@example.org",
                "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.org",
            )),
        ),
        (
            "FROM:<bounces+123-abc=example.com@mail.example.net> BODY=8BITMIME SIZE=52311",
            "FROM:",
            Ok((
                "bounces+123-abc=example.com@mail.example.net",
                "BODY=8BITMIME SIZE=52311",
            )),
        ),
        // The null sender, addresses without a domain, UTF-8.
        ("FROM:<>", "FROM:", Ok(("", ""))),
        ("FROM:<> SIZE=0", "FROM:", Ok(("", "SIZE=0"))),
        ("TO:<@relay.example:>", "TO:", Ok(("", ""))),
        ("TO:<postmaster>", "TO:", Ok(("postmaster", ""))),
        ("TO:user", "TO:", Ok(("user", ""))),
        (
            "TO:<用户@例子.广告> SMTPUTF8",
            "TO:",
            Ok(("用户@例子.广告", "SMTPUTF8")),
        ),
        // Quoted local parts, kept as sent.
        (
            "TO:<\"john doe\"@example.com>",
            "TO:",
            Ok(("\"john doe\"@example.com", "")),
        ),
        (
            "TO:<\"a>b\"@example.com> X=1",
            "TO:",
            Ok(("\"a>b\"@example.com", "X=1")),
        ),
        (
            "TO:<\"a\\\"b@c\"@example.com>",
            "TO:",
            Ok(("\"a\\\"b@c\"@example.com", "")),
        ),
        (
            "TO:\"john doe\"@example.com X=1",
            "TO:",
            Ok(("\"john doe\"@example.com", "X=1")),
        ),
        // No keyword.
        ("", "FROM:", SYNTAX),
        ("<a@b>", "FROM:", SYNTAX),
        ("FRM:<a@b>", "FROM:", SYNTAX),
        ("FROM <a@b>", "FROM:", SYNTAX),
        ("TO:<a@b>", "FROM:", SYNTAX),
        ("é", "TO:", SYNTAX),
        // Bad addresses.
        ("FROM:", "FROM:", BAD),
        ("TO:   ", "TO:", BAD),
        ("FROM:<a@b", "FROM:", BAD),
        ("FROM:<a@b>SIZE=1", "FROM:", BAD),
        ("FROM:<a b@c>", "FROM:", BAD),
        ("FROM:<a@b\tc>", "FROM:", BAD),
        ("FROM:<<a@b>>", "FROM:", BAD),
        ("FROM:<a<b@c>", "FROM:", BAD),
        ("FROM:<a@b@c>", "FROM:", BAD),
        ("FROM:a@b@c", "FROM:", BAD),
        ("FROM:<\"a@b\"@c>", "FROM:", Ok(("\"a@b\"@c", ""))),
        ("FROM:<\"ab@c>", "FROM:", BAD),
        ("FROM:\"ab@c SIZE=1", "FROM:", BAD),
        ("FROM:<\"ab\\\">", "FROM:", BAD),
        ("FROM:<a\u{1}@b>", "FROM:", BAD),
        ("FROM:<a@b\u{7f}>", "FROM:", BAD),
        ("FROM:<\"a\u{0}\"@b>", "FROM:", BAD),
        ("FROM:a@b>", "FROM:", BAD),
        ("FROM:a<b@c", "FROM:", BAD),
        ("FROM:<@a\"b:c\"@d>", "FROM:", BAD),
        ("FROM:<@a b:c@d>", "FROM:", BAD),
    ];

    #[test]
    fn table() {
        for &(argument, keyword, expected) in CASES {
            let got = parse_path(argument, keyword);
            let want = expected.map(|(address, parameters)| Path {
                address: address.to_owned(),
                parameters: parameters.to_owned(),
            });
            assert_eq!(got, want, "{argument:?} with {keyword:?}");
        }
    }

    #[test]
    fn parameters_are_found_in_any_case_and_never_in_the_address() {
        let path = parse_path("FROM:<a@b> size=5 smtputf8 BODY=8BITMIME", "FROM:").unwrap();
        assert_eq!(path.parameter("SIZE"), Some("5"));
        assert_eq!(path.parameter("SMTPUTF8"), Some(""));
        assert_eq!(path.parameter("body"), Some("8BITMIME"));
        assert_eq!(path.parameter("RET"), None);
        let address = parse_path("FROM:<SMTPUTF8@b>", "FROM:").unwrap();
        assert_eq!(address.parameter("SMTPUTF8"), None);
    }

    #[test]
    fn errors_name_the_trouble() {
        assert_eq!(PathError::Syntax.to_string(), "missing FROM:/TO: keyword");
        assert_eq!(PathError::Address.to_string(), "bad address syntax");
    }

    proptest! {
        #[test]
        fn never_panics(argument in any::<String>(), keyword in "(?i:from:|to:)|.{0,3}") {
            let _ = parse_path(&argument, &keyword);
        }

        #[test]
        fn atext_addresses_round_trip(
            address in "[a-z0-9.+_-]+@[a-z0-9.-]+",
            parameters in "([A-Z]{1,8}=[A-Za-z0-9]{1,8}( [A-Z]{1,8}=[A-Za-z0-9]{1,8}){0,3})?",
            keyword in "(?i:from:|to:)",
            gap in "[ \t]{0,2}",
        ) {
            let tail = if parameters.is_empty() { String::new() } else { format!(" {parameters}") };
            let want = Path { address: address.clone(), parameters: parameters.clone() };
            for form in [format!("<{address}>"), address.clone()] {
                let argument = format!("{keyword}{gap}{form}{tail}");
                prop_assert_eq!(parse_path(&argument, &keyword.to_uppercase()), Ok(want.clone()));
            }
        }
    }
}
