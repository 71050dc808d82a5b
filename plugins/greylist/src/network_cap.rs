//! The cap on greylist records per client network. Every new triplet record
//! of a network is counted in one more record, `greylist:records:<network>`,
//! that lives as long as the newest triplet record it counts (`delay` plus
//! `retry_window`). Once a network has `max_records_per_network` records,
//! a new triplet of it is refused with the greylist's 450 and makes no
//! record, as a full table would: a client cannot fill the shared store by
//! pipelining recipients or by coming back.
//!
//! The tally errs high, never low: a triplet record that expires, or that
//! is written again after its retry window, is still counted until the
//! tally itself expires. Across a fleet two instances may both read the
//! tally before either writes it, so the cap may be passed by the number of
//! instances writing at the same moment, never by a session's pipeline.

/// One network's tally of triplet records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Triplet records made for the network; one more than the cap once a
    /// refusal at the cap has been logged.
    records: u32,
    /// When the newest of them expires (seconds since the epoch).
    until: u64,
}

/// What the tally says about one new triplet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Under the cap: make the record and write this tally.
    Record(Tally),
    /// At the cap: no record. `first` is the first refusal since the cap
    /// was reached (log it, and write `tally` so that the next is not).
    Full {
        /// Whether this is the first refusal of this fill.
        first: bool,
        /// The tally to write when `first`.
        tally: Tally,
    },
}

impl Tally {
    /// The store key of `network`'s tally.
    pub(crate) fn key(network: &ipnet::IpNet) -> String {
        format!("greylist:records:{network}")
    }

    /// The stored form.
    pub(crate) fn encode(self) -> String {
        format!("{};{}", self.records, self.until)
    }

    /// A stored tally; `None` for anything else.
    pub(crate) fn decode(text: &str) -> Option<Self> {
        let (records, until) = text.split_once(';')?;
        Some(Self {
            records: records.parse().ok()?,
            until: until.parse().ok()?,
        })
    }

    /// Seconds from `now` until the tally expires (at least one).
    pub(crate) fn ttl(self, now: u64) -> u64 {
        self.until.saturating_sub(now).max(1)
    }
}

/// Whether a network whose stored tally is `stored` may get one more
/// triplet record at `now`, with records kept `window` seconds and at most
/// `cap` of them.
pub(crate) fn admit(stored: Option<Tally>, now: u64, window: u64, cap: u32) -> Admit {
    let current = stored.filter(|tally| tally.until > now).unwrap_or(Tally {
        records: 0,
        until: now,
    });
    if current.records < cap {
        Admit::Record(Tally {
            records: current.records + 1,
            until: now.saturating_add(window),
        })
    } else {
        Admit::Full {
            first: current.records == cap,
            tally: Tally {
                records: cap.saturating_add(1),
                until: current.until,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_up_to_the_cap_then_refuses_and_logs_once() {
        let mut stored = None;
        for n in 1..=3 {
            match admit(stored, 1000, 60, 3) {
                Admit::Record(tally) => {
                    assert_eq!(tally.records, n);
                    assert_eq!(tally.until, 1060);
                    stored = Tally::decode(&tally.encode());
                }
                other => panic!("record {n}: {other:?}"),
            }
        }
        let Admit::Full { first: true, tally } = admit(stored, 1010, 60, 3) else {
            panic!("the fourth is refused, first");
        };
        assert_eq!(tally.until, 1060, "a refusal does not extend the tally");
        assert_eq!(tally.ttl(1010), 50);
        assert!(matches!(
            admit(Some(tally), 1011, 60, 3),
            Admit::Full { first: false, .. }
        ));
        assert!(
            matches!(admit(Some(tally), 1060, 60, 3), Admit::Record(t) if t.records == 1),
            "an expired tally starts over"
        );
        assert_eq!(Tally::decode("x;1"), None);
    }
}
