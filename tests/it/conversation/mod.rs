//! The conversation after the handoff is doorman's to its end, tried as an
//! attacker would, on plain text and inside TLS: a doubtful client past
//! greylisting once meets the gates in every later transaction (bare
//! addresses, RSET, after DATA and BDAT LAST, pipelined); the end of DATA is
//! `<CR><LF>.<CR><LF>` and nothing else, against a real Postfix; a client's
//! own XCLIENT and XFORWARD never reach a backend; a dripped command is cut
//! at `command_time`; AUTH passes the gates only when the backend accepts
//! it; and hostile lines get clean replies.

mod auth_and_gates;
mod framing;
mod hostile;
mod inside_tls;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::support::tls::{certificate, start_tls, tls_section, Key};
use crate::support::*;

/// A client's connection, plain or TLS.
pub(super) trait Wire: Read + Write {}
impl<T: Read + Write> Wire for T {}

pub(super) fn reply(stream: &mut dyn Wire) -> String {
    whole_reply(stream)
}

/// Sends each line and checks the reply to it, in order.
pub(super) fn steps(stream: &mut dyn Wire, steps: &[(&str, String)]) {
    for (line, answer) in steps {
        assert_eq!(ask(stream, line), *answer, "{line:?}");
    }
}

/// Sends `text` and returns the reply to it.
pub(super) fn ask(stream: &mut dyn Wire, text: &str) -> String {
    stream.write_all(text.as_bytes()).unwrap();
    stream.flush().unwrap();
    reply(stream)
}

pub(super) fn greylisted(recipient: &str) -> String {
    let domain = recipient.split('@').nth(1).unwrap_or_default();
    format!(
        "450 4.2.0 <{recipient}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/{domain}.html\r\n"
    )
}

/// With `tls`, the `[tls]` section with a throwaway certificate made in
/// `dir`; else nothing.
pub(super) fn tls_config(dir: &Path, tls: bool) -> String {
    if !tls {
        return String::new();
    }
    let pair = certificate(dir, "mx", "mx.doorman.test", Key::Rsa, 2);
    tls_section(&[pair], "")
}

/// A Postfix that takes PROXY v2 and queues (into discard) for
/// doorman.test.
pub(super) fn postfix() -> Option<Postfix> {
    Postfix::start_delivering(
        "smtpd_upstream_proxy_protocol = haproxy\nrelay_domains = doorman.test\n",
    )
}

/// doorman greylisting clients rbldnsd lists at weight 1 (a 1 s delay), in
/// front of `backend`, with `[tls]` when `tls` names a section.
pub(super) fn greylisting(backend: SocketAddr, dns: SocketAddr, tls: &str) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"\"\nwait = \"2s\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nsites = [\"bl.test=127.0.0.2\", \"bl2.test\"]\nthreshold = 5\naction = \"enforce\"\ntimeout = \"2s\"\nnameservers = [\"{dns}\"]\n\
[greylist]\nthreshold = 1\ndelay = \"1s\"\nretry_window = \"1h\"\n{tls}"
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"deep\", \"greylist\"]\n{}",
        config_with(backend, "v2", "", "5s", &sections)
    );
    Doorman::start(&config, "127.0.0.1\n")
}

/// Connects as `client` and greets: EHLO, and with `tls` STARTTLS and EHLO
/// again inside it. Returns the stream.
pub(super) fn greet(doorman: &Doorman, client: &str, tls: bool) -> Box<dyn Wire> {
    let mut plain = connect_as(doorman, client);
    assert_eq!(reply(&mut plain), "220 mx.doorman.test ESMTP\r\n");
    let ehlo = ask(&mut plain, "EHLO client.test\r\n");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    assert!(
        !ehlo.contains("XCLIENT") && !ehlo.contains("XFORWARD"),
        "{ehlo}"
    );
    if !tls {
        return Box::new(plain);
    }
    assert_eq!(
        ask(&mut plain, "STARTTLS\r\n"),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    let mut secure: Box<dyn Wire> = Box::new(start_tls(plain, None));
    assert!(ask(&mut *secure, "EHLO client.test\r\n").starts_with("250"));
    secure
}

/// A doubtful client greylisted once for (alice, bob), then replayed: its
/// session after the replay.
pub(super) fn past_greylisting(doorman: &Doorman, client: &str, tls: bool) -> Box<dyn Wire> {
    for attempt in 0..2 {
        let mut stream = greet(doorman, client, tls);
        assert_eq!(
            ask(&mut *stream, "MAIL FROM:<alice@sender.test>\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        let answer = ask(&mut *stream, "RCPT TO:<bob@doorman.test>\r\n");
        if attempt == 1 {
            assert_eq!(answer, "250 2.1.5 Ok\r\n", "Postfix's own reply, replayed");
            return stream;
        }
        assert_eq!(answer, greylisted("bob@doorman.test"));
        thread::sleep(Duration::from_millis(1100));
    }
    unreachable!()
}

/// doorman with every deep test on (so each client meets the engine and
/// its conversation is read), in front of `backend`.
pub(super) fn engine_first(backend: SocketAddr, extra: &str) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n[deep_tests]\n\
pipelining = {{ enable = true }}\nnon_smtp_command = {{ enable = true }}\nbare_newline = {{ enable = true }}\n{extra}"
    );
    Doorman::start(
        &config_with(backend, "v2", "", "5s", &sections),
        "127.0.0.1\n",
    )
}
