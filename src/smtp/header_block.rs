//! The header block of a message on its way to a relay-mode backend,
//! sans-IO: held back until it is whole, then checked, before the backend
//! sees a byte of the message.
//!
//! [`HeaderHold`] takes the framer's output (the body as it goes on the
//! wire: CRLF line ends, dot-stuffing kept) and keeps it until the empty
//! line that ends the header block, or the end of the message, or until the
//! block is past its size limit. [`HeaderHold::verdict`] then parses the
//! block with mail-parser and counts its `Received:` headers, as Postfix's
//! cleanup counts hops (`hopcount_limit`).

use bytes::BytesMut;

/// Why a message's header block is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRefusal {
    /// More `Received:` headers than the hop limit: a mail loop.
    TooManyHops,
    /// The header block is larger than its limit.
    TooLarge,
}

/// Where the hold is after more of the body arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The header block goes on: feed more.
    More,
    /// The header block is whole (or the message ended): judge it.
    Whole,
    /// The block is past its limit without its end: the message is
    /// refused, and the rest of the body only needs reading.
    TooLarge,
}

/// The held start of one message (sans-IO).
#[derive(Debug)]
pub struct HeaderHold {
    bytes: BytesMut,
    /// Where the header block ends in `bytes` (after its empty line), once
    /// known.
    end: Option<usize>,
    limit: usize,
    /// How far `bytes` was searched for the end already.
    searched: usize,
    /// Whether the message ended before any empty line.
    ended_inside: bool,
}

impl HeaderHold {
    /// A hold for a header block of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            bytes: BytesMut::new(),
            end: None,
            limit,
            searched: 0,
            ended_inside: false,
        }
    }

    /// Takes more of the framed body. Once the block is whole, more input
    /// is an error of the caller's; it is kept but not searched.
    pub fn push(&mut self, framed: &[u8]) -> Held {
        self.bytes.extend_from_slice(framed);
        if self.end.is_some() {
            return Held::Whole;
        }
        if self.bytes.starts_with(b"\r\n") {
            // An empty header block: the body starts at once.
            self.end = Some(2);
            return Held::Whole;
        }
        let from = self.searched.saturating_sub(3);
        if let Some(at) = find(&self.bytes[from..], b"\r\n\r\n") {
            let end = from + at + 4;
            self.end = Some(end);
            return if end - 2 > self.limit {
                Held::TooLarge
            } else {
                Held::Whole
            };
        }
        self.searched = self.bytes.len();
        if self.bytes.len() > self.limit {
            Held::TooLarge
        } else {
            Held::More
        }
    }

    /// The message ended inside the header block (a message of headers
    /// only): what is held is the whole block and the end line (`.` and
    /// CRLF), which is no part of it.
    pub fn message_ended(&mut self) {
        if self.end.is_none() {
            self.end = Some(self.bytes.len().saturating_sub(3));
            self.ended_inside = true;
        }
    }

    /// The header block's size: up to its empty line, or its end.
    fn size(&self, end: usize) -> usize {
        if self.ended_inside {
            end
        } else {
            end.saturating_sub(2)
        }
    }

    /// Whether the held header block passes: at most `max_hops`
    /// `Received:` headers, as mail-parser reads the block.
    pub fn verdict(&self, max_hops: usize) -> Result<(), HeaderRefusal> {
        let end = self.end.unwrap_or(self.bytes.len());
        if self.size(end) > self.limit {
            return Err(HeaderRefusal::TooLarge);
        }
        let block = &self.bytes[..end];
        let hops = mail_parser::MessageParser::new()
            .parse_headers(block)
            .map_or(0, |message| {
                message
                    .headers()
                    .iter()
                    .filter(|header| header.name == mail_parser::HeaderName::Received)
                    .count()
            });
        if hops > max_hops {
            Err(HeaderRefusal::TooManyHops)
        } else {
            Ok(())
        }
    }

    /// Everything held, to go to the backend after doorman's own header.
    pub fn into_bytes(self) -> BytesMut {
        self.bytes
    }
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hops(count: usize) -> String {
        (0..count)
            .map(|n| format!("Received: from h{n} (h{n} [192.0.2.{}])\r\n\tby mx; Mon, 7 Dec 2026 02:20:00 +0000\r\n", n % 250))
            .collect()
    }

    #[test]
    fn the_block_ends_at_the_first_empty_line_however_it_is_split() {
        let message = b"Subject: a\r\nFrom: b@c\r\n\r\nbody\r\n\r\nmore\r\n.\r\n";
        for split in 1..message.len() {
            let mut hold = HeaderHold::new(1000);
            let first = hold.push(&message[..split]);
            let second = hold.push(&message[split..]);
            let whole_at = b"Subject: a\r\nFrom: b@c\r\n\r\n".len();
            if split >= whole_at {
                assert_eq!(first, Held::Whole, "{split}");
            } else {
                assert_eq!(first, Held::More, "{split}");
            }
            assert_eq!(second, Held::Whole, "{split}");
            assert_eq!(hold.end, Some(whole_at));
            assert_eq!(&hold.into_bytes()[..], &message[..]);
        }
    }

    #[test]
    fn an_empty_block_and_a_message_of_headers_only() {
        let mut empty = HeaderHold::new(10);
        assert_eq!(empty.push(b"\r\nbody\r\n"), Held::Whole);
        assert_eq!(empty.verdict(0), Ok(()));
        let mut only = HeaderHold::new(100);
        assert_eq!(only.push(b"Subject: a\r\n.\r\n"), Held::More);
        only.message_ended();
        assert_eq!(only.verdict(50), Ok(()));
        // A block of headers only, exactly at the limit: the end line is
        // no part of it.
        let mut exact = HeaderHold::new(12);
        assert_eq!(exact.push(b"Subject: a\r\n.\r\n"), Held::TooLarge);
        exact.message_ended();
        assert_eq!(exact.verdict(50), Ok(()));
    }

    #[test]
    fn hops_are_counted_as_mail_parser_reads_them() {
        let mut at_limit = HeaderHold::new(100_000);
        at_limit.push(format!("{}Subject: x\r\n\r\nbody", hops(50)).as_bytes());
        assert_eq!(at_limit.verdict(50), Ok(()));
        let mut past = HeaderHold::new(100_000);
        past.push(format!("{}Subject: x\r\n\r\nbody", hops(51)).as_bytes());
        assert_eq!(past.verdict(50), Err(HeaderRefusal::TooManyHops));
        // A Received line in the body is no hop.
        let mut body = HeaderHold::new(100_000);
        body.push(format!("Subject: x\r\n\r\n{}", hops(60)).as_bytes());
        assert_eq!(body.verdict(50), Ok(()));
    }

    #[test]
    fn a_block_past_its_limit_is_too_large_with_or_without_its_end() {
        let mut endless = HeaderHold::new(1024);
        let line = format!("X-Long: {}\r\n", "a".repeat(600));
        assert_eq!(endless.push(line.as_bytes()), Held::More);
        assert_eq!(endless.push(line.as_bytes()), Held::TooLarge);
        let mut ended = HeaderHold::new(1024);
        let block = format!("{line}{line}\r\nbody");
        assert_eq!(ended.push(block.as_bytes()), Held::TooLarge);
        assert_eq!(ended.verdict(50), Err(HeaderRefusal::TooLarge));
        let mut exact = HeaderHold::new(line.len() * 2);
        assert_eq!(
            exact.push(format!("{line}{line}\r\n").as_bytes()),
            Held::Whole
        );
        assert_eq!(exact.verdict(50), Ok(()));
    }

    #[test]
    fn a_long_unfolded_line_within_the_limit_passes() {
        let mut hold = HeaderHold::new(100 * 1024);
        let block = format!(
            "X-Long: {}\r\nSubject: s\r\n\r\nbody\r\n",
            "b".repeat(10_000)
        );
        assert_eq!(hold.push(block.as_bytes()), Held::Whole);
        assert_eq!(hold.verdict(50), Ok(()));
        assert_eq!(&hold.into_bytes()[..], block.as_bytes());
    }
}
