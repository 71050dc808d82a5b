//! The gate against a name server on loopback that answers PTR queries
//! with given names and never answers a forward query.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use doorman_gate_api::{Client, DnsBudget, Gate};
use hickory_resolver::proto::op::Message;
use hickory_resolver::proto::rr::rdata::PTR;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::{RdnsGate, Settings, Weights, FAILED_TTL};

/// The queries a server got: their type and when.
type Seen = Arc<Mutex<Vec<(RecordType, Instant)>>>;

/// A server answering PTR queries with `names` (none: silent too).
async fn server(names: Vec<String>) -> (SocketAddr, Seen) {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = udp.local_addr().unwrap();
    let seen = Seen::default();
    let saw = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            let query = Message::from_vec(&buf[..len]).unwrap();
            let question = query.queries[0].clone();
            saw.lock()
                .unwrap()
                .push((question.query_type(), Instant::now()));
            if question.query_type() != RecordType::PTR || names.is_empty() {
                continue;
            }
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.queries = query.queries.clone();
            for name in &names {
                let ptr = PTR(Name::from_ascii(name).unwrap());
                reply.answers.push(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::PTR(ptr),
                ));
            }
            let _ = udp.send_to(&reply.to_vec().unwrap(), from).await;
        }
    });
    (address, seen)
}

fn gate(server: SocketAddr, timeout: Duration) -> (RdnsGate, Arc<DnsBudget>) {
    let budget = DnsBudget::unlimited();
    let gate = RdnsGate::new(Settings {
        weights: Weights {
            no_ptr: 2,
            not_confirmed: 1,
            generic: 1,
        },
        min_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(600),
        timeout,
        nameservers: vec![server],
        cache_size: 10,
    })
    .unwrap()
    .budgeted(Arc::clone(&budget), Arc::new(|_| {}));
    (gate, budget)
}

fn client(ip: &str) -> Client {
    Client {
        address: SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 40000),
        destination: "127.0.0.1:25".parse().unwrap(),
        tlvs: Vec::new(),
    }
}

fn count(seen: &Seen, kind: RecordType) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(asked, _)| *asked == kind)
        .count()
}

#[tokio::test]
async fn forward_lookups_go_out_at_once_and_end_within_two_timeouts() {
    let names = (0..8).map(|i| format!("n{i}.many.test.")).collect();
    let (address, seen) = server(names).await;
    let (gate, budget) = gate(address, Duration::from_millis(600));
    let started = Instant::now();
    let mut check = gate.wait(&client("192.0.2.20")).unwrap();
    tokio::time::timeout(Duration::from_secs(5), check.progress())
        .await
        .expect("the check outlived two timeouts");
    let took = started.elapsed();
    // Eight forward queries, all unanswered, waited for together, and the
    // whole check within two query timeouts, not eight one after another.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let forwards: Vec<Instant> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(kind, _)| *kind == RecordType::A)
        .map(|(_, at)| *at)
        .collect();
    assert!(forwards.len() >= 8, "{} forward queries", forwards.len());
    let spread = forwards[7].duration_since(forwards[0]);
    assert!(spread < Duration::from_millis(200), "{spread:?}");
    assert!(check.is_complete());
    assert_eq!(budget.in_flight(), 0);
}

#[tokio::test]
async fn clients_of_one_address_share_a_lookup_dropped_with_the_last() {
    let (address, seen) = server(Vec::new()).await;
    let (gate, budget) = gate(address, Duration::from_secs(5));
    let mut first = gate.wait(&client("192.0.2.21")).unwrap();
    let mut second = gate.wait(&client("192.0.2.21")).unwrap();
    assert_eq!(gate.in_flight(), 1);
    for check in [&mut first, &mut second] {
        let waited = tokio::time::timeout(Duration::from_millis(100), check.progress()).await;
        assert!(waited.is_err(), "a silent server answered");
    }
    assert_eq!(count(&seen, RecordType::PTR), 1, "one query per address");
    drop(first);
    assert_eq!((gate.in_flight(), budget.in_flight()), (1, 1));
    drop(second);
    assert_eq!(
        (gate.in_flight(), budget.in_flight()),
        (0, 0),
        "the lookup outlived its clients"
    );
}

#[tokio::test]
async fn a_failure_is_remembered_for_a_few_seconds() {
    let (address, seen) = server(Vec::new()).await;
    let (gate, _) = gate(address, Duration::from_millis(200));
    let mut first = gate.wait(&client("192.0.2.22")).unwrap();
    first.progress().await;
    assert!(first.explain(Duration::ZERO)[0].contains("lookup failed"));
    let asked = count(&seen, RecordType::PTR);
    // The next client from that address gets the failure at once.
    let again = gate.wait(&client("192.0.2.22")).unwrap();
    assert!(again.is_complete(), "the failure was not remembered");
    assert_eq!(count(&seen, RecordType::PTR), asked);
    let cache = gate.inner.cache.lock().unwrap();
    let (_, expiry) = cache.peek(&"192.0.2.22".parse().unwrap()).unwrap();
    assert!(*expiry <= Instant::now() + FAILED_TTL);
}
