//! Client text in log lines: smtpd's NOQUEUE line as gates write it, and
//! the one escaping every client string in a gate's log line goes through.

use crate::{Client, Envelope};

/// The line Postfix's smtpd logs for a refused RCPT, for gates that refuse
/// as smtpd's restrictions do (`NOQUEUE: reject: RCPT from
/// name[ip]: <reply>; from=<...> to=<...> proto=ESMTP helo=<...>`, the
/// name `unknown` unless verified),
/// which fail2ban's and pflogsumm's smtpd rules read. `reply` has no CRLF;
/// control characters of client text are escaped, the reply's too (it
/// names the recipient).
pub fn smtpd_reject_line(
    client: &Client,
    reply: &str,
    envelope: &Envelope,
    recipient: &str,
) -> String {
    format!(
        "NOQUEUE: reject: RCPT from {}[{}]: {}; from=<{}> to=<{}> proto={} helo=<{}>",
        printable(envelope.names.client_name()),
        client.ip(),
        printable(reply),
        printable(envelope.sender.as_deref().unwrap_or_default()),
        printable(recipient),
        envelope.proto(),
        printable(envelope.helo.as_deref().unwrap_or_default())
    )
}

/// `text` with control characters and non-ASCII bytes as `?`, cut at 256
/// characters: how a gate writes client text (a HELO name, a sender, a
/// recipient) into a log line, so that no client can forge one.
pub fn printable(text: &str) -> String {
    text.chars()
        .take(256)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn client_text_cannot_forge_a_log_line() {
        assert_eq!(printable("a@b.test"), "a@b.test");
        assert_eq!(
            printable("x\r\nJan  1 evil: line\u{1b}é"),
            "x??Jan  1 evil: line??"
        );
        assert_eq!(printable(&"y".repeat(300)).len(), 256);
    }
}
