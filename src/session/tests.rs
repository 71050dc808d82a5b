//! The session's phases in-process, over tokio's duplex streams: no socket,
//! no child process, the real engine and replies.

use std::path::Path;

use tokio::io::{duplex, join, simplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::config::Config;
use crate::config::Registry;

/// A session whose client is the other end of a duplex stream, with the
/// config `sections` appended to a minimal one.
fn over_duplex(sections: &str) -> (Session<Channel<DuplexStream>>, DuplexStream) {
    over_duplex_of(sections, 8192)
}

/// [`over_duplex`] with a duplex stream that holds `capacity` bytes in
/// each direction.
fn over_duplex_of(
    sections: &str,
    capacity: usize,
) -> (Session<Channel<DuplexStream>>, DuplexStream) {
    let text = format!(
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:9\"\n[cache]\nstore = \"memory\"\n{sections}"
    );
    let config = Config::parse(&text, Path::new("/nonexistent/doorman.toml")).expect("config");
    let process = ProcessState {
        registry: Arc::new(Registry::standard()),
        ..ProcessState::default()
    };
    let shared = Arc::new(ConfigState::new(config, None, &process).expect("shared"));
    let (client, server) = duplex(capacity);
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

/// The engine run of a client the gates let on to the deep tests, none
/// of them enabled, whose RCPT is refused.
fn engine_run() -> EngineRun {
    EngineRun {
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
    }
}

#[tokio::test]
async fn the_engine_phase_runs_over_any_stream() {
    let (mut session, mut client) = over_duplex("");
    let run = engine_run();
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

/// How long a test waits for a peer before it fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// Reads from `stream` until what it read ends with `end`, within
/// [`PATIENCE`].
async fn read_until(stream: &mut (impl AsyncRead + Unpin), end: &str) -> String {
    let mut read = Vec::new();
    let reading = async {
        while !read.ends_with(end.as_bytes()) {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&read));
            read.extend_from_slice(&chunk[..n]);
        }
    };
    let done = tokio::time::timeout(PATIENCE, reading).await;
    let text = String::from_utf8_lossy(&read).into_owned();
    assert!(done.is_ok(), "waited for {end:?}, got only {text:?}");
    text
}

/// A `[tls]` section with the test certificate for mx.test
/// (`fixtures/tls`, P-256, valid until 2126, made with `openssl req -x509
/// -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 36500`).
fn tls_sections() -> String {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tls");
    format!(
        "[tls]\n[[tls.certificate]]\nchain = \"{fixtures}/mx.test.pem\"\nkey = \"{fixtures}/mx.test.key\"\n"
    )
}

/// `future`'s output, or a failed test after [`PATIENCE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
}

/// doorman's TLS client (the one it uses for its backends) on `stream`.
async fn tls_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
) -> tokio_rustls::client::TlsStream<S> {
    // Any certificate, its signatures checked.
    let config = crate::tls::backend::client_config(None).expect("client config");
    let server = rustls::pki_types::ServerName::try_from("mx.test").expect("name");
    let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server, stream);
    within("the client's handshake", connect)
        .await
        .expect("handshake")
}

/// Inside TLS a write returns once rustls holds the bytes; over a socket
/// that takes fewer bytes than a reply's records, the rest would wait in
/// rustls until the next write, and the client for its reply until a
/// timeout. Every reply is flushed, so the client reads it whole.
#[tokio::test]
async fn a_reply_inside_tls_reaches_a_client_whose_socket_takes_little() {
    let sections = tls_sections();
    // 64 bytes: one TLS record of the EHLO reply is over twice that.
    let (mut session, mut client) = over_duplex_of(&sections, 64);
    let run = engine_run();
    let engine = tokio::spawn(async move { matches!(session.engine(run).await, Phase::Closed) });
    read_until(&mut client, "220 mx.test ESMTP\r\n").await;
    client
        .write_all(b"EHLO client.test\r\n")
        .await
        .expect("write");
    let plain = read_until(&mut client, "250 CHUNKING\r\n").await;
    assert!(plain.contains("250-STARTTLS\r\n"), "{plain:?}");
    client.write_all(b"STARTTLS\r\n").await.expect("write");
    read_until(&mut client, "220 2.0.0 Ready to start TLS\r\n").await;

    let mut tls = tls_client(client).await;
    tls.write_all(b"EHLO client.test\r\n").await.expect("write");
    tls.flush().await.expect("flush");
    let reply = read_until(&mut tls, "250 CHUNKING\r\n").await;
    assert!(reply.starts_with("250-mx.test\r\n"), "{reply:?}");
    assert!(!reply.contains("STARTTLS"), "{reply:?}");
    tls.write_all(b"QUIT\r\n").await.expect("write");
    tls.flush().await.expect("flush");
    read_until(&mut tls, "221 2.0.0 Bye\r\n").await;
    assert!(
        engine.await.expect("engine"),
        "the engine closed after QUIT"
    );
}

/// The same toward a backend: a command doorman sends inside TLS reaches
/// the backend whole, over a socket that takes less than its record. (The
/// way back holds more: the backend's session tickets wait there while
/// doorman writes, as a kernel's socket buffer would hold them.)
#[tokio::test]
async fn a_command_inside_tls_reaches_a_backend_whose_socket_takes_little() {
    let (session, _client) = over_duplex(&tls_sections());
    let server = session.shared.tls.clone().expect("[tls]");
    let (to_backend_read, to_backend_write) = simplex(64);
    let (from_backend_read, from_backend_write) = simplex(64 * 1024);
    let ours = join(from_backend_read, to_backend_write);
    let theirs = join(to_backend_read, from_backend_write);
    let backend = tokio::spawn(async move {
        let mut stream = within("the backend's handshake", server.accept(theirs))
            .await
            .expect("handshake");
        let line = read_until(&mut stream, "\r\n").await;
        write_flushed(&mut stream, b"250 2.1.0 Ok\r\n")
            .await
            .expect("reply");
        line
    });
    let mut side = backend_side::BackendSide {
        stream: Channel::Tls(Box::new(tls_client(ours).await.into())),
        pending: BytesMut::new(),
        address: SocketAddr::from(([127, 0, 0, 1], 25)),
    };
    let command = format!("MAIL FROM:<{}@client.test>\r\n", "a".repeat(100));
    let reply = side
        .ask(command.as_bytes(), Duration::from_secs(5))
        .await
        .expect("the backend's reply");
    assert_eq!(reply, b"250 2.1.0 Ok\r\n");
    assert_eq!(
        within("the backend", backend).await.expect("backend"),
        command
    );
}
