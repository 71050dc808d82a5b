//! Backend clusters chosen by the address the client connected to, after
//! the director's tags: each customer's clients reach its own cluster, a
//! cluster with no backend up refuses with 421 while the others go on, and
//! HAProxy's checks of an address answer for its cluster.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::*;

const BACKEND: &str = "220 backend.test ESMTP fake\r\n";

fn start(a: SocketAddr, b: SocketAddr, other: SocketAddr) -> Doorman {
    let config = format!(
        "hostname = \"mx.doorman.test\"\n[proxy]\nhosts_file = \"haproxy_hosts\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\n\
[[backend]]\naddress = \"{a}\"\nsend_proxy = \"v2\"\ncluster = \"a\"\n\
[[backend]]\naddress = \"{b}\"\nsend_proxy = \"v2\"\ncluster = \"b\"\n\
[[backend]]\naddress = \"{other}\"\nsend_proxy = \"v2\"\n\
[[route]]\ndestination = \"198.51.100.0/24\"\ncluster = \"a\"\n\
[[route]]\ndestination = \"203.0.113.10:2525\"\ncluster = \"b\"\n\
[pool]\ncheck_interval = \"300ms\"\nfall = 1\n[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n"
    );
    Doorman::start(&config, "127.0.0.1\n")
}

/// A client of `client` that connected to `destination`, through the proxy.
fn client_to(doorman: &Doorman, client: &str, destination: &str) -> TcpStream {
    let destination: SocketAddr = destination.parse().unwrap();
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, doorman.address);
    stream
        .write_all(
            format!(
                "PROXY TCP4 {client} {} 40000 {}\r\n",
                destination.ip(),
                destination.port()
            )
            .as_bytes(),
        )
        .unwrap();
    stream
}

/// The first line `n` clients for `destination` get, and how many more
/// connections each backend took.
fn send(
    doorman: &Doorman,
    destination: &str,
    backends: [&FakeBackend; 3],
    n: usize,
) -> (String, [usize; 3]) {
    let before = backends.map(|b| b.count());
    let mut first = String::new();
    for i in 0..n {
        let mut stream = client_to(doorman, &format!("192.0.2.{}", 10 + i), destination);
        first = read_line(&mut stream);
    }
    let mut grown = [0; 3];
    for (index, backend) in backends.iter().enumerate() {
        grown[index] = backend.count() - before[index];
    }
    (first, grown)
}

#[test]
fn each_destination_reaches_its_own_cluster() {
    let (a, b, other) = (
        FakeBackend::start(true),
        FakeBackend::start(true),
        FakeBackend::start(true),
    );
    let doorman = start(a.address, b.address, other.address);
    let all = [&a, &b, &other];
    assert_eq!(
        send(&doorman, "198.51.100.7:25", all, 3),
        (BACKEND.to_string(), [3, 0, 0])
    );
    assert_eq!(
        send(&doorman, "203.0.113.10:2525", all, 3),
        (BACKEND.to_string(), [0, 3, 0])
    );
    assert_eq!(
        send(&doorman, "203.0.113.10:25", all, 2),
        (BACKEND.to_string(), [0, 0, 2]),
        "another port is not the route's"
    );

    // Cluster a down: its clients get 421, cluster b goes on.
    a.stop();
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        send(&doorman, "198.51.100.7:25", all, 1).0,
        "421 4.3.2 All server ports are busy\r\n"
    );
    doorman.log.wait_for(
        "NOQUEUE: reject: CONNECT from [192.0.2.10]:40000: all server ports busy (cluster a)",
        Duration::from_secs(5),
    );
    assert_eq!(
        send(&doorman, "203.0.113.10:2525", all, 2),
        (BACKEND.to_string(), [0, 2, 0])
    );

    // HAProxy's check of an address answers for its cluster; a LOCAL check
    // for all of them.
    let mut check_a = connect_from(Ipv4Addr::LOCALHOST, doorman.address);
    check_a
        .write_all(b"PROXY TCP4 127.0.0.1 198.51.100.7 40000 25\r\n")
        .unwrap();
    assert_eq!(
        read_line(&mut check_a),
        "421 4.3.2 All server ports are busy\r\n"
    );
    let mut check_b = connect_from(Ipv4Addr::LOCALHOST, doorman.address);
    check_b
        .write_all(b"PROXY TCP4 127.0.0.1 203.0.113.10 40000 2525\r\n")
        .unwrap();
    assert_eq!(read_line(&mut check_b), "220 mx.doorman.test ESMTP\r\n");
    let mut local = connect_from(Ipv4Addr::LOCALHOST, doorman.address);
    local
        .write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00")
        .unwrap();
    assert_eq!(read_line(&mut local), "220 mx.doorman.test ESMTP\r\n");
}

#[test]
fn a_route_to_a_cluster_without_backends_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doorman.toml");
    std::fs::write(
        &path,
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:25\"\n[[backend]]\naddress = \"127.0.0.1:26\"\n\n[[route]]\ndestination = \"198.51.100.0/24\"\ncluster = \"nowhere\"\n",
    )
    .unwrap();
    let error = doorman::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(error.contains("doorman.toml:7:"), "{error}");
    assert!(
        error.contains("cluster \"nowhere\", which has no [[backend]]"),
        "{error}"
    );
    std::fs::write(
        &path,
        "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:25\"\n[[backend]]\naddress = \"127.0.0.1:26\"\n[[route]]\ndestination = \"not an address\"\ncluster = \"\"\n",
    )
    .unwrap();
    let error = doorman::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("is no CIDR, address or address:port"),
        "{error}"
    );
}
