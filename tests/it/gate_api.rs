//! A gate written here, plugged in through the registry, with a config
//! section of its own, all three hooks (at connect, during the greet wait,
//! at RCPT) and its lines in `doorman explain`. doorman runs in this
//! process (a build with a gate of its own) and is talked to over loopback
//! sockets, in front of the fake backend. Nothing else in doorman knows
//! the gate: its crate (this file) and one registry line are all it takes.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use doorman::config::{Config, Registry};
use doorman::listener::Server;
use doorman_gate_api::{
    Action, BuildError, Client, Command, Finding, Gate, GateFuture, GateSection, Rejection,
    Resources, Score, SectionContext, SectionError, Stage, Verdict, Waiting,
};

/// The probe's own `[probe]` section.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProbeSection {
    /// The address refused at connect.
    refused: String,
    /// The address its "lookups" list.
    listed: String,
    /// The spamtrap recipient.
    trap: String,
    /// What a listing weighs.
    #[serde(default = "five")]
    weight: i32,
}

fn five() -> i32 {
    5
}

impl GateSection for ProbeSection {
    fn judges_commands(&self) -> bool {
        true
    }

    fn check(&mut self, _: &SectionContext) -> Result<(), SectionError> {
        if !self.trap.contains('@') {
            return Err(SectionError::key("trap", "trap must be an address"));
        }
        Ok(())
    }

    fn build(
        &self,
        _: &SectionContext,
        _: &Resources,
    ) -> Result<Option<Arc<dyn Gate>>, BuildError> {
        Ok(Some(Arc::new(Probe {
            refused: self.refused.clone(),
            listed: self.listed.clone(),
            trap: self.trap.clone(),
            weight: self.weight,
        })))
    }
}

/// Refuses one address at connect, scores another after 100 ms of
/// "lookups", and refuses RCPT to a spamtrap.
struct Probe {
    refused: String,
    listed: String,
    trap: String,
    weight: i32,
}

impl Gate for Probe {
    fn explain_connect(&self, client: &Client) -> Option<String> {
        let refused = client.ip().to_string() == self.refused;
        Some(format!(
            "probe: refuses {} at connect: {refused}",
            self.refused
        ))
    }

    fn explain_dialogue(&self, _score: i32) -> Option<String> {
        Some(format!("refuses RCPT TO:<{}>", self.trap))
    }

    fn connect(&self, client: &Client) -> Verdict {
        if client.ip().to_string() == self.refused {
            return Verdict::Reject(Rejection::new(
                Action::Enforce,
                "5.7.1",
                "probe refuses at connect",
            ));
        }
        Verdict::Dunno
    }

    fn has_wait_hook(&self) -> bool {
        true
    }

    fn wait(&self, client: &Client) -> Option<Box<dyn Waiting>> {
        let listed = client.ip().to_string() == self.listed;
        Some(Box::new(Lookup {
            answer: Some(Box::pin(tokio::time::sleep(Duration::from_millis(100)))),
            listed,
            weight: self.weight,
        }))
    }

    fn command<'a>(&'a self, _client: &'a Client, command: Command<'a>) -> GateFuture<'a, Verdict> {
        let verdict = if command.stage == Stage::Rcpt && command.argument == self.trap {
            Verdict::Reject(Rejection::new(
                Action::Enforce,
                "5.7.1",
                format!(
                    "<{}>: Recipient address rejected: spamtrap (sender {})",
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
    weight: i32,
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

    fn explain(&self, _wait: Duration) -> Vec<String> {
        vec![format!("probe lookup: listed {}", self.listed)]
    }

    fn verdict(&self) -> Verdict {
        let findings = if self.listed {
            vec![Finding {
                name: "probe.listed".into(),
                weight: self.weight,
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

/// The registry of this build: the shipped gates and the probe.
fn registry() -> Registry {
    Registry::standard().with::<ProbeSection>("probe")
}

/// The config of doorman with the probe gate, written to a folder.
fn config(backend: &FakeBackend, port: u16) -> Config {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = format!(
        "hostname = \"mx.doorman.test\"\ngates = [\"access\", \"probe\", \"pregreet\", \"dnsbl\", \"deep\"]\n\
[proxy]\nhosts_file = \"haproxy_hosts\"\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
[[backend]]\naddress = \"{}\"\nsend_proxy = \"v2\"\n\
[greet]\nbanner = \"\"\n[score]\nthreshold = 3\naction = \"enforce\"\n[cache]\nstore = \"memory\"\n\
[deep_tests]\npipelining = {{ enable = true }}\n\
[probe]\nrefused = \"203.0.113.1\"\nlisted = \"203.0.113.2\"\ntrap = \"trap@doorman.test\"\n",
        backend.address
    );
    std::fs::write(dir.join("doorman.toml"), config).unwrap();
    std::fs::write(dir.join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    Config::load_with(&dir.join("doorman.toml"), &registry()).expect("config")
}

/// doorman with the probe gate, in this process, on a free port.
fn start(backend: &FakeBackend) -> SocketAddr {
    let port = free_port();
    let config = config(backend, port);
    let registry = registry();
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

    // During the wait: its weight reaches [score] threshold with no DNSBL
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
    let section = "[probe]\nrefused = \"203.0.113.1\"\nlisted = \"203.0.113.2\"\n";
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("{section}trap = \"trap@doorman.test\"\n"));
    std::fs::write(&path, &text).unwrap();
    assert!(Config::load_with(&path, &registry()).is_ok());
    // Its section's own errors come with their lines: a check on line 11,
    // a key it does not know on line 12.
    std::fs::write(&path, text.replace("trap@doorman.test", "no-at-sign")).unwrap();
    let error = Config::load_with(&path, &registry())
        .unwrap_err()
        .to_string();
    assert!(
        error.ends_with("doorman.toml:11: trap must be an address"),
        "{error}"
    );
    std::fs::write(&path, format!("{text}weigth = 2\n")).unwrap();
    let error = Config::load_with(&path, &registry())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("doorman.toml:12: weigth = 2: unknown field `weigth`"),
        "{error}"
    );
}

#[test]
fn explain_shows_a_gate_of_its_own() {
    let backend = FakeBackend::start(true);
    let config = config(&backend, free_port());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let explain = |ip: &str| {
        runtime
            .block_on(doorman::explain::explain(&config, ip.parse().unwrap()))
            .unwrap()
    };
    let listed = explain("203.0.113.2");
    for line in [
        "probe: refuses 203.0.113.1 at connect: false\n",
        "probe lookup: listed true\n",
        "score: 5 (threshold 3, allowlist threshold 0); fails: nothing remembered\n",
        "probe: not asked: refused before\n",
        "verdict: DNSBL rank 5: 5.7.1 Service unavailable; client [203.0.113.2] blocked using probe.listed, action enforce\n",
    ] {
        assert!(listed.contains(line), "missing {line:?} in:\n{listed}");
    }
    let refused = explain("203.0.113.1");
    assert!(
        refused.contains("probe: refuses 203.0.113.1 at connect: true\n"),
        "{refused}"
    );
    assert!(
        refused.contains(
            "verdict: denylisted (DENYLISTED): 5.7.1 probe refuses at connect, action enforce\n"
        ),
        "{refused}"
    );
    let clean = explain("203.0.113.3");
    assert!(
        clean.contains("probe: refuses RCPT TO:<trap@doorman.test>\n"),
        "{clean}"
    );
    assert!(clean.contains("access: nothing configured\n"), "{clean}");
}
