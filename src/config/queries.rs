//! What the rest of doorman asks of a loaded [`Config`]: the teaser, a
//! client's cluster, the shortest pass TTL, the clusters balanced by
//! recipient, whether a gate is listed.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Balance, ClusterSection, Config};
use crate::deep::DeepTest;

impl Config {
    /// The teaser text: `[greet] banner`, or `<hostname> ESMTP` when unset.
    /// Empty means no teaser and no pregreet test.
    pub fn greet_banner(&self) -> String {
        self.greet
            .banner
            .clone()
            .unwrap_or_else(|| format!("{} ESMTP", self.hostname))
    }

    /// The cluster a client that connected to `destination` on `listener`
    /// goes to: the first matching route's, else the default (`""`).
    pub fn cluster_for(&self, destination: SocketAddr, listener: SocketAddr) -> &str {
        self.routes
            .iter()
            .find(|route| route.matches(destination, listener))
            .map_or("", |route| route.cluster.as_str())
    }

    /// The shortest TTL of any test, enabled or not (postscreen's
    /// `psc_min_ttl`): how long an ignored deep-test failure counts as a
    /// pass, so the test comes back when something else expires (a DNS
    /// gate's pass lasts at least the shared resolver's `min_ttl`).
    pub fn shortest_ttl(&self) -> Duration {
        let deep = &self.deep_tests;
        [self.greet.ttl, self.shared.min_ttl]
            .into_iter()
            .chain(DeepTest::ALL.map(|test| deep.ttl(test)))
            .min()
            .unwrap_or_default()
    }

    /// The `[cluster.NAME]` section of `cluster` when it balances by
    /// recipient.
    pub fn by_recipient(&self, cluster: &str) -> Option<&ClusterSection> {
        self.clusters
            .get(cluster)
            .filter(|section| section.by_recipient())
    }

    /// The clusters balanced by recipient, with their sections, by name.
    pub fn recipient_clusters(&self) -> impl Iterator<Item = (&String, &ClusterSection)> {
        self.clusters
            .iter()
            .filter(|(_, section)| section.by_recipient())
    }

    /// How `cluster` picks a backend: its own `balance`, else `[pool]`'s.
    pub fn balance_of(&self, cluster: &str) -> Balance {
        self.clusters
            .get(cluster)
            .and_then(|section| section.balance)
            .unwrap_or(self.pool.balance)
    }

    /// Whether gate `name` is listed.
    pub fn lists(&self, name: &str) -> bool {
        self.gates.iter().any(|gate| gate == name)
    }
}
