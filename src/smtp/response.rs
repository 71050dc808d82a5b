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

#[cfg(test)]
mod tests {
    use super::*;

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
