//! The lookups against name servers on loopback: merged, cancelled,
//! failures kept briefly and never shared, queries over the budget skipped.

use super::*;
use crate::dns_asker::tests::reply;
use doorman_gate_api::{DnsLimits, GateFuture};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::UdpSocket;

fn dnsbl(server: SocketAddr, timeout: Duration) -> Dnsbl {
    Dnsbl::new(Settings {
        sites: Site::parse_list("bl.test").unwrap(),
        min_ttl: Duration::from_secs(60),
        max_ttl: Duration::from_secs(600),
        timeout,
        nameservers: vec![server],
        cache_size: 10,
    })
    .unwrap()
}

/// A name server that answers "listed" after `delay` (never, if
/// `None`), and the count of the queries it got.
async fn server(delay: Option<Duration>) -> (SocketAddr, Arc<AtomicUsize>) {
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let address = udp.local_addr().unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&queries);
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            counted.fetch_add(1, Ordering::SeqCst);
            let (udp, query) = (Arc::clone(&udp), buf[..len].to_vec());
            if let Some(delay) = delay {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = udp.send_to(&reply(&query, false), from).await;
                });
            }
        }
    });
    (address, queries)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_lookup_nobody_else_waits_for() {
    let (address, queries) = server(None).await;
    let budget = DnsBudget::unlimited();
    let dnsbl = Arc::new(
        dnsbl(address, Duration::from_secs(5)).budgeted(Arc::clone(&budget), Arc::new(|_| {})),
    );
    let mut pending = dnsbl.start(ip("192.0.2.8"));
    let waited = tokio::time::timeout(Duration::from_millis(50), pending.next()).await;
    assert!(waited.is_err(), "answered too soon");
    assert_eq!((dnsbl.in_flight(), budget.in_flight()), (1, 1));
    drop(pending);
    assert_eq!(
        (dnsbl.in_flight(), budget.in_flight()),
        (0, 0),
        "the lookup outlived its client"
    );
    // Nothing resends the query.
    tokio::time::sleep(crate::exchange::RESEND + Duration::from_millis(200)).await;
    assert_eq!(queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn clients_share_a_lookup_which_outlives_the_first_to_leave() {
    let (address, queries) = server(Some(Duration::from_millis(200))).await;
    let dnsbl = Arc::new(dnsbl(address, Duration::from_secs(5)));
    let mut first = dnsbl.start(ip("192.0.2.8"));
    let _ = tokio::time::timeout(Duration::from_millis(50), first.next()).await;
    // A second client comes while the query is under way, then the
    // first leaves.
    let mut second = dnsbl.start(ip("192.0.2.8"));
    let _ = tokio::time::timeout(Duration::from_millis(10), second.next()).await;
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second.finish())
        .await
        .expect("the merged lookup was dropped with the first client");
    assert!(matches!(
        second.answers().get("bl.test"),
        Some(Answer::Listed { .. })
    ));
    assert_eq!(queries.load(Ordering::SeqCst), 1, "a second query was sent");
}

/// A shared store that remembers what it is told.
#[derive(Debug, Default)]
struct Told(Mutex<Vec<String>>);

impl AnswerStore for Told {
    fn get<'a>(&'a self, _: &'a str) -> GateFuture<'a, Option<String>> {
        Box::pin(async { None })
    }

    fn put(&self, key: &str, value: &str, _: Duration) {
        self.0.lock().unwrap().push(format!("{key} {value}"));
    }
}

#[tokio::test]
async fn failures_are_cached_briefly_and_never_shared() {
    let (address, queries) = server(None).await;
    let told = Arc::new(Told::default());
    let settings = dnsbl(address, Duration::from_millis(100)).settings;
    let dnsbl = Arc::new(
        Dnsbl::with_store(settings, Some(Arc::clone(&told) as Arc<dyn AnswerStore>)).unwrap(),
    );
    let ip = ip("192.0.2.9");
    for _ in 0..2 {
        let done = dnsbl.start(ip).finish().await;
        assert!(done.answers().get("bl.test").is_some_and(Answer::is_failed));
    }
    assert_eq!(
        queries.load(Ordering::SeqCst),
        1,
        "the failure was not cached"
    );
    assert!(told.0.lock().unwrap().is_empty(), "a failure was shared");
    let name = query_name(ip, "bl.test");
    let expiry = dnsbl.cache.lock().unwrap().peek(&name).unwrap().1;
    assert!(expiry <= Instant::now() + FAILED_TTL);
}

#[tokio::test]
async fn queries_over_the_budget_are_skipped_and_counted() {
    let (address, queries) = server(None).await;
    let budget = Arc::new(DnsBudget::new(DnsLimits {
        total: 1,
        per_network: 0,
    }));
    let skipped = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&skipped);
    let dnsbl = Arc::new(dnsbl(address, Duration::from_secs(5)).budgeted(
        budget,
        Arc::new(move |event| {
            assert_eq!(event, "dns_skipped");
            counted.fetch_add(1, Ordering::SeqCst);
        }),
    ));
    let mut first = dnsbl.start(ip("192.0.2.10"));
    let _ = tokio::time::timeout(Duration::from_millis(50), first.next()).await;
    let second = tokio::time::timeout(
        Duration::from_secs(1),
        dnsbl.start(ip("198.51.100.1")).finish(),
    )
    .await
    .expect("a skipped lookup waited");
    match second.answers().get("bl.test") {
        Some(Answer::Failed { error }) => assert!(error.starts_with("skipped"), "{error}"),
        other => panic!("not skipped: {other:?}"),
    }
    assert_eq!(skipped.load(Ordering::SeqCst), 1);
    assert_eq!(queries.load(Ordering::SeqCst), 1);
    // A skip is not an answer: it is not cached.
    assert!(dnsbl
        .cached(&query_name(ip("198.51.100.1"), "bl.test"))
        .is_none());
}
