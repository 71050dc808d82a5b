//! HAProxy's health checks, dead and failing-over backends, idle proxies, half-closes and SIGTERM.

use super::*;

#[test]
fn health_checks_with_live_backend() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    health_dialogue(&doorman, write::V2_LOCAL);
    // AWS NLB style: LOCAL with an IPv4 family and an address block.
    let mut nlb = write::encode_v2(addr("10.0.0.1:1"), addr("10.0.0.2:25")).unwrap();
    nlb[12] = 0x20;
    health_dialogue(&doorman, &nlb);
    // HAProxy's v1 check: its own address as the source.
    health_dialogue(&doorman, b"PROXY TCP4 127.0.0.1 127.0.0.1 51000 2525\r\n");
    // doorman's own probes reached the backend (a LOCAL header and QUIT);
    // HAProxy's checks never did.
    assert!(backend.probes() >= 1);
    assert_eq!(backend.count(), 0);
    // Checks that hang up mid-dialogue are not warnings either.
    let mut rude = connect_from(LISTED, doorman.address);
    rude.write_all(write::V2_LOCAL).unwrap();
    assert_eq!(read_line(&mut rude), "220 mx.doorman.test ESMTP\r\n");
    drop(rude);
    doorman
        .log
        .wait_for("ended: hang-up", Duration::from_secs(5));
    assert!(doorman.log.matching("CONNECT from").is_empty());
    assert!(
        doorman.log.matching("warning:").is_empty(),
        "{:?}",
        doorman.log.matching("warning:")
    );
}

#[test]
fn health_checks_and_clients_with_dead_backend() {
    let (_reserved, dead) = dead_address();
    let doorman = Doorman::start(&config(dead, "v2", "", "30s"), "127.0.0.1\n");
    for header in [
        &write::V2_LOCAL[..],
        b"PROXY TCP4 127.0.0.1 127.0.0.1 51000 2525\r\n",
    ] {
        assert_eq!(
            refused(&doorman, header),
            "421 4.3.2 All server ports are busy\r\n"
        );
    }
    let said = refused(
        &doorman,
        b"PROXY TCP4 203.0.113.7 198.51.100.2 40982 25\r\n",
    );
    assert_eq!(said, "421 4.3.2 All server ports are busy\r\n");
    doorman.log.wait_for(
        "NOQUEUE: reject: CONNECT from [203.0.113.7]:40982: all server ports busy",
        Duration::from_secs(5),
    );
    doorman.log.wait_for(
        &format!("warning: backend {dead} is DOWN"),
        Duration::from_secs(5),
    );
}

#[test]
fn second_backend_takes_over_when_the_first_is_dead() {
    let backend = FakeBackend::start(true);
    let (_reserved, dead) = dead_address();
    let text = config(backend.address, "v2", "", "30s").replace(
        "[[backend]]",
        &format!("[[backend]]\naddress = \"{dead}\"\n[[backend]]"),
    );
    let doorman = Doorman::start(&text, "127.0.0.1\n");
    greeted_client(&doorman);
}

#[test]
fn idle_proxies_do_not_delay_a_real_client() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let idle: Vec<_> = (0..400)
        .map(|_| connect_from(LISTED, doorman.address))
        .collect();
    let started = Instant::now();
    greeted_client(&doorman);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}

#[test]
fn half_close_passes_through() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let mut client = connect_from(LISTED, doorman.address);
    client
        .write_all(b"PROXY TCP4 203.0.113.7 198.51.100.2 40982 25\r\nNOOP\r\n")
        .unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // The backend sees the EOF, and its replies still reach the client.
    let got = backend.wait_closed(0);
    assert!(got.ends_with(b"NOOP\r\n"));
    assert_eq!(
        read_to_close(&mut client),
        "220 backend.test ESMTP fake\r\n250 2.0.0 ok\r\n"
    );
}

#[test]
fn sigterm_drains_live_sessions_then_stops() {
    let backend = FakeBackend::start(true);
    let doorman = start(&backend, "v2");
    let mut client = greeted_client(&doorman);
    doorman.terminate();
    doorman.log.wait_for(
        "stopping: no new connections; 1 live",
        Duration::from_secs(5),
    );
    // The live session still works during the grace period...
    client.write_all(b"NOOP\r\n").unwrap();
    assert_eq!(read_line(&mut client), "250 2.0.0 ok\r\n");
    // ...new connections are refused...
    assert!(std::net::TcpStream::connect(doorman.address).is_err());
    // ...and it is closed when the grace period (3 s) ends.
    let started = Instant::now();
    assert_eq!(read_to_close(&mut client), "");
    assert!(started.elapsed() < Duration::from_secs(6));
    doorman
        .log
        .wait_for("stopped; 1 sessions were closed", Duration::from_secs(5));
}
