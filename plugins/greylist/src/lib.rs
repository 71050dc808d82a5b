//! Selective greylisting, at RCPT: only doubtful clients (a summed score at
//! or above `threshold`, below the reject threshold) are greylisted, and
//! the record is keyed by the client's network (`ipv4_prefix`,
//! `ipv6_prefix`, as postgrey's `--lookup-by-subnet`), the sender
//! (normalised as postgrey normalises it, see [`sender`]) and the
//! recipient.
//!
//! - A triplet's first attempt gets `450 4.2.0 <rcpt>: Recipient address
//!   rejected: Greylisted, see ...` and smtpd's NOQUEUE line.
//! - A retry after `delay` and within `retry_window` of the first attempt
//!   is accepted; the triplet then passes for `max_age`, and the client's
//!   network counts one successful retry.
//! - After `auto_allowlist` successful retries the network skips
//!   greylisting for `max_age` (postgrey's `--auto-whitelist-clients`).
//! - A network has at most `max_records_per_network` triplet records; a new
//!   triplet past the cap gets the same 450 and makes no record (see
//!   [`network_cap`]).
//!
//! Records live in the configured cache store: with Redis, a retry that
//! reaches another doorman finds its record. When the store cannot answer,
//! the gate does not greylist (fail open) and says so once.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod network_cap;
pub mod section;
pub mod sender;

pub use section::Settings;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use doorman_gate_api::{
    smtpd_reject_line, Client, Command, EventCounter, Gate, GateFuture, RecordStore, Rejection,
    Reply, Stage, StoreDown, Verdict,
};
use ipnet::IpNet;

use network_cap::{admit, Admit, Tally};

/// The greylisting gate.
pub struct GreylistGate {
    settings: Settings,
    store: Arc<dyn RecordStore>,
    events: EventCounter,
    store_down: AtomicBool,
}

/// A triplet's record: when it was first seen, and whether it passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Triplet {
    first_seen: u64,
    passed: bool,
}

impl Triplet {
    fn encode(self) -> String {
        format!("{};{}", self.first_seen, u8::from(self.passed))
    }

    fn decode(text: &str) -> Option<Self> {
        let (first, passed) = text.split_once(';')?;
        Some(Self {
            first_seen: first.parse().ok()?,
            passed: passed == "1",
        })
    }
}

/// What the gate decided about one RCPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decided {
    /// First attempt, or a retry too early: greylisted.
    Greylisted,
    /// A retry after the delay: this triplet's first pass.
    Passed { waited: u64 },
    /// The triplet passed before, or the network is allowlisted.
    Known,
    /// A new triplet of a network at its cap: greylisted without a record;
    /// `first` is the first such refusal since the network reached it.
    Full { first: bool },
}

impl GreylistGate {
    /// A gate keeping its records in `store`, counting its events with
    /// `events`.
    pub fn new(settings: Settings, store: Arc<dyn RecordStore>, events: EventCounter) -> Self {
        Self {
            settings,
            store,
            events,
            store_down: AtomicBool::new(false),
        }
    }

    /// The network `ip` is keyed by.
    pub fn network(&self, ip: IpAddr) -> IpNet {
        let ip = ip.to_canonical();
        let prefix = match ip {
            IpAddr::V4(_) => self.settings.ipv4_prefix.min(32),
            IpAddr::V6(_) => self.settings.ipv6_prefix.min(128),
        };
        IpNet::new(ip, prefix).map_or(IpNet::from(ip), |net| net.trunc())
    }

    /// Whether a client with `score` is greylisted at all.
    pub fn is_doubtful(&self, score: Option<i32>) -> bool {
        score.is_some_and(|score| score >= self.settings.threshold)
    }

    async fn decide(
        &self,
        network: IpNet,
        sender: &str,
        recipient: &str,
    ) -> Result<Decided, StoreDown> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let settings = &self.settings;
        let client_key = format!("greylist:client:{network}");
        let retries: u32 = self
            .store
            .get(&client_key)
            .await?
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        if settings.auto_allowlist > 0 && retries >= settings.auto_allowlist {
            return Ok(Decided::Known);
        }
        let key = format!(
            "greylist:{network}|{}|{}",
            sender::normalize(sender),
            sender::normalize(recipient)
        );
        let window = settings.delay + settings.retry_window;
        match self
            .store
            .get(&key)
            .await?
            .as_deref()
            .and_then(Triplet::decode)
        {
            Some(triplet) if triplet.passed => {
                self.store
                    .put(&key, &triplet.encode(), settings.max_age)
                    .await?;
                Ok(Decided::Known)
            }
            Some(triplet)
                if now.saturating_sub(triplet.first_seen) >= settings.delay.as_secs()
                    && now.saturating_sub(triplet.first_seen) <= window.as_secs() =>
            {
                let passed = Triplet {
                    passed: true,
                    ..triplet
                };
                self.store
                    .put(&key, &passed.encode(), settings.max_age)
                    .await?;
                let retries = retries + 1;
                self.store
                    .put(&client_key, &retries.to_string(), settings.max_age)
                    .await?;
                if settings.auto_allowlist > 0 && retries == settings.auto_allowlist {
                    (self.events)("auto_allowlisted");
                    tracing::info!(
                        "greylist: network {network} allowlisted after {retries} successful retries"
                    );
                }
                Ok(Decided::Passed {
                    waited: now.saturating_sub(triplet.first_seen),
                })
            }
            Some(triplet) if now.saturating_sub(triplet.first_seen) <= window.as_secs() => {
                Ok(Decided::Greylisted)
            }
            // No record, or one whose retry window is over: a first attempt.
            _ => {
                let tally_key = Tally::key(&network);
                let stored = self.store.get(&tally_key).await?;
                let stored = stored.as_deref().and_then(Tally::decode);
                match admit(
                    stored,
                    now,
                    window.as_secs(),
                    settings.max_records_per_network,
                ) {
                    Admit::Record(tally) => {
                        let first = Triplet {
                            first_seen: now,
                            passed: false,
                        };
                        self.store.put(&key, &first.encode(), window).await?;
                        let ttl = Duration::from_secs(tally.ttl(now));
                        self.store.put(&tally_key, &tally.encode(), ttl).await?;
                        Ok(Decided::Greylisted)
                    }
                    Admit::Full { first, tally } => {
                        if first {
                            let ttl = Duration::from_secs(tally.ttl(now));
                            self.store.put(&tally_key, &tally.encode(), ttl).await?;
                        }
                        Ok(Decided::Full { first })
                    }
                }
            }
        }
    }

    /// The reply to a greylisted RCPT.
    fn rejection(&self, recipient: &str) -> Rejection {
        let domain = recipient.rsplit_once('@').map_or("", |(_, domain)| domain);
        let text = self.settings.text.replace("%r", domain);
        Rejection::with_reply(Reply::new(
            450,
            "4.2.0",
            format!("<{recipient}>: Recipient address rejected: {text}"),
        ))
    }
}

impl Gate for GreylistGate {
    fn needs_dialogue(&self, score: Option<i32>) -> bool {
        self.is_doubtful(score)
    }

    fn explain_dialogue(&self, score: i32) -> Option<String> {
        let threshold = self.settings.threshold;
        Some(if self.is_doubtful(Some(score)) {
            format!("doubtful (score {score} >= {threshold}): greylisted at RCPT, then replayed once a retry is accepted")
        } else {
            format!("not doubtful (score {score} < {threshold}): never greylisted")
        })
    }

    fn command<'a>(&'a self, client: &'a Client, command: Command<'a>) -> GateFuture<'a, Verdict> {
        Box::pin(async move {
            if command.stage != Stage::Rcpt || !self.is_doubtful(command.envelope.score) {
                return Verdict::Dunno;
            }
            let sender = command.envelope.sender.as_deref().unwrap_or_default();
            let recipient = command.argument;
            match self
                .decide(self.network(client.ip()), sender, recipient)
                .await
            {
                Err(StoreDown) => {
                    if !self.store_down.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "warning: greylist: the record store does not answer; not greylisting until it does"
                        );
                    }
                    (self.events)("store_down");
                    Verdict::Dunno
                }
                Ok(decided) => {
                    if self.store_down.swap(false, Ordering::Relaxed) {
                        tracing::warn!("greylist: the record store answers again; greylisting");
                    }
                    if let Decided::Full { first } = decided {
                        (self.events)("network_full");
                        if first {
                            tracing::warn!(
                                "warning: greylist: network {} has {} records; greylisting its new triplets without a record",
                                self.network(client.ip()),
                                self.settings.max_records_per_network
                            );
                        }
                    }
                    match decided {
                        Decided::Greylisted | Decided::Full { .. } => {
                            (self.events)("greylisted");
                            let rejection = self.rejection(recipient);
                            let reply = rejection.enforce_reply();
                            tracing::info!(
                                "{}",
                                smtpd_reject_line(
                                    client,
                                    reply.trim_end(),
                                    command.envelope,
                                    recipient
                                )
                            );
                            Verdict::Reject(rejection)
                        }
                        Decided::Passed { waited } => {
                            (self.events)("passed");
                            tracing::info!(
                                "greylist: pass for {} after {waited}s: from=<{}> to=<{}>",
                                client.endpoint(),
                                doorman_gate_api::printable(sender),
                                doorman_gate_api::printable(recipient)
                            );
                            Verdict::Dunno
                        }
                        Decided::Known => Verdict::Dunno,
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Records(Mutex<HashMap<String, String>>);

    impl RecordStore for Records {
        fn get<'a>(&'a self, key: &'a str) -> GateFuture<'a, Result<Option<String>, StoreDown>> {
            let value = self.0.lock().unwrap().get(key).cloned();
            Box::pin(std::future::ready(Ok(value)))
        }

        fn put<'a>(
            &'a self,
            key: &'a str,
            value: &'a str,
            _ttl: Duration,
        ) -> GateFuture<'a, Result<(), StoreDown>> {
            self.0.lock().unwrap().insert(key.into(), value.into());
            Box::pin(std::future::ready(Ok(())))
        }
    }

    fn gate(delay: u64, auto_allowlist: u32) -> (GreylistGate, Arc<Records>) {
        let records = Arc::new(Records::default());
        let gate = GreylistGate::new(
            Settings {
                threshold: 1,
                delay: Duration::from_secs(delay),
                retry_window: Duration::from_secs(3600),
                auto_allowlist,
                max_age: Duration::from_secs(86400),
                ipv4_prefix: 24,
                ipv6_prefix: 64,
                max_records_per_network: 3,
                text: "Greylisted, see http://postgrey.schweikert.ch/help/%r.html".into(),
            },
            Arc::clone(&records) as Arc<dyn RecordStore>,
            Arc::new(|_| {}),
        );
        (gate, records)
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
        }
    }

    #[test]
    fn first_attempt_retry_and_auto_allowlist() {
        let (gate, records) = gate(0, 2);
        let net = gate.network("192.0.2.77".parse().unwrap());
        assert_eq!(net.to_string(), "192.0.2.0/24");
        let decide = |sender: &str, to: &str| block_on(gate.decide(net, sender, to)).unwrap();
        assert_eq!(decide("a@x.test", "b@y.test"), Decided::Greylisted);
        assert!(
            matches!(decide("A@X.test", "b@y.test"), Decided::Passed { .. }),
            "same triplet"
        );
        assert_eq!(decide("a@x.test", "b@y.test"), Decided::Known);
        assert_eq!(decide("c@x.test", "b@y.test"), Decided::Greylisted);
        assert!(matches!(
            decide("c@x.test", "b@y.test"),
            Decided::Passed { .. }
        ));
        assert_eq!(
            records.0.lock().unwrap()["greylist:client:192.0.2.0/24"],
            "2"
        );
        assert_eq!(
            decide("new@z.test", "b@y.test"),
            Decided::Known,
            "allowlisted"
        );
        assert_eq!(
            gate.rejection("b@y.test").enforce_reply(),
            "450 4.2.0 <b@y.test>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/y.test.html\r\n"
        );
    }

    #[test]
    fn a_network_at_its_cap_is_greylisted_without_a_record() {
        let (gate, records) = gate(300, 5);
        let net = gate.network("198.51.100.9".parse().unwrap());
        let decide = |to: &str| block_on(gate.decide(net, "a@x.test", to)).unwrap();
        for n in 0..3 {
            assert_eq!(decide(&format!("r{n}@y.test")), Decided::Greylisted);
        }
        assert_eq!(decide("r3@y.test"), Decided::Full { first: true });
        assert_eq!(decide("r4@y.test"), Decided::Full { first: false });
        assert_eq!(decide("r0@y.test"), Decided::Greylisted, "a known triplet");
        let records = records.0.lock().unwrap();
        let triplets = records.keys().filter(|k| k.contains('|')).count();
        assert_eq!(triplets, 3, "{records:?}");
    }

    #[test]
    fn a_retry_before_the_delay_is_greylisted_again() {
        let (gate, _) = gate(300, 5);
        let net = gate.network("2001:db8:1:2::7".parse().unwrap());
        assert_eq!(net.to_string(), "2001:db8:1:2::/64");
        for _ in 0..3 {
            assert_eq!(
                block_on(gate.decide(net, "a@x.test", "b@y.test")).unwrap(),
                Decided::Greylisted
            );
        }
        assert!(!gate.is_doubtful(Some(0)));
        assert!(gate.is_doubtful(Some(1)));
        assert!(!gate.is_doubtful(None), "a cached client is not greylisted");
    }
}
