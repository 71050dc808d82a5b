//! The `Received:` header doorman writes at the top of a message it relays
//! to a backend that cannot be told the client any other way (`send_proxy
//! = "received"`), sans-IO: the trace, in, the header's bytes, out.
//!
//! It is written in Postfix smtpd's form, line for line, so that every
//! trace parser that reads Postfix's headers (Exchange's
//! `InternalSMTPServers` walk, SpamAssassin's `trusted_networks`, rspamd's
//! `external_relay`, mail-parser) reads doorman's:
//!
//! ```text
//! (continuation lines start with a TAB, shown here as four spaces)
//! Received: from HELO (NAME [ADDR])
//!     (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)
//!      key-exchange X25519)
//!     (No client certificate requested)
//!     by HOSTNAME (doorman) with ESMTPS id ID
//!     for <rcpt>; Mon,  7 Dec 2026 02:20:00 +0000 (UTC)
//! ```
//!
//! `HELO` is the client's HELO/EHLO name, or `NAME` when it sent none;
//! `NAME` is the name the reverse-DNS gate verified, or `unknown`; `ADDR`
//! is `IPv6:`-prefixed for IPv6 (RFC 5321 4.1.3). The TLS lines are there
//! when the client used doorman's TLS. The protocol is `SMTP` after HELO,
//! `ESMTP` after EHLO and `UTF8SMTP` for a transaction with `SMTPUTF8`,
//! with `S` appended for TLS (RFC 3848, RFC 6531). `for <rcpt>` is there
//! only with exactly one recipient. The date is UTC in Postfix's format
//! (`%a, %e %b %Y %H:%M:%S +0000 (UTC)`).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::tls::TlsSummary;

/// The name doorman gives itself in the header's `by` clause, where
/// Postfix writes its `mail_name`.
pub const MAIL_NAME: &str = "doorman";

/// What the client said it speaks, for the `with` clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// It greeted with HELO.
    Smtp,
    /// It greeted with EHLO.
    Esmtp,
    /// It greeted with EHLO and asked for SMTPUTF8 in this transaction.
    Utf8Smtp,
}

/// One message's trace: who sent it, how, and to whom.
#[derive(Clone, Debug)]
pub struct Trace<'a> {
    /// The client's HELO/EHLO name, if it sent one.
    pub helo: Option<&'a str>,
    /// The client's verified name, if the reverse-DNS gate found one.
    pub name: Option<&'a str>,
    /// The client's address.
    pub address: IpAddr,
    /// The client's TLS with doorman, if it used it.
    pub tls: Option<&'a TlsSummary>,
    /// doorman's own hostname.
    pub hostname: &'a str,
    /// What the client speaks.
    pub protocol: Protocol,
    /// The message's id at doorman.
    pub id: &'a str,
    /// The recipients the backend accepted.
    pub recipients: &'a [String],
    /// When the message arrived.
    pub date: SystemTime,
}

/// The longest HELO name the header carries (a DNS name's longest form);
/// the rest is cut, so no header line nears RFC 5322's 998.
const HELO_SHOWN: usize = 255;

/// The `Received:` header of `trace`, CRLF line ends, folded as Postfix
/// folds it. The client's HELO name and the verified name are
/// [`neutered`], so a client cannot write a trace of its own into
/// doorman's.
pub fn received_header(trace: &Trace<'_>) -> String {
    let utf8 = trace.protocol == Protocol::Utf8Smtp;
    let name = neutered(trace.name.unwrap_or("unknown"), utf8);
    let helo = trace
        .helo
        .map_or_else(|| name.clone(), |helo| neutered(helo, utf8));
    let address = match trace.address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let mut header = format!("Received: from {helo} ({name} [{address}])\r\n");
    if let Some(tls) = trace.tls {
        let bits = tls.bits;
        header.push_str(&format!(
            "\t(using {} with cipher {} ({bits}/{bits} bits)",
            tls.protocol, tls.cipher
        ));
        match tls.group {
            Some(group) => header.push_str(&format!("\r\n\t key-exchange {group})\r\n")),
            None => header.push_str(")\r\n"),
        }
        header.push_str("\t(No client certificate requested)\r\n");
    }
    let protocol = protocol_name(trace.protocol, trace.tls.is_some());
    let by = format!(
        "\tby {} ({MAIL_NAME}) with {protocol} id {}",
        trace.hostname, trace.id
    );
    let date = mail_date(trace.date);
    match trace.recipients {
        [only] => header.push_str(&format!("{by}\r\n\tfor <{only}>; {date}\r\n")),
        _ => header.push_str(&format!("{by};\r\n\t{date}\r\n")),
    }
    header
}

/// A name as smtpd keeps a HELO name for its `Received:` header
/// (`printable()`, then `neuter()` with `" <>()\\\";@"`): every character
/// that could end the name or open a comment, an address literal's
/// neighbour or a new clause becomes `?`, as does every control character
/// and, outside a UTF8SMTP transaction, every non-ASCII one; at most
/// 255 bytes (a DNS name's longest form) are kept.
pub fn neutered(name: &str, utf8: bool) -> String {
    let mut shown = String::with_capacity(name.len().min(HELO_SHOWN));
    for character in name.chars() {
        let kept = match character {
            ' ' | '<' | '>' | '(' | ')' | '\\' | '"' | ';' | '@' => '?',
            c if c.is_control() => '?',
            c if !c.is_ascii() && !utf8 => '?',
            c => c,
        };
        if shown.len() + kept.len_utf8() > HELO_SHOWN {
            break;
        }
        shown.push(kept);
    }
    shown
}

/// The `with` clause's protocol name (RFC 3848, RFC 6531): `S` for TLS,
/// for the ESMTP kinds only.
fn protocol_name(protocol: Protocol, tls: bool) -> String {
    let base = match protocol {
        Protocol::Smtp => return "SMTP".to_string(),
        Protocol::Esmtp => "ESMTP",
        Protocol::Utf8Smtp => "UTF8SMTP",
    };
    if tls {
        format!("{base}S")
    } else {
        base.to_string()
    }
}

/// `when` as Postfix's `mail_date` writes it, in UTC:
/// `Mon,  7 Dec 2026 02:20:00 +0000 (UTC)` (the day padded with a space).
pub fn mail_date(when: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let seconds = when
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(0));
    let date = mail_parser::DateTime::from_timestamp(seconds);
    let weekday = DAYS[usize::from(date.day_of_week()) % 7];
    let month = MONTHS[usize::from(date.month.clamp(1, 12)) - 1];
    format!(
        "{weekday}, {:>2} {month} {} {:02}:{:02}:{:02} +0000 (UTC)",
        date.day, date.year, date.hour, date.minute, date.second
    )
}

/// A message id for the `id` clause: unique in the process and over
/// restarts, in the hexadecimal of Postfix's short queue ids.
pub fn message_id(transaction: u64, when: SystemTime) -> String {
    let micros = when
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros());
    format!(
        "{:X}{:04X}",
        micros & 0xFFFF_FFFF_FFFF,
        transaction & 0xFFFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;
    use std::time::Duration;

    /// Mon, 7 Dec 2026 02:20:00 UTC.
    fn monday() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_610_000)
    }

    fn trace<'a>(recipients: &'a [String], tls: Option<&'a TlsSummary>) -> Trace<'a> {
        Trace {
            helo: Some("client.example"),
            name: Some("mail.client.example"),
            address: IpAddr::from([192, 0, 2, 7]),
            tls,
            hostname: "mx.doorman.test",
            protocol: Protocol::Esmtp,
            id: "4ABC",
            recipients,
            date: monday(),
        }
    }

    fn tls13() -> TlsSummary {
        TlsSummary {
            protocol: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            bits: 256,
            group: Some("X25519"),
        }
    }

    #[test]
    fn dates_are_written_as_postfix_writes_them() {
        assert_eq!(mail_date(monday()), "Mon,  7 Dec 2026 02:20:00 +0000 (UTC)");
        let later = monday() + Duration::from_secs(9 * 86_400 + 3_600 * 21 + 61);
        assert_eq!(mail_date(later), "Wed, 16 Dec 2026 23:21:01 +0000 (UTC)");
    }

    #[test]
    fn one_recipient_plain_esmtp() {
        let recipients = ["bob@doorman.test".to_string()];
        assert_eq!(
            received_header(&trace(&recipients, None)),
            "Received: from client.example (mail.client.example [192.0.2.7])\r\n\
             \tby mx.doorman.test (doorman) with ESMTP id 4ABC\r\n\
             \tfor <bob@doorman.test>; Mon,  7 Dec 2026 02:20:00 +0000 (UTC)\r\n"
        );
    }

    #[test]
    fn two_recipients_leave_the_for_clause_out() {
        let recipients = ["a@doorman.test".to_string(), "b@doorman.test".to_string()];
        assert_eq!(
            received_header(&trace(&recipients, None)),
            "Received: from client.example (mail.client.example [192.0.2.7])\r\n\
             \tby mx.doorman.test (doorman) with ESMTP id 4ABC;\r\n\
             \tMon,  7 Dec 2026 02:20:00 +0000 (UTC)\r\n"
        );
    }

    #[test]
    fn tls_adds_postfix_s_comment_lines_and_esmtps() {
        let recipients = ["bob@doorman.test".to_string()];
        let summary = tls13();
        assert_eq!(
            received_header(&trace(&recipients, Some(&summary))),
            "Received: from client.example (mail.client.example [192.0.2.7])\r\n\
             \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n\
             \t key-exchange X25519)\r\n\
             \t(No client certificate requested)\r\n\
             \tby mx.doorman.test (doorman) with ESMTPS id 4ABC\r\n\
             \tfor <bob@doorman.test>; Mon,  7 Dec 2026 02:20:00 +0000 (UTC)\r\n"
        );
        let mut without_group = summary.clone();
        without_group.group = None;
        let header = received_header(&trace(&recipients, Some(&without_group)));
        assert!(header
            .contains("\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n"));
    }

    #[test]
    fn utf8smtp_and_helo_and_unknown_names() {
        let recipients = ["bob@doorman.test".to_string()];
        let summary = tls13();
        let mut utf8 = trace(&recipients, Some(&summary));
        utf8.protocol = Protocol::Utf8Smtp;
        assert!(received_header(&utf8).contains(" with UTF8SMTPS id "));
        utf8.tls = None;
        assert!(received_header(&utf8).contains(" with UTF8SMTP id "));
        let mut helo = trace(&recipients, Some(&summary));
        helo.protocol = Protocol::Smtp;
        helo.name = None;
        helo.helo = None;
        let header = received_header(&helo);
        assert!(header.starts_with("Received: from unknown (unknown [192.0.2.7])\r\n"));
        assert!(header.contains(" with SMTP id "), "{header}");
    }

    #[test]
    fn ipv6_addresses_carry_the_ipv6_tag() {
        let recipients = [];
        let mut six = trace(&recipients, None);
        six.address = IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert!(received_header(&six).starts_with(
            "Received: from client.example (mail.client.example [IPv6:2001:db8::1])\r\n"
        ));
    }

    #[test]
    fn mail_parser_reads_every_field_back() {
        let recipients = ["bob@doorman.test".to_string()];
        let summary = tls13();
        let header = received_header(&trace(&recipients, Some(&summary)));
        let message = format!("{header}Subject: x\r\n\r\nbody\r\n");
        let parsed = mail_parser::MessageParser::default()
            .parse_headers(message.as_bytes())
            .expect("a header block");
        let received = parsed.received().expect("a Received header");
        assert_eq!(received.from_ip, Some(IpAddr::from([192, 0, 2, 7])));
        assert_eq!(received.from_iprev.as_deref(), Some("mail.client.example"));
        assert_eq!(
            received.by.as_ref().map(ToString::to_string).as_deref(),
            Some("mx.doorman.test")
        );
        assert_eq!(received.with, Some(mail_parser::Protocol::ESMTPS));
        assert_eq!(received.tls_version, Some(mail_parser::TlsVersion::TLSv1_3));
        assert_eq!(received.for_.as_deref(), Some("bob@doorman.test"));
        assert_eq!(received.id.as_deref(), Some("4ABC"));
        assert!(received.date.is_some());
    }

    #[test]
    fn a_hostile_helo_cannot_write_a_trace_of_its_own() {
        let recipients = ["bob@doorman.test".to_string()];
        for hostile in [
            "a.b (unknown [10.1.1.1])\tby mx.internal.test with ESMTP;",
            "a([10.1.1.1]);",
            "x\\\"(<@10.1.1.1>)\"",
            "caf\u{e9}.example",
        ] {
            let mut forged = trace(&recipients, None);
            forged.helo = Some(hostile);
            let header = received_header(&forged);
            let block = format!("{header}Subject: x\r\n\r\n");
            let parsed = mail_parser::MessageParser::default()
                .parse_headers(block.as_bytes())
                .expect("a header block");
            let received = parsed.received().expect("a Received header");
            assert_eq!(
                received.from_ip,
                Some(IpAddr::from([192, 0, 2, 7])),
                "{hostile:?}: {header}"
            );
            assert!(header.is_ascii(), "{header}");
            assert_eq!(header.lines().count(), 3, "{header}");
        }
        assert_eq!(neutered("a.b (x [1.2.3.4])", false), "a.b??x?[1.2.3.4]?");
        assert_eq!(neutered("caf\u{e9}", true), "caf\u{e9}");
        assert_eq!(neutered(&"h".repeat(2000), false).len(), HELO_SHOWN);
    }

    #[test]
    fn message_ids_differ_per_transaction() {
        let now = monday();
        assert_ne!(message_id(1, now), message_id(2, now));
        assert!(message_id(1, now).bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
