//! A gate written here, plugged in through the registry, with all three
//! hooks: at connect, during the greet wait, and at RCPT. doorman runs in
//! this process (a build with a gate of its own) and is talked to over
//! loopback sockets, in front of the fake backend.

mod support;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use doorman::config::Config;
use doorman::gates::{GateError, Registry, Resources};
use doorman::listener::Server;
use doorman_gate_api::{
    Action, Client, Command, Finding, Gate, GateFuture, Rejection, Score, Stage, Verdict, Waiting,
};
use support::*;

/// Refuses 203.0.113.1 at connect, scores 203.0.113.2 +5 after 100 ms of
/// "lookups", and refuses RCPT to a spamtrap.
struct Probe;

impl Gate for Probe {
    fn connect(&self, client: &Client) -> Verdict {
        if client.ip().to_string() == "203.0.113.1" {
            return Verdict::Reject(Rejection::new(
                Action::Enforce,
                "5.7.1 probe refuses at connect",
            ));
        }
        Verdict::Dunno
    }

    fn has_wait_hook(&self) -> bool {
        true
    }

    fn wait(&self, client: &Client) -> Option<Box<dyn Waiting>> {
        let listed = client.ip().to_string() == "203.0.113.2";
        Some(Box::new(Lookup {
            answer: Some(Box::pin(tokio::time::sleep(Duration::from_millis(100)))),
            listed,
        }))
    }

    fn command<'a>(&'a self, _client: &'a Client, command: Command<'a>) -> GateFuture<'a, Verdict> {
        let verdict = if command.stage == Stage::Rcpt && command.argument == "trap@doorman.test" {
            Verdict::Reject(Rejection::new(
                Action::Enforce,
                format!(
                    "5.7.1 <{}>: Recipient address rejected: spamtrap (sender {})",
                    command.argument,
                    command.envelope.sender.as_deref().unwrap_or_default()
                ),
            ))
        } else {
            Verdict::Dunno
        };
        Box::pin(std::future::ready(verdict))
    }
}

/// A lookup that answers after a delay.
struct Lookup {
    answer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    listed: bool,
}

impl Waiting for Lookup {
    fn progress(&mut self) -> GateFuture<'_, ()> {
        Box::pin(async move {
            if let Some(answer) = self.answer.as_mut() {
                answer.as_mut().await;
                self.answer = None;
            }
        })
    }

    fn is_complete(&self) -> bool {
        self.answer.is_none()
    }

    fn verdict(&self) -> Verdict {
        let findings = if self.listed {
            vec![Finding {
                name: "probe.listed".into(),
                weight: 5,
            }]
        } else {
            Vec::new()
        };
        Verdict::Score(Score {
            findings,
            ttl: Some(Duration::from_secs(60)),
            complete: self.is_complete(),
        })
    }
}

fn probe(_: &Config, _: &Resources) -> Result<Option<Arc<dyn Gate>>, GateError> {
    Ok(Some(Arc::new(Probe)))
}

/// doorman with the probe gate, in this process, on a free port.
fn start(backend: &FakeBackend) -> SocketAddr {
    let dir = tempfile::tempdir().unwrap().keep();
    let port = free_port();
    let config = format!(
        "hostname = \"mx.doorman.test\"\ngates = [\"access\", \"probe\", \"pregreet\", \"dnsbl\", \"deep\"]\n\
[proxy]\nhosts_file = \"haproxy_hosts\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
[[backend]]\naddress = \"{}\"\nsend_proxy = \"v2\"\n\
[greet]\nbanner = \"\"\n[dnsbl]\nthreshold = 3\naction = \"enforce\"\n[cache]\nstore = \"memory\"\n\
[deep_tests]\npipelining = {{ enable = true }}\n",
        backend.address
    );
    std::fs::write(dir.join("doorman.toml"), config).unwrap();
    std::fs::write(dir.join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    let registry = Registry::standard().with("probe", probe);
    let config = Config::load_with(&dir.join("doorman.toml"), &registry).expect("config");
    let (ready, bound) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let server = Server::bind_with(config, registry).await.expect("bind");
            ready.send(()).unwrap();
            server.serve(std::future::pending()).await;
        });
    });
    bound.recv_timeout(Duration::from_secs(10)).unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn client(doorman: SocketAddr, ip: &str) -> TcpStream {
    let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 1), doorman);
    stream
        .write_all(format!("PROXY TCP4 {ip} 198.51.100.25 40000 25\r\n").as_bytes())
        .unwrap();
    stream
}

fn say(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).unwrap();
}

/// HELO and MAIL, then the reply to RCPT TO `to`.
fn rcpt(stream: &mut TcpStream, to: &str) -> String {
    helo_and_mail(stream, "s@client.test");
    say(stream, &format!("RCPT TO:<{to}>\r\n"));
    read_line(stream)
}

const BANNER: &str = "220 mx.doorman.test ESMTP\r\n";

#[test]
fn a_gate_of_its_own_carries_the_connect_wait_and_rcpt_hooks() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend);

    // At connect: refused under enforce, so every RCPT gets its reply.
    let mut refused = client(doorman, "203.0.113.1");
    assert_eq!(read_line(&mut refused), BANNER);
    assert_eq!(
        rcpt(&mut refused, "a@doorman.test"),
        "550 5.7.1 probe refuses at connect\r\n"
    );

    // During the wait: its weight reaches [dnsbl] threshold with no DNSBL
    // site configured, and the reply names its finding.
    let mut listed = client(doorman, "203.0.113.2");
    assert_eq!(read_line(&mut listed), BANNER);
    assert_eq!(
        rcpt(&mut listed, "a@doorman.test"),
        "550 5.7.1 Service unavailable; client [203.0.113.2] blocked using probe.listed\r\n"
    );

    // At RCPT: the trap is refused with the envelope's sender, the next
    // recipient passes and the dialogue is replayed into the backend.
    let mut clean = client(doorman, "203.0.113.3");
    assert_eq!(read_line(&mut clean), BANNER);
    assert_eq!(
        rcpt(&mut clean, "trap@doorman.test"),
        "550 5.7.1 <trap@doorman.test>: Recipient address rejected: spamtrap (sender s@client.test)\r\n"
    );
    say(&mut clean, "RCPT TO:<good@doorman.test>\r\n");
    assert_eq!(read_line(&mut clean), "250 2.0.0 ok\r\n");
    // The backend's first client connection is this replay.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let received = loop {
        let bytes = String::from_utf8_lossy(&backend.wait_bytes(0, 1)).into_owned();
        if bytes.contains("RCPT TO:<good@doorman.test>") {
            break bytes;
        }
        assert!(std::time::Instant::now() < deadline, "{bytes}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !received.contains("trap@"),
        "a refused recipient is not replayed"
    );
    drop(clean);

    // Its pass (and the deep test's) is remembered: straight to the backend.
    let mut again = client(doorman, "203.0.113.3");
    assert_eq!(read_line(&mut again), "220 backend.test ESMTP fake\r\n");
}

#[test]
fn an_unknown_gate_is_a_config_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doorman.toml");
    std::fs::write(
        &path,
        "hostname = \"mx.test\"\n\ngates = [\"access\", \"nosuch\"]\n[[listener]]\naddress = \"127.0.0.1:25\"\n[[backend]]\naddress = \"127.0.0.1:26\"\n",
    )
    .unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(error.contains("doorman.toml:3:"), "{error}");
    assert!(error.contains("unknown gate \"nosuch\""), "{error}");
    let twice = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"nosuch\"", "\"access\"");
    std::fs::write(&path, twice).unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(error.contains("listed twice"), "{error}");
    // The same name is fine once the registry knows it.
    let known = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[\"access\", \"access\"]", "[\"probe\"]");
    std::fs::write(&path, known).unwrap();
    assert!(Config::load(&path).is_err());
    assert!(Config::load_with(&path, &Registry::standard().with("probe", probe)).is_ok());
}
