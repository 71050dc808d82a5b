//! Postfix's policy delegation protocol, sans-IO: the request's
//! `name=value` lines, the reply's `action=` line, and what an access(5)
//! action means at RCPT.

use std::fmt::Write;

/// The most bytes a reply may take; a longer one is a failure.
pub const MAX_REPLY: usize = 4096;

/// What Postfix's smtpd would do with an action at RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `OK`: accept the recipient (later checks are skipped).
    Accept,
    /// `DUNNO`, `PREPEND`, and actions that do not apply at RCPT.
    Dunno,
    /// Refuse with this reply code, enhanced status code and text.
    Refuse {
        /// The reply code (4xx or 5xx).
        code: u16,
        /// The enhanced status code.
        status: String,
        /// The text after `Recipient address rejected: `.
        text: String,
    },
}

/// Why a reply is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// More than [`MAX_REPLY`] bytes.
    TooLong,
    /// The reply holds no `action=` line.
    NoAction,
}

/// One attribute of a request: `name=value` with newlines taken out of the
/// value (a client cannot add attributes of its own).
pub fn attribute(request: &mut String, name: &str, value: &str) {
    let value: String = value
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let _ = writeln!(request, "{name}={value}");
}

/// Whether `buffer` holds a complete reply (it ends in an empty line):
/// `Ok(Some(action))` with the `action=` value; `Ok(None)` for more bytes.
pub fn parse_reply(buffer: &[u8]) -> Result<Option<String>, ReplyError> {
    let end = buffer.windows(2).position(|w| w == b"\n\n");
    let Some(end) = end else {
        if buffer.len() > MAX_REPLY {
            return Err(ReplyError::TooLong);
        }
        return Ok(None);
    };
    if end > MAX_REPLY {
        return Err(ReplyError::TooLong);
    }
    String::from_utf8_lossy(&buffer[..end])
        .lines()
        .find_map(|line| {
            line.trim_end_matches('\r')
                .strip_prefix("action=")
                .map(str::to_string)
        })
        .map(Some)
        .ok_or(ReplyError::NoAction)
}

/// What `action` means at RCPT, as access(5) says (`DEFER_IF_PERMIT`: the
/// recipient would be accepted here, so it is deferred; `DEFER_IF_REJECT`:
/// no later check refuses here, so it changes nothing). `None` for an
/// action Postfix does not know.
pub fn meaning(action: &str) -> Option<Action> {
    let action = action.trim();
    let (word, text) = action.split_once([' ', '\t']).unwrap_or((action, ""));
    let text = text.trim();
    let refuse = |code: u16, default_status: &str, default_text: &str| {
        let (status, text) = split_status(text, default_status);
        Some(Action::Refuse {
            code,
            status,
            text: if text.is_empty() {
                default_text.to_string()
            } else {
                text
            },
        })
    };
    match word.to_ascii_uppercase().as_str() {
        "OK" => Some(Action::Accept),
        "DUNNO" | "PREPEND" | "WARN" | "INFO" | "HOLD" | "DISCARD" | "FILTER" | "REDIRECT"
        | "BCC" | "DEFER_IF_REJECT" => Some(Action::Dunno),
        "REJECT" => refuse(554, "5.7.1", "Access denied"),
        "DEFER" | "DEFER_IF_PERMIT" => refuse(450, "4.7.1", "Service unavailable"),
        code if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
            let number: u16 = code.parse().ok()?;
            match number / 100 {
                4 => refuse(number, "4.7.1", "Service unavailable"),
                5 => refuse(number, "5.7.1", "Access denied"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A leading enhanced status code (`4.2.0 text`) split off `text`, or the
/// default.
fn split_status(text: &str, default: &str) -> (String, String) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let parts: Vec<&str> = first.split('.').collect();
    let is_status = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && matches!(parts[0], "2" | "4" | "5");
    if is_status {
        (first.to_string(), rest.trim().to_string())
    } else {
        (default.to_string(), text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"action=DUNNO\n"), Ok(None));
        assert_eq!(parse_reply(b"action=DUNNO\n\n"), Ok(Some("DUNNO".into())));
        assert_eq!(
            parse_reply(b"foo=bar\r\naction=REJECT go away\r\n\n"),
            Ok(Some("REJECT go away".into()))
        );
        assert_eq!(parse_reply(b"garbage\n\n"), Err(ReplyError::NoAction));
        assert_eq!(parse_reply(&[b'x'; 5000]), Err(ReplyError::TooLong));
    }

    #[test]
    fn actions_as_access_5() {
        assert_eq!(meaning("OK"), Some(Action::Accept));
        assert_eq!(meaning("dunno"), Some(Action::Dunno));
        assert_eq!(meaning("PREPEND X-Policy: yes"), Some(Action::Dunno));
        assert_eq!(
            meaning("REJECT"),
            Some(Action::Refuse {
                code: 554,
                status: "5.7.1".into(),
                text: "Access denied".into()
            })
        );
        assert_eq!(
            meaning("DEFER_IF_PERMIT Greylisted, see http://x/help/y.html"),
            Some(Action::Refuse {
                code: 450,
                status: "4.7.1".into(),
                text: "Greylisted, see http://x/help/y.html".into()
            })
        );
        assert_eq!(
            meaning("451 4.3.5 Server configuration problem"),
            Some(Action::Refuse {
                code: 451,
                status: "4.3.5".into(),
                text: "Server configuration problem".into()
            })
        );
        assert_eq!(
            meaning("550 no such user"),
            Some(Action::Refuse {
                code: 550,
                status: "5.7.1".into(),
                text: "no such user".into()
            })
        );
        assert_eq!(meaning("DEFER_IF_REJECT maybe"), Some(Action::Dunno));
        assert_eq!(meaning("FROBNICATE"), None);
        assert_eq!(meaning("650 weird"), None);
    }

    #[test]
    fn attribute_values_stay_on_their_line() {
        let mut request = String::new();
        attribute(&mut request, "sender", "a@b\nrecipient=evil@x");
        assert_eq!(request, "sender=a@b recipient=evil@x\n");
    }
}
