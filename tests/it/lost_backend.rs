//! A backend that hangs up while the client waits for its reply gets the
//! client a clean 4xx before the close, never a bare close, at every stage
//! of a transaction, BDAT chunks included: in the byte copy (a cached or
//! clean client to a PROXY backend) and in the read relay (a client that
//! met the engine).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::conversation::{ask, engine_first, greet, reply, steps};
use crate::support::*;

const LOST: &str = "421 4.4.2 mx.doorman.test Error: lost connection with the backend\r\n";

/// A PROXY v2 backend that answers as smtpd does (EHLO announces
/// CHUNKING, BDAT chunks are read by their count) until the command that
/// starts with `stage` (`"."`: the end of DATA; a BDAT after its chunk),
/// where it hangs up without a reply; its probes get answers.
fn backend_that_dies_at(stage: &'static str) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let Some(probe) = read_v2_header(&mut reader) else {
                    return;
                };
                let _ = writer.write_all(b"220 dying.test ESMTP\r\n");
                let (mut line, mut in_data) = (String::new(), false);
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let dies = !probe && line.starts_with(stage) && (!in_data || line == ".\r\n");
                    let reply: String = match (in_data, line.as_str()) {
                        (true, ".\r\n") => "250 2.0.0 Ok: queued\r\n".into(),
                        (true, _) => String::new(),
                        (false, text) if text.starts_with("BDAT ") => {
                            let size: usize = text
                                .split_whitespace()
                                .nth(1)
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            let mut chunk = vec![0u8; size];
                            if reader.read_exact(&mut chunk).is_err() {
                                return;
                            }
                            format!("250 2.0.0 Ok: {size} bytes\r\n")
                        }
                        (false, text) if text.starts_with("EHLO") => {
                            "250-dying.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n".into()
                        }
                        (false, text) if text.starts_with("DATA") => "354 go ahead\r\n".into(),
                        _ => "250 2.0.0 ok\r\n".into(),
                    };
                    if dies {
                        return;
                    }
                    in_data = (in_data && line != ".\r\n") || line.starts_with("DATA");
                    let _ = writer.write_all(reply.as_bytes());
                    line.clear();
                }
            });
        }
    });
    address
}

/// doorman that hands every client straight to `backend` (the byte copy).
fn byte_copy(backend: SocketAddr) -> Doorman {
    Doorman::start(
        &format!(
            "hostname = \"mx.doorman.test\"\n[proxy]\nhosts_file = \"haproxy_hosts\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\n[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n\
[[backend]]\naddress = \"{backend}\"\nconnect_timeout = \"1s\"\n"
        ),
        "127.0.0.1\n",
    )
}

const EHLO: &str = "EHLO client.test\r\n";
const MAIL: &str = "MAIL FROM:<a@client.test>\r\n";
const RCPT: &str = "RCPT TO:<b@doorman.test>\r\n";

/// Each stage, with the dialogue whose last command the backend dies at.
fn stages() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("EHLO", vec![EHLO]),
        ("MAIL", vec![EHLO, MAIL]),
        ("RCPT", vec![EHLO, MAIL, RCPT]),
        ("DATA", vec![EHLO, MAIL, RCPT, "DATA\r\n"]),
        (
            ".",
            vec![
                EHLO,
                MAIL,
                RCPT,
                "DATA\r\n",
                "Subject: x\r\n\r\nbody\r\n.\r\n",
            ],
        ),
        // A chunk that does not end in CRLF, and the last one.
        ("BDAT", vec![EHLO, MAIL, RCPT, "BDAT 5 LAST\r\nhello"]),
        (
            "BDAT 4 LAST",
            vec![
                EHLO,
                MAIL,
                RCPT,
                "BDAT 12\r\nSubject: x\r\n",
                "BDAT 4 LAST\r\nbody",
            ],
        ),
        ("BDAT", vec![EHLO, MAIL, RCPT, "BDAT 12\r\nSubject: x\r\n"]),
    ]
}

/// The byte copy: a backend that hangs up while the client waits for its
/// reply, at any stage of a transaction, gets the client smtpd's 421,
/// never a bare close, logged and counted.
#[test]
fn a_backend_lost_in_the_byte_copy_gets_the_client_a_421_at_every_stage() {
    for (stage, dialogue) in stages() {
        let doorman = byte_copy(backend_that_dies_at(stage));
        let mut client = connect_as(&doorman, "203.0.113.9");
        assert_eq!(read_line(&mut client), "220 dying.test ESMTP\r\n");
        let (last, before) = dialogue.split_last().unwrap();
        for line in before {
            client.write_all(line.as_bytes()).unwrap();
            let answer = whole_reply(&mut client);
            assert!(
                answer.starts_with('2') || answer.starts_with('3'),
                "{stage}: {answer}"
            );
        }
        client.write_all(last.as_bytes()).unwrap();
        assert_eq!(read_to_close(&mut client), LOST, "{stage}: {dialogue:?}");
        let line = doorman
            .log
            .wait_for("lost connection with backend", Duration::from_secs(5));
        assert!(
            line.contains("after RELAY for [203.0.113.9]"),
            "{stage}: {line}"
        );
    }
}

/// The read relay's BDAT: a backend lost after a chunk that is not the
/// last gets the client smtpd's 421; after `BDAT n LAST` (the end of the
/// message) Postfix's before-queue proxy reply, 451 4.3.0; each logged at
/// its stage. In plain text and inside doorman's TLS alike.
#[test]
fn a_backend_lost_after_a_bdat_chunk_in_the_read_relay_gets_the_client_a_clean_4xx() {
    let certs = tempfile::tempdir().unwrap();
    for tls in [false, true] {
        bdat_lost_in_the_read_relay(tls, certs.path());
    }
}

/// One round of the BDAT test above, the client in TLS or not.
fn bdat_lost_in_the_read_relay(tls: bool, certs: &std::path::Path) {
    let extra = match tls {
        true => crate::conversation::tls_config(certs, true),
        false => String::new(),
    };
    for (stage, chunks, answer, logged) in [
        (
            "BDAT 12",
            vec!["BDAT 12\r\nSubject: x\r\n"],
            LOST,
            "after BDAT",
        ),
        (
            "BDAT 4 LAST",
            vec!["BDAT 12\r\nSubject: x\r\n", "BDAT 4 LAST\r\nbody"],
            "451 4.3.0 Error: queue file write error\r\n",
            "after END-OF-MESSAGE",
        ),
    ] {
        let doorman = engine_first(backend_that_dies_at(stage), &extra);
        let mut s = greet(&doorman, "203.0.113.60", tls);
        steps(
            &mut *s,
            &[
                (MAIL, "250 2.1.0 Ok\r\n".to_string()),
                (RCPT, "250 2.0.0 ok\r\n".to_string()),
            ],
        );
        let (last, before) = chunks.split_last().unwrap();
        for chunk in before {
            assert_eq!(ask(&mut *s, chunk), "250 2.0.0 Ok: 12 bytes\r\n");
        }
        assert_eq!(ask(&mut *s, last), answer, "{stage}, TLS {tls}");
        assert_eq!(reply(&mut *s), "", "{stage}, TLS {tls}: closed after it");
        let line = doorman
            .log
            .wait_for("lost connection with backend", Duration::from_secs(5));
        assert!(
            line.contains(logged) && line.contains("[203.0.113.60]"),
            "{stage}: {line}"
        );
    }
}
