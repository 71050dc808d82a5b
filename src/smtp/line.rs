//! The sans-IO SMTP command line reader, and the one place a command line
//! is split into its verb and argument.
//!
//! [`next_line`] takes a complete line off the front of a buffer, or says
//! that none is complete yet. A line longer than the limit is an error as
//! soon as the limit is passed, so a buffer never grows past it.

use bytes::{Buf, BytesMut};
use doorman_gate_api::Stage;

use super::address::parse_path;

/// A line taken off the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The line without its terminator.
    pub text: Vec<u8>,
    /// Whether it ended in a bare LF instead of CRLF.
    pub bare_newline: bool,
}

impl Line {
    /// A line of `bytes` with its CRLF (or without a terminator): a stored
    /// command line, read again.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let text = bytes.strip_suffix(b"\r\n").unwrap_or(bytes);
        Self {
            text: text.to_vec(),
            bare_newline: false,
        }
    }

    /// The command verb, upper-cased (`EHLO`, `MAIL`, ...).
    pub fn verb(&self) -> String {
        let end = self
            .text
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(self.text.len());
        String::from_utf8_lossy(&self.text[..end]).to_ascii_uppercase()
    }

    /// The verb, upper-cased, and the argument after it, trimmed.
    pub fn split(&self) -> (String, String) {
        let verb = self.verb();
        let text = String::from_utf8_lossy(&self.text);
        // smtpd splits on ASCII blanks only: a no-break space is text.
        let argument = text
            .get(verb.len()..)
            .unwrap_or_default()
            .trim_matches(|c: char| c == ' ' || c == '\t');
        (verb, argument.to_string())
    }

    /// What keeps this line from reaching a backend as it is, if
    /// anything. Only a line every smtpd splits as doorman does may pass:
    /// no control byte but TAB (smtpd splits on C's `isspace`, which counts
    /// a vertical tab and a form feed, where doorman's verb would not end),
    /// valid UTF-8 (the gates judge text), something in it, and no PROXY
    /// header.
    pub fn unrelayable(&self) -> Option<Unrelayable> {
        if self.text.iter().all(|&b| b == b' ' || b == b'\t') {
            return Some(Unrelayable::Empty);
        }
        if self
            .text
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Some(Unrelayable::Control);
        }
        if std::str::from_utf8(&self.text).is_err() {
            return Some(Unrelayable::Utf8);
        }
        if self.verb() == "PROXY" {
            return Some(Unrelayable::ProxyHeader);
        }
        None
    }

    /// What a gate may be asked about this line, by its syntax alone: the
    /// HELO or EHLO name, the MAIL sender, the RCPT recipient. The caller
    /// knows whether the dialogue's state takes the command.
    pub fn gate_question(&self) -> Option<(Stage, String)> {
        let (verb, argument) = self.split();
        match verb.as_str() {
            "HELO" | "EHLO" => argument
                .split([' ', '\t'])
                .find(|name| !name.is_empty())
                .map(|name| (Stage::Helo, name.to_string())),
            "MAIL" => parse_path(&argument, "FROM:")
                .ok()
                .map(|from| (Stage::Mail, from.address)),
            "RCPT" => parse_path(&argument, "TO:")
                .ok()
                .filter(|to| !to.address.is_empty())
                .map(|to| (Stage::Rcpt, to.address)),
            _ => None,
        }
    }
}

/// Why a command line may not reach a backend as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrelayable {
    /// Nothing but blanks: smtpd's `500 5.5.2 Error: bad syntax`.
    Empty,
    /// A control byte other than TAB (NUL, a bare CR, a vertical tab...).
    Control,
    /// Not UTF-8.
    Utf8,
    /// A PROXY v1 header after the first bytes of the connection.
    ProxyHeader,
}

/// A line longer than the limit, terminator included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {limit} bytes")]
pub struct LineTooLong {
    /// The limit that was passed.
    pub limit: usize,
}

/// Takes the next complete line off `buffer`. `limit` counts the
/// terminator.
pub fn next_line(buffer: &mut BytesMut, limit: usize) -> Result<Option<Line>, LineTooLong> {
    let window = &buffer[..buffer.len().min(limit)];
    match window.iter().position(|&b| b == b'\n') {
        Some(newline) => {
            let bare_newline = newline == 0 || buffer[newline - 1] != b'\r';
            let end = if bare_newline { newline } else { newline - 1 };
            let text = buffer[..end].to_vec();
            buffer.advance(newline + 1);
            Ok(Some(Line { text, bare_newline }))
        }
        None if buffer.len() >= limit => Err(LineTooLong { limit }),
        None => Ok(None),
    }
}

/// The groups in which replayed command lines may go to a backend: with
/// `pipelining` (the backend announced PIPELINING) consecutive MAIL and
/// RCPT lines share one write, as RFC 2920 allows; every other command
/// (EHLO, STARTTLS, ...) ends its group, so it goes alone.
pub fn replay_groups(lines: Vec<Vec<u8>>, pipelining: bool) -> Vec<Vec<Vec<u8>>> {
    let groupable = |line: &[u8]| {
        pipelining
            && line.len() >= 4
            && (line[..4].eq_ignore_ascii_case(b"MAIL") || line[..4].eq_ignore_ascii_case(b"RCPT"))
    };
    let mut groups: Vec<Vec<Vec<u8>>> = Vec::new();
    for line in lines {
        match groups.last_mut() {
            Some(group) if groupable(&line) && group.iter().all(|l| groupable(l)) => {
                group.push(line)
            }
            _ => groups.push(vec![line]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_partial_bare_and_too_long() {
        let mut buffer = BytesMut::from(&b"EHLO a\r\nnoop\nQUI"[..]);
        let first = next_line(&mut buffer, 100).unwrap().unwrap();
        assert_eq!(
            (first.text.as_slice(), first.bare_newline),
            (&b"EHLO a"[..], false)
        );
        assert_eq!(first.verb(), "EHLO");
        let second = next_line(&mut buffer, 100).unwrap().unwrap();
        assert_eq!(
            (second.verb().as_str(), second.bare_newline),
            ("NOOP", true)
        );
        assert_eq!(next_line(&mut buffer, 100), Ok(None));
        assert_eq!(&buffer[..], b"QUI");
        let mut long = BytesMut::from(&[b'x'; 10][..]);
        assert_eq!(next_line(&mut long, 10), Err(LineTooLong { limit: 10 }));
        let mut fits = BytesMut::from(&b"12345678\r\n"[..]);
        assert!(next_line(&mut fits, 10).unwrap().is_some());
    }

    #[test]
    fn only_lines_every_smtpd_splits_alike_are_relayable() {
        let line = |text: &[u8]| Line {
            text: text.to_vec(),
            bare_newline: false,
        };
        assert_eq!(line(b"MAIL FROM:<a@b>\tSIZE=1").unrelayable(), None);
        assert_eq!(line(b"RCPT TO:<\xc3\xa9@b>").unrelayable(), None);
        assert_eq!(line(b" \t").unrelayable(), Some(Unrelayable::Empty));
        for control in [
            &b"XCLIENT\x0bADDR=1.2.3.4"[..],
            b"NOOP \0",
            b"NOOP\rRSET",
            b"X\x7f",
        ] {
            assert_eq!(line(control).unrelayable(), Some(Unrelayable::Control));
        }
        assert_eq!(
            line(b"RCPT TO:<\xff@b>").unrelayable(),
            Some(Unrelayable::Utf8)
        );
        assert_eq!(
            line(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2").unrelayable(),
            Some(Unrelayable::ProxyHeader)
        );
    }

    #[test]
    fn mail_and_rcpt_share_a_write_only_with_pipelining() {
        let lines = || {
            [
                "EHLO c\r\n",
                "MAIL FROM:<a@b>\r\n",
                "RCPT TO:<c@d>\r\n",
                "STARTTLS\r\n",
            ]
            .map(|l| l.as_bytes().to_vec())
            .to_vec()
        };
        let sizes = |groups: Vec<Vec<Vec<u8>>>| groups.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(replay_groups(lines(), true)), [1, 2, 1]);
        assert_eq!(sizes(replay_groups(lines(), false)), [1, 1, 1, 1]);
    }
}
