//! Loopback sockets for the tests: free ports, clients bound to chosen
//! loopback addresses, and line readers.

use super::*;

/// The first port after Linux's ephemeral range below (32768-60999 by
/// default) that `free_port` hands out: ports under it are never taken by an
/// outgoing connection's local port between the test's choice and the bind.
const FIXED_PORTS: std::ops::Range<u32> = 10_000..32_768;

/// A port free on 127.0.0.1 for TCP and UDP, below the ephemeral range and
/// never handed out twice by one test binary. (A port the kernel picked for
/// `:0` and released could be reused at once by a connection's local port,
/// and a daemon told to listen on it then fails with "Address already in
/// use".)
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = FIXED_PORTS.end - FIXED_PORTS.start;
    let start = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIXED_PORTS.start + (start + step) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// Connects to `to` from the loopback address `from`.
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(from.into(), 0).into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
}

/// Reads one CRLF-terminated line (multi-line replies come line by line).
pub fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    break;
                }
            }
            Err(e) => panic!(
                "read failed after {:?}: {e}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Reads until the peer closes; returns everything read.
pub fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("read_to_end: {e}; got {:?}", String::from_utf8_lossy(&all)),
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Connects from the listed proxy 127.0.0.1 and sends a PROXY v1 header
/// naming `client` (port 40000) and the destination 198.51.100.25:25
/// (or 2001:db8::25 for an IPv6 client).
pub fn connect_as(doorman: &Doorman, client: &str) -> TcpStream {
    let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 1), doorman.address);
    let (family, server) = if client.contains(':') {
        ("TCP6", "2001:db8::25")
    } else {
        ("TCP4", "198.51.100.25")
    };
    stream
        .write_all(format!("PROXY {family} {client} {server} 40000 25\r\n").as_bytes())
        .unwrap();
    stream
}

/// Says HELO and MAIL to doorman's built-in engine (hostname
/// `mx.doorman.test`) and checks both replies.
pub fn helo_and_mail(stream: &mut TcpStream, sender: &str) {
    stream.write_all(b"HELO client.test\r\n").unwrap();
    assert_eq!(read_line(stream), "250 mx.doorman.test\r\n");
    stream
        .write_all(format!("MAIL FROM:<{sender}>\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_line(stream), "250 2.1.0 Ok\r\n");
}

/// Reads one whole reply from any stream, plain or TLS: every line up to
/// the one with a space after the code ("" when the peer closed first).
pub fn whole_reply(stream: &mut (impl Read + ?Sized)) -> String {
    let mut text = String::new();
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            match stream.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => return text,
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let last = line.as_bytes().get(3) != Some(&b'-');
        text.push_str(&line);
        if last {
            return text;
        }
    }
}
