//! Which backend a client goes to, sans-IO.
//!
//! [`order`] ranks the usable backends (healthy, below their connection
//! limit) for one client; the handoff tries them in that order, so a failed
//! connect falls over to the next within the same client connection.
//! - `roundrobin`: weighted rotation.
//! - `leastconn`: fewest active connections per unit of weight.
//! - `source`: weighted rendezvous hashing of the client address: a client
//!   keeps its backend, and adding or removing a backend moves only that
//!   backend's share of clients.
//! - `recipient`: the same over a user's key (see `config::RecipientKey`),
//!   with xxHash64, whose output is fixed by its specification, so every
//!   instance of a fleet ranks a user's backends alike.

use std::hash::Hasher;
use std::net::IpAddr;

use crate::config::Balance;

/// What the balancer knows of one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its identity for hashing (the address as written).
    pub key: String,
    /// Its weight (0 means never chosen first).
    pub weight: u32,
    /// Its active client connections.
    pub active: usize,
    /// Whether health checks say it is up and it has room.
    pub usable: bool,
}

/// What a client is kept on its backend by, for the hashing balancers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity<'a> {
    /// The client address (`source`).
    Client(IpAddr),
    /// A user's key (`recipient`).
    User(&'a str),
}

/// The indices of the usable candidates, best first.
pub fn order(
    balance: Balance,
    candidates: &[Candidate],
    affinity: Affinity<'_>,
    tick: usize,
) -> Vec<usize> {
    let mut usable: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].usable)
        .collect();
    match balance {
        Balance::Roundrobin => {
            let total: usize = usable.iter().map(|&i| candidates[i].weight as usize).sum();
            if total > 0 {
                let mut slot = tick % total;
                let first = usable
                    .iter()
                    .position(|&i| {
                        let weight = candidates[i].weight as usize;
                        if slot < weight {
                            true
                        } else {
                            slot -= weight;
                            false
                        }
                    })
                    .unwrap_or(0);
                usable.rotate_left(first);
            }
        }
        Balance::Leastconn => {
            usable.sort_by(|&a, &b| {
                let load = |i: usize| {
                    (candidates[i].active as u128 * 1_000_000)
                        / u128::from(candidates[i].weight.max(1))
                };
                load(a).cmp(&load(b))
            });
        }
        Balance::Source | Balance::Recipient => {
            let score = |i: usize| rendezvous(affinity, &candidates[i].key, candidates[i].weight);
            usable.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        }
    }
    usable
}

/// The weighted rendezvous score of a backend for a client or user:
/// `-weight / ln(u)` with `u` a hash of both in (0, 1).
fn rendezvous(affinity: Affinity<'_>, key: &str, weight: u32) -> f64 {
    // xxHash64 for both, so every build and every instance of a fleet
    // ranks alike (std's hasher may change between Rust releases).
    let octets;
    let subject: &[u8] = match affinity {
        Affinity::Client(client) => {
            octets = match client.to_canonical() {
                std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
                std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
            };
            &octets
        }
        Affinity::User(user) => user.as_bytes(),
    };
    let mut hasher = twox_hash::XxHash64::with_seed(0);
    hasher.write(subject);
    hasher.write(&[0]);
    hasher.write(key.as_bytes());
    let hash = hasher.finish();
    let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / unit.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate {
                key: format!("127.0.0.1:{}", 10000 + i),
                weight,
                active: 0,
                usable: true,
            })
            .collect()
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::from((0xc000_0200u32 + n).to_be_bytes())
    }

    #[test]
    fn source_hashing_is_the_same_in_every_build() {
        // xxHash64 of the octets: a value pinned here, so a change of
        // hasher (std's DefaultHasher may change between Rust releases)
        // cannot silently move every client of a fleet.
        let client = Affinity::Client("192.0.2.7".parse().expect("ip"));
        let score = rendezvous(client, "127.0.0.1:2525", 1);
        assert_eq!(format!("{score:.6}"), "2.442197");
        let mapped = Affinity::Client("::ffff:192.0.2.7".parse().expect("ip"));
        assert_eq!(rendezvous(mapped, "127.0.0.1:2525", 1), score);
    }

    #[test]
    fn weighted_roundrobin() {
        let c = candidates(&[1, 2]);
        let firsts: Vec<usize> = (0..6)
            .map(|t| order(Balance::Roundrobin, &c, Affinity::Client(ip(1)), t)[0])
            .collect();
        assert_eq!(firsts, vec![0, 1, 1, 0, 1, 1]);
        assert_eq!(
            order(Balance::Roundrobin, &c, Affinity::Client(ip(1)), 0),
            vec![0, 1],
            "the rest follow"
        );
    }

    #[test]
    fn unusable_backends_are_skipped() {
        let mut c = candidates(&[1, 1, 1]);
        c[1].usable = false;
        for tick in 0..6 {
            assert!(!order(Balance::Roundrobin, &c, Affinity::Client(ip(1)), tick).contains(&1));
        }
        c[0].usable = false;
        c[2].usable = false;
        assert!(order(Balance::Source, &c, Affinity::Client(ip(1)), 0).is_empty());
    }

    #[test]
    fn leastconn_per_weight() {
        let mut c = candidates(&[1, 2]);
        c[0].active = 1;
        c[1].active = 1;
        assert_eq!(
            order(Balance::Leastconn, &c, Affinity::Client(ip(1)), 0),
            vec![1, 0]
        );
        c[1].active = 3;
        assert_eq!(
            order(Balance::Leastconn, &c, Affinity::Client(ip(1)), 0),
            vec![0, 1]
        );
    }

    #[test]
    fn source_is_sticky_and_adding_a_backend_moves_about_one_nth() {
        let three = candidates(&[1, 1, 1]);
        let four = candidates(&[1, 1, 1, 1]);
        let clients = 4000;
        let mut moved = 0usize;
        let mut shares = [0usize; 4];
        for n in 0..clients {
            let before = order(Balance::Source, &three, Affinity::Client(ip(n)), 0)[0];
            assert_eq!(
                before,
                order(Balance::Source, &three, Affinity::Client(ip(n)), 7)[0],
                "sticky"
            );
            let after = order(Balance::Source, &four, Affinity::Client(ip(n)), 0)[0];
            shares[after] += 1;
            if after != before {
                assert_eq!(after, 3, "a client only ever moves to the new backend");
                moved += 1;
            }
        }
        let expected = clients as usize / 4;
        assert!(
            moved.abs_diff(expected) < expected / 5,
            "moved {moved} of {clients}"
        );
        assert!(
            shares.iter().all(|s| s.abs_diff(expected) < expected / 5),
            "{shares:?}"
        );
    }

    #[test]
    fn users_spread_by_weight_and_a_new_backend_moves_few() {
        let three = candidates(&[1, 1, 2]);
        let mut four = candidates(&[1, 1, 2, 1]);
        four[3].key = "127.0.0.1:20000".into();
        let users = 10_000;
        let mut shares = [0usize; 3];
        let mut moved = 0usize;
        for n in 0..users {
            let user = format!("user{n}@example.org");
            let before = order(Balance::Recipient, &three, Affinity::User(&user), 0)[0];
            assert_eq!(
                before,
                order(Balance::Recipient, &three, Affinity::User(&user), 5)[0],
                "a user keeps its backend"
            );
            shares[before] += 1;
            let after = order(Balance::Recipient, &four, Affinity::User(&user), 0)[0];
            if after != before {
                assert_eq!(after, 3, "a user only ever moves to the new backend");
                moved += 1;
            }
        }
        // Shares of 1/4, 1/4 and 1/2, each within 5% of the users.
        for (share, expected) in shares.iter().zip([users / 4, users / 4, users / 2]) {
            assert!(share.abs_diff(expected) <= users / 20, "{shares:?}");
        }
        assert!(moved <= users * 3 / 10, "moved {moved} of {users}");
        assert!(moved > 0);
    }
}
