//! A `required` listener with `defer_accept`: the kernel hands doorman a
//! connection once its first bytes are in.

use std::io::Write;
use std::time::{Duration, Instant};

use super::*;

/// With `defer_accept`, a connection reaches doorman once its first bytes
/// are in: a silent unlisted peer is held by the kernel, then closed
/// without a byte about a second later; one that sends a byte is closed at
/// once; a silent listed proxy gets its `PROXY timed out` a second late;
/// and a listed proxy that sends its header at once is served as before.
#[test]
fn a_deferred_required_listener_takes_connections_with_their_first_bytes() {
    let backend = FakeBackend::start(true);
    let doorman = Doorman::start(
        &config(
            backend.address,
            "v2",
            "proxy = \"required\"\ndefer_accept = true",
            "1s",
        ),
        "127.0.0.1\n",
    );
    let held = |client: &mut std::net::TcpStream| {
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let waited = std::io::Read::read(client, &mut [0; 1]).unwrap_err();
        assert!(
            matches!(
                waited.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{waited:?}"
        );
        client
            .set_read_timeout(Some(Duration::from_secs(6)))
            .unwrap();
    };
    let started = Instant::now();
    let mut silent = connect_from(UNLISTED, doorman.address);
    held(&mut silent);
    assert_eq!(read_to_close(&mut silent), "");
    assert!(started.elapsed() > Duration::from_millis(800));
    let mut speaking = connect_from(UNLISTED, doorman.address);
    held(&mut speaking);
    let spoke = Instant::now();
    speaking.write_all(b"E").unwrap();
    assert_eq!(read_to_close(&mut speaking), "");
    assert!(spoke.elapsed() < Duration::from_millis(500));
    doorman.log.wait_for(
        "warning: connection from [127.0.0.9]:",
        Duration::from_secs(5),
    );
    let started = Instant::now();
    let mut silent_proxy = connect_from(LISTED, doorman.address);
    assert_eq!(
        read_to_close(&mut silent_proxy),
        "421 4.4.2 PROXY timed out\r\n"
    );
    assert!(started.elapsed() > Duration::from_millis(1800));
    let mut proxied_client = connect_from(LISTED, doorman.address);
    proxied_client.write_all(CLIENT_HEADER).unwrap();
    assert_eq!(read_line(&mut proxied_client), BACKEND_BANNER);
}
