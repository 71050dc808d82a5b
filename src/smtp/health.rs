//! The sans-IO dialogue with HAProxy's health checks (what they send and
//! expect: docs/proxy-protocol.md, "What HAProxy sends").
//!
//! A check gets a plain single-line `220` at once (HAProxy's `smtpchk` and
//! `expect rstring ^220` both need it), 250 to HELO, EHLO, NOOP and RSET,
//! and `221` to QUIT, after which doorman closes.

use super::line::Line;
use super::reply;

/// The most commands a check may send before doorman closes.
pub const MAX_COMMANDS: usize = 10;

/// What to do after a check's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckReply {
    /// Send this reply and read the next command.
    Reply(String),
    /// Send this reply and close.
    ReplyAndClose(String),
}

/// The answer to one command of a health check.
pub fn answer(line: &Line, hostname: &str) -> CheckReply {
    match line.verb().as_str() {
        "HELO" | "EHLO" => CheckReply::Reply(reply::helo(hostname)),
        "NOOP" | "RSET" => CheckReply::Reply(reply::OK.to_string()),
        "QUIT" => CheckReply::ReplyAndClose(reply::BYE.to_string()),
        _ => CheckReply::Reply(reply::NOT_RECOGNIZED.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line {
            text: text.as_bytes().to_vec(),
            bare_newline: false,
        }
    }

    #[test]
    fn check_dialogue() {
        assert_eq!(
            answer(&line("HELO localhost"), "mx"),
            CheckReply::Reply("250 mx\r\n".into())
        );
        assert_eq!(
            answer(&line("ehlo x"), "mx"),
            CheckReply::Reply("250 mx\r\n".into())
        );
        assert_eq!(
            answer(&line("NOOP"), "mx"),
            CheckReply::Reply("250 2.0.0 Ok\r\n".into())
        );
        assert_eq!(
            answer(&line("QUIT"), "mx"),
            CheckReply::ReplyAndClose("221 2.0.0 Bye\r\n".into())
        );
        assert_eq!(
            answer(&line("MAIL FROM:<>"), "mx"),
            CheckReply::Reply("502 5.5.2 Error: command not recognized\r\n".into())
        );
    }
}
