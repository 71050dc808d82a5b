//! The Postfix policy service gate: a recording policy server written here
//! pins the exact request, every action's reply and every failure's
//! default action; Debian's postgrey greylists through it for real.

mod connections;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::*;

const BANNER: &str = "220 mx.doorman.test ESMTP\r\n";

/// A policy server that records each request and answers by the
/// recipient's local part.
struct Recorder {
    address: String,
    requests: Arc<Mutex<VecDeque<String>>>,
}

impl Recorder {
    fn start() -> Self {
        Self::start_tcp(false)
    }

    /// A service that closes each connection after its first answer, as
    /// many do.
    fn start_closing() -> Self {
        Self::start_tcp(true)
    }

    fn start_tcp(closing: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        Self::serving(address, closing, move || {
            let (stream, _) = listener.accept().ok()?;
            Some((stream.try_clone().ok()?, stream))
        })
    }

    /// The same on a unix socket at `path`; its address is `unix:<path>`.
    fn start_unix(path: &std::path::Path) -> Self {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        Self::serving(format!("unix:{}", path.display()), false, move || {
            let (stream, _) = listener.accept().ok()?;
            Some((stream.try_clone().ok()?, stream))
        })
    }

    /// Serves every connection `accept` gives (a reader and a writer),
    /// closing each after its first answer when `closing`.
    fn serving<S: Read + Write + Send + 'static>(
        address: String,
        closing: bool,
        mut accept: impl FnMut() -> Option<(S, S)> + Send + 'static,
    ) -> Self {
        let requests = Arc::new(Mutex::new(VecDeque::new()));
        let recorded = Arc::clone(&requests);
        thread::spawn(move || {
            while let Some((reader, writer)) = accept() {
                let recorded = Arc::clone(&recorded);
                thread::spawn(move || serve(reader, writer, recorded, closing));
            }
        });
        Self { address, requests }
    }

    fn request(&self, n: usize) -> String {
        self.requests.lock().unwrap()[n].clone()
    }

    /// The `instance` attribute of request `n`.
    fn instance(&self, n: usize) -> String {
        let request = self.request(n);
        request
            .lines()
            .find_map(|l| l.strip_prefix("instance="))
            .unwrap_or_else(|| panic!("no instance in {request}"))
            .to_string()
    }
}

fn serve(
    stream: impl Read,
    mut writer: impl Write,
    recorded: Arc<Mutex<VecDeque<String>>>,
    closing: bool,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            request.push_str(&line);
            if line == "\n" {
                break;
            }
        }
        recorded.lock().unwrap().push_back(request.clone());
        let recipient = request
            .lines()
            .find_map(|l| l.strip_prefix("recipient="))
            .unwrap_or_default()
            .to_string();
        let local = recipient.split('@').next().unwrap_or_default();
        let action = match local {
            "ok" => "OK",
            "dunno" => "DUNNO",
            "reject" => "REJECT",
            "rejecttext" => "REJECT no entry here",
            "defer" => "DEFER try later",
            "dip" => "DEFER_IF_PERMIT 4.2.0 greylisted by the recorder",
            "dir" => "DEFER_IF_REJECT maybe",
            "n451" => "451 4.3.5 busy",
            "n552" => "552 5.2.2 mailbox full",
            "prepend" => "PREPEND X-Policy: seen",
            "weird" => "FROBNICATE",
            "silent" => {
                thread::sleep(Duration::from_secs(3));
                return;
            }
            "garbage" => {
                let _ = writer.write_all(b"hello there\n\n");
                continue;
            }
            "huge" => {
                let _ = writer.write_all(&vec![b'x'; 200_000]);
                thread::sleep(Duration::from_secs(3));
                return;
            }
            "close" => {
                let _ = writer.write_all(b"action=O");
                return;
            }
            _ => "DUNNO",
        };
        let _ = writer.write_all(format!("action={action}\n\n").as_bytes());
        if closing {
            return;
        }
    }
}

fn start(backend: &FakeBackend, policy: &str, clients: &str) -> Doorman {
    start_with(backend, policy, clients, "")
}

/// As [`start`], with `extra` sections (a `[tls]`).
fn start_with(backend: &FakeBackend, policy: &str, clients: &str, extra: &str) -> Doorman {
    let sections = format!(
        "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n\
[policy]\naddress = \"{policy}\"\nclients = \"{clients}\"\ntimeout = \"1s\"\n{extra}"
    );
    let config = format!(
        "gates = [\"access\", \"pregreet\", \"dnsbl\", \"deep\", \"policy\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    Doorman::start(&config, "127.0.0.1\n")
}

fn say(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).unwrap();
}

fn rcpt(stream: &mut TcpStream, to: &str) -> String {
    say(stream, &format!("RCPT TO:<{to}@doorman.test>\r\n"));
    read_line(stream)
}

fn refused(code: &str, to: &str, text: &str) -> String {
    format!("{code} <{to}@doorman.test>: Recipient address rejected: {text}\r\n")
}

#[test]
fn every_action_and_failure_answers_as_postfix_would() {
    let recorder = Recorder::start();
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, &recorder.address, "all");
    let mut client = connect_as(&doorman, "203.0.113.50");
    assert_eq!(
        read_line(&mut client),
        BANNER,
        "every client meets the engine"
    );
    say(&mut client, "EHLO client.test\r\n");
    while !read_line(&mut client).starts_with("250 ") {}
    say(&mut client, "MAIL FROM:<s@client.test>\r\n");
    assert_eq!(read_line(&mut client), "250 2.1.0 Ok\r\n");
    let server_error = "Server configuration problem";
    for (to, reply) in [
        ("reject", refused("554 5.7.1", "reject", "Access denied")),
        (
            "rejecttext",
            refused("554 5.7.1", "rejecttext", "no entry here"),
        ),
        ("defer", refused("450 4.7.1", "defer", "try later")),
        (
            "dip",
            refused("450 4.2.0", "dip", "greylisted by the recorder"),
        ),
        ("n451", refused("451 4.3.5", "n451", "busy")),
        ("n552", refused("552 5.2.2", "n552", "mailbox full")),
        ("silent", refused("451 4.3.5", "silent", server_error)),
        ("garbage", refused("451 4.3.5", "garbage", server_error)),
        ("huge", refused("451 4.3.5", "huge", server_error)),
        ("close", refused("451 4.3.5", "close", server_error)),
        // Accepted: the dialogue is replayed into the backend.
        ("ok", "250 2.0.0 ok\r\n".to_string()),
        // Later recipients meet the service again, through the relay.
        ("dunno", "250 2.0.0 ok\r\n".to_string()),
        ("prepend", "250 2.0.0 ok\r\n".to_string()),
        ("weird", "250 2.0.0 ok\r\n".to_string()),
        ("dir", "250 2.0.0 ok\r\n".to_string()),
        ("defer", refused("450 4.7.1", "defer", "try later")),
    ] {
        assert_eq!(rcpt(&mut client, to), reply, "{to}");
    }
    assert_eq!(
        recorder.request(0),
        format!(
            "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
helo_name=client.test\nqueue_id=\nsender=s@client.test\nrecipient=reject@doorman.test\n\
recipient_count=0\nclient_address=203.0.113.50\nclient_name=unknown\n\
reverse_client_name=unknown\ninstance=mx.doorman.test.1\nsasl_method=\nsasl_username=\n\
sasl_sender=\nsize=0\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n\
ccert_pubkey_fingerprint=\nencryption_protocol=\nencryption_cipher=\nencryption_keysize=0\n\
etrn_domain=\nstress=\nclient_port=40000\npolicy_context=\nserver_address=198.51.100.25\n\
server_port=25\n\n"
        )
    );
    let after_replay = recorder.request(11);
    assert!(
        after_replay.contains("recipient=dunno@doorman.test\n"),
        "{after_replay}"
    );
    assert!(
        after_replay.contains("recipient_count=1\n"),
        "{after_replay}"
    );
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from unknown[203.0.113.50]: 554 5.7.1 <reject@doorman.test>: Recipient address rejected: Access denied; from=<s@client.test> to=<reject@doorman.test> proto=ESMTP helo=<client.test>",
        Duration::from_secs(5),
    );
    let address = &recorder.address;
    for why in [
        "no reply within 1s",
        "reply without action=",
        "reply too long",
        "connection closed mid-reply",
    ] {
        doorman.log.wait_for(
            &format!("warning: problem talking to server {address}: {why}"),
            Duration::from_secs(5),
        );
    }
    doorman.log.wait_for(
        &format!("warning: policy {address}: unknown action \"FROBNICATE\", taken as DUNNO"),
        Duration::from_secs(5),
    );
    let received = String::from_utf8_lossy(&backend.wait_bytes(0, 1)).into_owned();
    assert!(!received.contains("reject@"), "{received}");
}

#[test]
fn a_dead_service_gets_the_default_action_and_doubtful_scope_spares_clean_clients() {
    let backend = FakeBackend::start(true);
    let (_held, dead) = dead_address();
    let doorman = start(&backend, &dead.to_string(), "all");
    let mut client = connect_as(&doorman, "203.0.113.51");
    assert_eq!(read_line(&mut client), BANNER);
    helo_and_mail(&mut client, "s@client.test");
    assert_eq!(
        rcpt(&mut client, "anyone"),
        refused("451 4.3.5", "anyone", "Server configuration problem")
    );

    // With clients = "doubtful", a clean client goes straight through.
    let doubtful = start(&backend, &dead.to_string(), "doubtful");
    let mut clean = connect_as(&doubtful, "203.0.113.52");
    assert_eq!(read_line(&mut clean), "220 backend.test ESMTP fake\r\n");
}

#[test]
fn postgrey_greylists_through_the_policy_gate() {
    if !require_program("postgrey") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    let _ = Command::new("chown").args(["postgrey"]).arg(&db).status();
    let port = free_port();
    let mut command = Command::new("postgrey");
    command
        .arg(format!("--inet=127.0.0.1:{port}"))
        .arg("--delay=2")
        .arg(format!("--dbdir={}", db.display()))
        .arg(format!("--pidfile={}", dir.path().join("pid").display()))
        .args(["--user=postgrey", "--group=nogroup"]);
    let _postgrey = spawn(command, "postgrey");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "postgrey did not start"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, &format!("127.0.0.1:{port}"), "all");
    let attempt = || {
        let mut client = connect_as(&doorman, "203.0.113.53");
        assert_eq!(read_line(&mut client), BANNER);
        helo_and_mail(&mut client, "alice@sender.test");
        let reply = rcpt(&mut client, "bob");
        (client, reply)
    };
    let (_first, reply) = attempt();
    assert_eq!(
        reply,
        refused(
            "450 4.2.0",
            "bob",
            "Greylisted, see http://postgrey.schweikert.ch/help/doorman.test.html"
        )
    );
    thread::sleep(Duration::from_millis(2500));
    let (mut retry, reply) = attempt();
    assert_eq!(reply, "250 2.0.0 ok\r\n", "accepted after postgrey's delay");
    say(&mut retry, "QUIT\r\n");
    let mut rest = String::new();
    let _ = retry.read_to_string(&mut rest);
}

#[test]
fn client_names_come_from_the_reverse_dns_gate() {
    let Some(dns) = Dnsmasq::start(
        "host-record=mail.good.test,203.0.113.30\n\
ptr-record=32.113.0.203.in-addr.arpa,forged.test\nhost-record=forged.test,203.0.113.99\n",
    ) else {
        return;
    };
    let recorder = Recorder::start();
    let backend = FakeBackend::start(true);
    let sections = format!(
        "[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n\
[dnsbl]\nthreshold = 5\nnameservers = [\"{}\"]\n[rdns]\nnot_confirmed = 0\n\
[policy]\naddress = \"{}\"\nclients = \"all\"\ntimeout = \"1s\"\n",
        dns.address, recorder.address
    );
    let config = format!(
        "gates = [\"rdns\", \"policy\"]\n{}",
        config_with(backend.address, "v2", "", "5s", &sections)
    );
    let doorman = Doorman::start(&config, "127.0.0.1\n");
    for (n, (client, names)) in [
        (
            "203.0.113.30",
            "client_name=mail.good.test\nreverse_client_name=mail.good.test\n",
        ),
        (
            "203.0.113.32",
            "client_name=unknown\nreverse_client_name=forged.test\n",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut stream = connect_as(&doorman, client);
        assert_eq!(read_line(&mut stream), BANNER);
        helo_and_mail(&mut stream, "s@client.test");
        assert_eq!(
            rcpt(&mut stream, "reject"),
            refused("554 5.7.1", "reject", "Access denied")
        );
        let request = recorder.request(n);
        assert!(request.contains(names), "{request}");
    }
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from mail.good.test[203.0.113.30]: 554 5.7.1",
        Duration::from_secs(5),
    );
}

#[test]
fn a_policy_service_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start_unix(&dir.path().join("policy.sock"));
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, &recorder.address, "all");
    let mut client = connect_as(&doorman, "203.0.113.54");
    assert_eq!(read_line(&mut client), BANNER);
    helo_and_mail(&mut client, "s@client.test");
    assert_eq!(
        rcpt(&mut client, "reject"),
        refused("554 5.7.1", "reject", "Access denied")
    );
    assert_eq!(rcpt(&mut client, "ok"), "250 2.0.0 ok\r\n");
    assert!(recorder
        .request(0)
        .contains("client_address=203.0.113.54\n"));
}

#[test]
fn a_client_in_tls_is_described_by_the_encryption_attributes() {
    if !require_program("openssl") {
        return;
    }
    use crate::support::tls::*;
    let certs = tempfile::tempdir().unwrap();
    let pair = certificate(certs.path(), "mx", "mx.doorman.test", Key::Rsa, 30);
    let recorder = Recorder::start();
    let backend = FakeBackend::start(true);
    let doorman = start_with(
        &backend,
        &recorder.address,
        "all",
        &tls_section(&[pair], ""),
    );
    let mut client = connect_as(&doorman, "203.0.113.51");
    assert_eq!(read_line(&mut client), BANNER);
    say(&mut client, "STARTTLS\r\n");
    assert_eq!(read_line(&mut client), "220 2.0.0 Ready to start TLS\r\n");
    let mut tls = start_tls(client, None);
    say_tls(
        &mut tls,
        "EHLO client.test\r\nMAIL FROM:<s@client.test>\r\n",
    );
    assert!(reply_tls(&mut tls).starts_with("250"));
    assert_eq!(reply_tls(&mut tls), "250 2.1.0 Ok\r\n");
    // The first RCPT in the engine, the second through the gated relay.
    for to in ["ok", "dunno"] {
        say_tls(&mut tls, &format!("RCPT TO:<{to}@doorman.test>\r\n"));
        assert_eq!(reply_tls(&mut tls), "250 2.0.0 ok\r\n", "{to}");
    }
    for n in 0..2 {
        let request = recorder.request(n);
        assert!(
            request.contains(
                "encryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_128_GCM_SHA256\nencryption_keysize=128\n"
            ),
            "{request}"
        );
    }
}
