//! Every reply doorman itself sends to a client: postscreen's texts where
//! doorman does what postscreen does (docs/postscreen.md, "Replies"),
//! Haraka's where it does what Haraka does (docs/proxy-protocol.md). Each
//! ends in CRLF.

use std::net::IpAddr;

/// A listed proxy did not send its header in time (Haraka's reply, with an
/// enhanced status code).
pub const PROXY_TIMED_OUT: &str = "421 4.4.2 PROXY timed out\r\n";

/// A listed proxy sent a malformed header, a v1 `UNKNOWN`, or an unsupported
/// v2 family.
pub const INVALID_PROXY_HEADER: &str = "421 4.7.0 Invalid PROXY header\r\n";

/// No backend accepted the connection (postscreen's reply).
pub const SERVER_PORTS_BUSY: &str = "421 4.3.2 All server ports are busy\r\n";

/// Too many connections from one client (postscreen's reply).
pub const TOO_MANY_CONNECTIONS: &str = "421 4.7.0 Error: too many connections\r\n";

/// The client's network opened too many connections this minute (smtpd's
/// reply for anvil's rate limit).
pub fn too_many_connections_from(hostname: &str, ip: IpAddr) -> String {
    format!("421 4.7.0 {hostname} Error: too many connections from {ip}\r\n")
}

/// All screening places are taken (postscreen's reply).
pub const SCREENING_PORTS_BUSY: &str = "421 4.3.2 All screening ports are busy\r\n";

/// A RCPT from a client that passed, under `after_pass = "reconnect"`
/// (postscreen's default rcpt_reply): come back later.
pub const RCPT_DEFERRED: &str = "450 4.3.2 Service currently unavailable\r\n";

/// The client's backend was flushed while doorman judged its commands
/// (postscreen's final reply).
pub const FLUSHED: &str = "421 4.3.2 Service currently unavailable\r\n";

/// doorman is stopping and its grace period is over.
pub const SHUTTING_DOWN: &str = "421 4.3.2 Service shutting down, try again later\r\n";

/// The reply to QUIT.
pub const BYE: &str = "221 2.0.0 Bye\r\n";

/// The reply to NOOP and RSET.
pub const OK: &str = "250 2.0.0 Ok\r\n";

/// A command doorman does not take in this state.
pub const NOT_RECOGNIZED: &str = "502 5.5.2 Error: command not recognized\r\n";

/// A peer that is not listed sent a PROXY header (a soft error, so a proxy
/// missing from the list never bounces mail).
pub fn proxy_not_allowed(ip: IpAddr) -> String {
    format!("421 4.7.0 PROXY not allowed from {ip}\r\n")
}

/// The single-line greeting `220 <hostname> ESMTP`: to health checks,
/// and to a client whose teaser must be completed before a 421.
pub fn plain_banner(hostname: &str) -> String {
    format!("220 {hostname} ESMTP\r\n")
}

/// The built-in engine's greeting, `220 <banner>`.
pub fn greeting(banner: &str) -> String {
    format!("220 {banner}\r\n")
}

/// The teaser's first line, `220-<banner>`.
pub fn teaser(banner: &str) -> String {
    format!("220-{banner}\r\n")
}

/// postscreen's reply when it drops a client for a non-SMTP command.
pub const NON_SMTP_DROP: &str = "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n";

/// The reply to HELO or EHLO from a health check.
pub fn helo(hostname: &str) -> String {
    format!("250 {hostname}\r\n")
}

/// A command line too long, or too many commands (postscreen's reply).
pub fn service_unavailable(hostname: &str) -> String {
    format!("421 {hostname} Service unavailable - try again later\r\n")
}

/// A command took too long to arrive (postscreen's reply).
pub fn timeout_exceeded(hostname: &str) -> String {
    format!("421 4.4.2 {hostname} Error: timeout exceeded\r\n")
}

/// The built-in engine's EHLO reply, postscreen's keywords (no PIPELINING,
/// no AUTH), with STARTTLS when the engine offers it.
pub fn ehlo(hostname: &str, starttls: bool) -> String {
    let starttls = if starttls { "250-STARTTLS\r\n" } else { "" };
    format!(
        "250-{hostname}\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n{starttls}250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
    )
}

/// HELO or EHLO (`verb`) without a name.
pub fn helo_syntax(verb: &str) -> String {
    format!("501 Syntax: {verb} hostname\r\n")
}

/// STARTTLS with an argument.
pub const STARTTLS_SYNTAX: &str = "501 5.5.4 Syntax: STARTTLS\r\n";

/// STARTTLS taken: the handshake follows.
pub const READY_TO_START_TLS: &str = "220 2.0.0 Ready to start TLS\r\n";

/// STARTTLS inside TLS.
pub const TLS_ALREADY_ACTIVE: &str = "554 5.5.1 Error: TLS already active\r\n";

/// A command the engine knows but does not offer (STARTTLS without TLS).
pub const NOT_IMPLEMENTED: &str = "502 5.5.1 Error: command not implemented\r\n";

/// MAIL inside a transaction.
pub const NESTED_MAIL: &str = "503 5.5.1 Error: nested MAIL command\r\n";

/// MAIL taken.
pub const MAIL_OK: &str = "250 2.1.0 Ok\r\n";

/// MAIL without `FROM:<address>`.
pub const MAIL_SYNTAX: &str = "501 5.5.4 Syntax: MAIL FROM:<address>\r\n";

/// RCPT before MAIL.
pub const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command\r\n";

/// RCPT without `TO:<address>`.
pub const RCPT_SYNTAX: &str = "501 5.5.4 Syntax: RCPT TO:<address>\r\n";

/// DATA with an argument.
pub const DATA_SYNTAX: &str = "501 5.5.4 Syntax: DATA\r\n";

/// DATA or BDAT after MAIL, with no recipient taken (the engine closes).
pub const NO_VALID_RECIPIENTS: &str = "554 5.5.1 Error: no valid recipients\r\n";

/// DATA before MAIL.
pub const NEED_RCPT: &str = "503 5.5.1 Error: need RCPT command\r\n";

/// BDAT before MAIL.
pub const BDAT_NEED_MAIL: &str = "554 5.5.1 Error: need MAIL command\r\n";

/// VRFY without an address.
pub const VRFY_SYNTAX: &str = "501 5.5.4 Syntax: VRFY address\r\n";

/// VRFY from a client that may reach a backend.
pub const VRFY_PASS: &str = "252 2.0.0 Send some mail, I'll try my best\r\n";

/// ETRN without a domain.
pub const ETRN_SYNTAX: &str = "500 Syntax: ETRN domain\r\n";

/// ETRN.
pub const ETRN_REFUSED: &str = "458 Unable to queue messages\r\n";

/// A RCPT whose user belongs to another backend than the transaction's
/// (RFC 5321's reply for a recipient limit: MTAs send such recipients in a
/// transaction of their own).
pub const TOO_MANY_RECIPIENTS: &str = "452 4.5.3 Too many recipients\r\n";

/// A client's own XCLIENT or XFORWARD: Postfix's reply to a client outside
/// `smtpd_authorized_xclient_hosts`. It never reaches a backend.
pub const INSUFFICIENT_AUTHORIZATION: &str = "550 5.7.0 Error: insufficient authorization\r\n";

/// An empty command line, or one with a control byte in it (smtpd's reply
/// to a line it cannot split).
pub const BAD_SYNTAX: &str = "500 5.5.2 Error: bad syntax\r\n";

/// A command line that is not UTF-8 (smtpd's reply).
pub const BAD_UTF8: &str = "500 5.5.2 Error: bad UTF-8 syntax\r\n";

/// A MAIL whose address cannot be parsed.
pub const SENDER_SYNTAX: &str = "501 5.1.7 Bad sender address syntax\r\n";

/// A RCPT whose address cannot be parsed (or is empty).
pub const RECIPIENT_SYNTAX: &str = "501 5.1.3 Bad recipient address syntax\r\n";

/// More recipients than smtpd's `smtpd_recipient_limit` in one transaction.
pub const RECIPIENT_LIMIT: &str = "452 4.5.3 Error: too many recipients\r\n";

/// A BDAT whose size cannot be read.
pub const BDAT_SYNTAX: &str = "501 5.5.4 Syntax: BDAT count [LAST]\r\n";

/// The backend was lost (or too slow) after the end of a message: Postfix's
/// before-queue proxy reply.
pub const QUEUE_WRITE_ERROR: &str = "451 4.3.0 Error: queue file write error\r\n";

/// A MAIL whose SIZE parameter is past the limit the backend announced:
/// smtpd's reply.
pub const SIZE_EXCEEDS_LIMIT: &str = "552 5.3.4 Message size exceeds fixed limit\r\n";

/// The go-ahead for a relay-mode message, from doorman itself: smtpd's.
pub const START_MAIL_INPUT: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";

/// A relay-mode message with more `Received:` headers than `[relay]
/// max_hops`: Postfix's reply to a mail loop.
pub const TOO_MANY_HOPS: &str = "554 5.4.0 Error: too many hops\r\n";

/// A relay-mode message whose header block is past `[relay]
/// max_header_size`.
pub const HEADER_TOO_LARGE: &str = "552 5.3.4 Error: message header size exceeds limit\r\n";

/// AUTH where it is not offered (relay mode): smtpd's reply when SASL is
/// off.
pub const AUTH_NOT_ENABLED: &str = "503 5.5.1 Error: authentication not enabled\r\n";

/// An AUTH exchange line longer than the line limit.
pub const AUTH_LINE_TOO_LONG: &str = "500 5.5.6 Authentication exchange line is too long\r\n";

/// The backend was lost while the client waited for its reply to a command.
pub fn lost_backend(hostname: &str) -> String {
    format!("421 4.4.2 {hostname} Error: lost connection with the backend\r\n")
}

/// A bare CR or LF in a command or a message under `bare_newline =
/// "reject"`: Postfix's `smtpd_forbid_bare_newline = reject` reply, with
/// its `smtpd_forbid_bare_newline_reject_code`.
pub fn bare_newline(code: u16, hostname: &str) -> String {
    format!("{code} 5.5.2 {hostname} Error: bare <LF> received\r\n")
}

/// A session past smtpd's `smtpd_hard_error_limit`.
pub fn too_many_errors(hostname: &str) -> String {
    format!("421 4.7.0 {hostname} Error: too many errors\r\n")
}

/// smtpd's refusal of a command line no backend may see as it is (`None`
/// for a PROXY line, which ends the session instead).
pub fn unrelayable(flaw: super::line::Unrelayable) -> Option<&'static str> {
    use super::line::Unrelayable;
    match flaw {
        Unrelayable::Utf8 => Some(BAD_UTF8),
        Unrelayable::Empty | Unrelayable::Control => Some(BAD_SYNTAX),
        Unrelayable::ProxyHeader => None,
    }
}
