//! The session's phases in-process, over tokio's duplex streams: no socket,
//! no child process, the real engine and replies.

use std::path::Path;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::config::Config;
use crate::config::Registry;

/// A session whose client is the other end of a duplex stream, with the
/// config `sections` appended to a minimal one.
fn over_duplex(sections: &str) -> (Session<Channel<DuplexStream>>, DuplexStream) {
    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:9\"\n[cache]\nstore = \"memory\"\n{sections}"
    );
    let config = Config::parse(&text, Path::new("/nonexistent/doorman.toml")).expect("config");
    let process = ProcessState {
        registry: Arc::new(Registry::standard()),
        ..ProcessState::default()
    };
    let shared = Arc::new(ConfigState::new(config, None, &process).expect("shared"));
    let (client, server) = duplex(8192);
    let session = Session {
        stream: Channel::Plain(server),
        peer: SocketAddr::from(([192, 0, 2, 7], 40000)),
        listening: SocketAddr::from(([127, 0, 0, 1], 25)),
        mode: ProxyMode::Optional,
        shared,
        process: Arc::new(process),
        admitted: None,
        screening: None,
        buffer: BytesMut::new(),
        cluster: String::new(),
        errors: 0,
        counted: std::sync::atomic::AtomicBool::new(false),
    };
    (session, client)
}

#[tokio::test]
async fn the_engine_phase_runs_over_any_stream() {
    let (mut session, mut client) = over_duplex("");
    let run = EngineRun {
        client: Client {
            address: SocketAddr::from(([192, 0, 2, 7], 40000)),
            destination: SocketAddr::from(([198, 51, 100, 25], 25)),
            tlvs: Vec::new(),
        },
        rcpt: RcptPolicy::Refuse(
            "550 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.test\r\n".into(),
        ),
        pregreeted: false,
        deep: DeepTests::new(Vec::new(), &[]),
        pass: None,
        score: Some(2),
        judged: Judged::ByGates,
        transaction: 0,
        names: ClientNames::default(),
    };
    let engine = tokio::spawn(async move { matches!(session.engine(run).await, Phase::Closed) });
    client
        .write_all(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@doorman.test>\r\nQUIT\r\n")
        .await
        .expect("write");
    let mut transcript = String::new();
    client.read_to_string(&mut transcript).await.expect("read");
    assert_eq!(
        transcript,
        "220 mx.test ESMTP\r\n\
250-mx.test\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n\
250 2.1.0 Ok\r\n\
550 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.test\r\n\
221 2.0.0 Bye\r\n"
    );
    assert!(
        engine.await.expect("engine"),
        "the engine closed after QUIT"
    );
}
