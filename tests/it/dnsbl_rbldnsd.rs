//! The DNSBL gate (`plugins/dnsbl`) against Debian's real rbldnsd serving
//! the zones in `fixtures/dnsbl/` on a loopback port: listings, filters,
//! weights, error codes, TTL clamping, IPv6 nibbles, the answer cache and a
//! dead server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::support::Rbldnsd;
use doorman::verdict::{Judgement, Thresholds};
use doorman_dnsbl::gate::findings;
use doorman_dnsbl::{Answer, Dnsbl, Settings, Site};
use std::collections::HashMap;

fn dnsbl(server: SocketAddr, sites: &str) -> Arc<Dnsbl> {
    Arc::new(
        Dnsbl::new(Settings {
            sites: Site::parse_list(sites).unwrap(),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
            nameservers: vec![server],
            cache_size: 1000,
        })
        .unwrap(),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn listed_unlisted_error_codes_and_ttls() {
    let Some(server) = Rbldnsd::start() else {
        return;
    };
    let gate = dnsbl(
        server.address,
        "bl.test=127.0.0.[2..11]*2 bl2.test*1 wl.test=127.0.[0..255].[2..3]*-3 wl.test=127.0.[0..255].1*-1",
    );
    let done = gate.start(ip("203.0.113.7")).finish().await;
    let score = done.score();
    assert_eq!(score.rank, 3);
    assert_eq!(score.top_site.as_deref(), Some("bl.test"));
    // wl.test has no SOA, so its NXDOMAIN carries TTL 0: clamped up to min_ttl.
    assert_eq!(score.ttl, Duration::from_secs(60));
    assert!(score.complete);
    assert_eq!(
        done.answers()["bl.test"],
        Answer::Listed {
            addresses: vec!["127.0.0.2".parse().unwrap()],
            ttl: Duration::from_secs(300)
        }
    );

    let thresholds = Thresholds {
        threshold: 2,
        allowlist_threshold: -2,
    };
    let judge = |pending: &doorman_dnsbl::Pending, client: &str| {
        thresholds.judge([&findings(pending, &HashMap::new())], ip(client))
    };
    match judge(&done, "203.0.113.7") {
        Judgement::Listed { rank: 3, reply } => assert_eq!(
            reply.line(),
            "550 5.7.1 Service unavailable; client [203.0.113.7] blocked using bl.test\r\n"
        ),
        other => panic!("{other:?}"),
    }

    let clean = gate.start(ip("203.0.113.200")).finish().await;
    assert_eq!(clean.score().rank, 0);
    assert!(matches!(
        clean.answers()["bl.test"],
        Answer::NotListed { .. }
    ));

    let allowed = gate.start(ip("203.0.113.20")).finish().await;
    assert_eq!(allowed.score().rank, -3);
    assert_eq!(
        judge(&allowed, "203.0.113.20"),
        Judgement::Allowlisted { rank: -3 }
    );
    let low = gate.start(ip("203.0.113.21")).finish().await.score();
    assert_eq!(low.rank, -1);

    let error = gate.start(ip("203.0.113.66")).finish().await;
    assert_eq!(
        error.score().rank,
        0,
        "127.255.255.254 is an error, not a listing"
    );
    assert!(matches!(error.answers()["bl.test"], Answer::Failed { .. }));

    // Only listed answers: the smallest TTL (300, 86400) within [60, 3600].
    let ttl_gate = dnsbl(server.address, "bl.test bl2.test");
    assert_eq!(
        ttl_gate.start(ip("203.0.113.7")).finish().await.score().ttl,
        Duration::from_secs(300)
    );
    // bl2.test alone: 86400 clamped down to max_ttl.
    let long_gate = dnsbl(server.address, "bl2.test");
    assert_eq!(
        long_gate
            .start(ip("203.0.113.9"))
            .finish()
            .await
            .score()
            .ttl,
        Duration::from_secs(3600)
    );
    // NXDOMAIN with a SOA: min(SOA TTL 600, minimum 120) = 120.
    let nx = dnsbl(server.address, "bl.test");
    assert_eq!(
        nx.start(ip("203.0.113.250")).finish().await.score().ttl,
        Duration::from_secs(120)
    );

    // Filters: 127.0.0.4 is inside [2..11], so 203.0.113.8 scores 2.
    assert_eq!(gate.start(ip("203.0.113.8")).finish().await.score().rank, 2);
}

#[tokio::test]
async fn ipv6_nibbles() {
    let Some(server) = Rbldnsd::start() else {
        return;
    };
    let gate = dnsbl(server.address, "v6.test*5");
    assert_eq!(gate.start(ip("2001:db8::7")).finish().await.score().rank, 5);
    assert_eq!(
        gate.start(ip("2001:db8:bad:1::9"))
            .finish()
            .await
            .score()
            .rank,
        5
    );
    assert_eq!(gate.start(ip("2001:db8::8")).finish().await.score().rank, 0);
}

#[tokio::test]
async fn answers_are_cached_and_a_dead_server_fails_open() {
    let Some(server) = Rbldnsd::start() else {
        return;
    };
    let address = server.address;
    let gate = dnsbl(address, "bl.test*1");
    assert_eq!(gate.start(ip("203.0.113.7")).finish().await.score().rank, 1);
    drop(server);
    // Cached: the answer survives the server, and the cache's rebuild
    // after a flood (doorman's memory trim).
    assert_eq!(gate.start(ip("203.0.113.7")).finish().await.score().rank, 1);
    gate.compact();
    assert_eq!(gate.start(ip("203.0.113.7")).finish().await.score().rank, 1);
    // Not cached: the lookup fails within the timeout and counts as not listed.
    let started = std::time::Instant::now();
    let done = gate.start(ip("203.0.113.9")).finish().await;
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(done.score().rank, 0);
    assert!(matches!(done.answers()["bl.test"], Answer::Failed { .. }));
}
