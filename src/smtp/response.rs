//! The sans-IO reader of a server's reply (possibly multi-line), used for
//! a backend's greeting.

/// A complete reply at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code of its last line.
    pub code: u16,
    /// How many bytes the reply takes, CRLF of the last line included.
    pub length: usize,
}

/// The reply is not well-formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed SMTP reply")]
pub struct MalformedReply;

/// Finds a complete reply at the start of `buffer`: lines `NNN-text` then a
/// last line `NNN text` (or just `NNN`). `None` while incomplete; an error
/// for a line that is not a reply line or a buffer over `limit` bytes.
pub fn complete_reply(buffer: &[u8], limit: usize) -> Result<Option<Reply>, MalformedReply> {
    let mut start = 0;
    while let Some(offset) = buffer[start..].iter().position(|&b| b == b'\n') {
        let line = &buffer[start..start + offset + 1];
        let digits = line.get(..3).ok_or(MalformedReply)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(MalformedReply);
        }
        let code = digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        start += offset + 1;
        match line.get(3) {
            Some(b'-') => continue,
            Some(b' ' | b'\r' | b'\n') => {
                return Ok(Some(Reply {
                    code,
                    length: start,
                }))
            }
            _ => return Err(MalformedReply),
        }
    }
    if buffer.len() >= limit {
        return Err(MalformedReply);
    }
    Ok(None)
}

/// An EHLO keyword's name, upper-cased: its first word (`SIZE` of `SIZE
/// 10240000`).
pub fn keyword_name(keyword: &str) -> String {
    keyword
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// Whether `keywords` (an EHLO reply's, one per line) announce `name`
/// (upper case), with or without parameters.
pub fn announces(keywords: &[String], name: &str) -> bool {
    keywords.iter().any(|keyword| keyword_name(keyword) == name)
}

/// A backend's EHLO reply without the keywords in `hidden` (upper case):
/// the lines that announce them are left out and the last line left ends
/// the reply. Any other reply is returned as it is.
pub fn without_keywords(reply: &[u8], hidden: &[&str]) -> Vec<u8> {
    if !reply.starts_with(b"250-") {
        return reply.to_vec();
    }
    let mut lines: Vec<&[u8]> = reply.split_inclusive(|&b| b == b'\n').collect();
    let first = lines.remove(0);
    lines.retain(|line| {
        let keyword = line
            .get(4..)
            .unwrap_or_default()
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        !hidden
            .iter()
            .any(|hide| keyword.eq_ignore_ascii_case(hide.as_bytes()))
    });
    let mut out = first.to_vec();
    let count = lines.len();
    for (index, line) in lines.into_iter().enumerate() {
        let mut line = line.to_vec();
        if let Some(separator) = line.get_mut(3) {
            *separator = if index + 1 == count { b' ' } else { b'-' };
        }
        out.extend_from_slice(&line);
    }
    if count == 0 {
        if let Some(separator) = out.get_mut(3) {
            *separator = b' ';
        }
    }
    out
}

/// The message size limit in an EHLO keyword list (`SIZE n`, n above 0).
pub fn size_limit(keywords: &[String]) -> Option<u64> {
    keywords.iter().find_map(|keyword| {
        let mut words = keyword.split_ascii_whitespace();
        let name = words.next()?;
        let size = words.next()?.parse::<u64>().ok()?;
        (name.eq_ignore_ascii_case("SIZE") && size > 0).then_some(size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_keywords_leave_a_well_formed_reply() {
        let ehlo =
            b"250-mx.test\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR\r\n250 XFORWARD NAME\r\n";
        assert_eq!(
            without_keywords(ehlo, &["XCLIENT", "XFORWARD"]),
            b"250-mx.test\r\n250 PIPELINING\r\n"
        );
        assert_eq!(
            without_keywords(b"250-mx.test\r\n250 xclient ADDR\r\n", &["XCLIENT"]),
            b"250 mx.test\r\n"
        );
        assert_eq!(
            without_keywords(b"250 mx.test\r\n", &["X"]),
            b"250 mx.test\r\n"
        );
        assert_eq!(without_keywords(b"501 no\r\n", &["X"]), b"501 no\r\n");
    }

    #[test]
    fn single_multi_partial_and_bad() {
        assert_eq!(
            complete_reply(b"220 mx ESMTP\r\nrest", 512),
            Ok(Some(Reply {
                code: 220,
                length: 14
            }))
        );
        assert_eq!(
            complete_reply(b"220-a\r\n220 b\r\n", 512),
            Ok(Some(Reply {
                code: 220,
                length: 14
            }))
        );
        assert_eq!(complete_reply(b"220-a\r\n220 b", 512), Ok(None));
        assert_eq!(
            complete_reply(b"554\r\n", 512),
            Ok(Some(Reply {
                code: 554,
                length: 5
            }))
        );
        assert_eq!(complete_reply(b"hello\r\n", 512), Err(MalformedReply));
        assert_eq!(complete_reply(b"220", 3), Err(MalformedReply));
    }
}
