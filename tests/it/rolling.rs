//! A rolling restart behind Debian's HAProxy refuses nobody: two doorman
//! instances, each with its agent; while a client loop sends mail through
//! HAProxy, one is drained, waits for its sessions to end, is stopped and
//! started again, and undrained. Every message the clients were told was
//! accepted reaches the backend, and no client is refused.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

struct Node {
    port: u16,
    admin: u16,
    agent: u16,
}

fn node_config(backend: SocketAddr, node: &Node) -> String {
    format!(
        "hostname = \"mx.doorman.test\"\nshutdown_grace = \"5s\"\n[proxy]\nhosts_file = \"haproxy_hosts\"\n\
[[listener]]\naddress = \"127.0.0.1:{}\"\n[[backend]]\naddress = \"{backend}\"\nsend_proxy = \"v2\"\n\
[greet]\nbanner = \"\"\n[cache]\nstore = \"memory\"\n\
[admin]\naddress = \"127.0.0.1:{}\"\nagent = \"127.0.0.1:{}\"\n",
        node.port, node.admin, node.agent
    )
}

fn start_haproxy(dir: &Path, front: u16, nodes: &[Node]) -> Program {
    let mut servers = String::new();
    for (index, node) in nodes.iter().enumerate() {
        servers.push_str(&format!(
            "    server d{} 127.0.0.1:{} send-proxy-v2 check-send-proxy check inter 300ms rise 1 fall 1 agent-check agent-addr 127.0.0.1 agent-port {} agent-inter 300ms\n",
            index + 1,
            node.port,
            node.agent
        ));
    }
    let config = format!(
        "global\n    stats socket {sock} mode 600 level admin\n\
defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    timeout check 2s\n\
frontend smtp\n    bind 127.0.0.1:{front}\n    default_backend doormen\n\
backend doormen\n    balance roundrobin\n    option tcp-check\n    tcp-check connect default\n    tcp-check expect rstring ^220\n    tcp-check send QUIT\\r\\n\n    tcp-check expect rstring ^221\n{servers}",
        sock = dir.join("haproxy.sock").display(),
    );
    std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
    let mut command = Command::new("haproxy");
    command.arg("-f").arg(dir.join("haproxy.cfg")).arg("-db");
    spawn(command, "haproxy")
}

/// One message through HAProxy; whether the client was told it was
/// accepted.
fn send_message(front: u16, marker: usize) -> bool {
    // From a loopback address that is not the proxy's.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: SocketAddr = (Ipv4Addr::new(127, 0, 0, 5), 0).into();
    socket.bind(&source.into()).unwrap();
    let front: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    if socket
        .connect_timeout(&front.into(), Duration::from_secs(5))
        .is_err()
    {
        return false;
    }
    let stream: TcpStream = socket.into();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let expect = |code: &str, reader: &mut BufReader<TcpStream>| {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.starts_with(code);
            }
        }
    };
    if !expect("220", &mut reader) {
        return false;
    }
    for (command, code) in [
        ("HELO loop.test\r\n".to_string(), "250"),
        ("MAIL FROM:<loop@client.test>\r\n".to_string(), "250"),
        ("RCPT TO:<rcpt@doorman.test>\r\n".to_string(), "250"),
        ("DATA\r\n".to_string(), "354"),
        (
            format!("Subject: {marker}\r\n\r\nmessage-{marker}-end\r\n.\r\n"),
            "250",
        ),
    ] {
        if writer.write_all(command.as_bytes()).is_err() || !expect(code, &mut reader) {
            return false;
        }
    }
    let _ = writer.write_all(b"QUIT\r\n");
    true
}

fn wait_for(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_rolling_restart_refuses_nobody_and_loses_nothing() {
    if !require_program("haproxy") {
        return;
    }
    let backend = FakeBackend::start(true);
    let nodes: Vec<Node> = (0..2)
        .map(|_| Node {
            port: free_port(),
            admin: free_port(),
            agent: free_port(),
        })
        .collect();
    let mut doormen: Vec<Option<Doorman>> = nodes
        .iter()
        .map(|node| {
            Some(Doorman::start(
                &node_config(backend.address, node),
                "127.0.0.1\n",
            ))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let front = free_port();
    let _haproxy = start_haproxy(dir.path(), front, &nodes);
    for server in ["d1", "d2"] {
        wait_for("both servers UP", Duration::from_secs(15), || {
            haproxy_server_stat(dir.path(), server, "status") == "UP"
        });
    }

    // The client loop.
    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let loop_thread = {
        let (stop, accepted, refused) = (
            Arc::clone(&stop),
            Arc::clone(&accepted),
            Arc::clone(&refused),
        );
        thread::spawn(move || {
            let mut marker = 0;
            while !stop.load(Ordering::SeqCst) {
                marker += 1;
                if send_message(front, marker) {
                    accepted.fetch_add(1, Ordering::SeqCst);
                } else {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    thread::sleep(Duration::from_secs(1));

    // Restart d1: drain, wait for its sessions to end, stop, start, undrain.
    let first = doormen[0].take().unwrap();
    let config = first.config_path();
    let drained = Command::new(doorman_bin())
        .args(["drain", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(drained.status.success(), "{drained:?}");
    wait_for("d1 DRAIN", Duration::from_secs(10), || {
        haproxy_server_stat(dir.path(), "d1", "status").starts_with("DRAIN")
    });
    wait_for("d1 without sessions", Duration::from_secs(10), || {
        haproxy_server_stat(dir.path(), "d1", "scur") == "0"
    });
    let folder = first.stop();
    let restarted = Doorman::start_in(folder);
    wait_for("d1 UP again", Duration::from_secs(15), || {
        haproxy_server_stat(dir.path(), "d1", "status") == "UP"
    });
    let undrained = Command::new(doorman_bin())
        .args(["undrain", "--config"])
        .arg(restarted.config_path())
        .output()
        .unwrap();
    assert!(undrained.status.success(), "{undrained:?}");
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    loop_thread.join().unwrap();

    let accepted = accepted.load(Ordering::SeqCst);
    assert_eq!(refused.load(Ordering::SeqCst), 0, "no client refused");
    assert!(accepted > 10, "the loop ran: {accepted}");
    let mut delivered = 0;
    for n in 0..backend.count() {
        let bytes =
            String::from_utf8_lossy(&backend.connection(n).lock().unwrap().bytes).into_owned();
        delivered += bytes.matches("-end\r\n.\r\n").count();
    }
    assert_eq!(
        delivered, accepted,
        "every accepted message reached the backend"
    );
    drop(restarted);
    drop(doormen);
}
