//! One client's passes, and their text form in a store.
//!
//! The text is postscreen's cache record: the expiry times, in seconds
//! since the epoch, of `pregreet;dnsbl;pipelining;non_smtp;bare_newline`,
//! where `0` means never passed. Shorter records (an older doorman, or a
//! postscreen record with fewer tests) read as "never passed" for the rest.
//! Gates and tests postscreen does not have store their passes behind
//! those five fields as `;name=expiry`, which an older doorman never reads;
//! a doorman without that gate keeps them untouched. An entry is indexed
//! by the name of the test or gate (a deep test's name is its own), never
//! by a field per test.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The tests of postscreen's cache record, in its order: a pass of one of
/// them is stored in its field, a pass of any other test or gate behind
/// them by name.
pub const RECORD_FIELDS: [&str; 5] = [
    "pregreet",
    "dnsbl",
    "pipelining",
    "non_smtp_command",
    "bare_newline",
];

/// The most passes of other gates an entry keeps (a store with garbage in
/// it cannot grow one without bound).
const MAX_OTHER_GATES: usize = 16;
/// The longest gate name an entry keeps.
const MAX_GATE_NAME: usize = 32;

/// One client's passes: the time each one expires, by the name of the
/// test or gate that passed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// When the pass of each of [`RECORD_FIELDS`] expires.
    fields: [Option<SystemTime>; RECORD_FIELDS.len()],
    /// The passes of tests and gates postscreen does not have, by name.
    other_gates: Vec<(String, SystemTime)>,
}

impl Entry {
    /// The field of postscreen's record that holds `name`'s pass.
    fn field(name: &str) -> Option<usize> {
        RECORD_FIELDS.iter().position(|field| *field == name)
    }

    /// When the pass of the test or gate `name` expires, if it has one.
    pub fn expiry(&self, name: &str) -> Option<SystemTime> {
        match Self::field(name) {
            Some(field) => self.fields[field],
            None => self
                .other_gates
                .iter()
                .filter(|(gate, _)| gate == name)
                .map(|(_, at)| *at)
                .max(),
        }
    }

    /// Whether the test or gate `name` has a pass that holds at `now`.
    pub fn passed_gate(&self, name: &str, now: SystemTime) -> bool {
        self.expiry(name).is_some_and(|at| at > now)
    }

    /// Records a pass of the test or gate `name` that holds for `ttl` from
    /// `now`.
    pub fn record_gate(&mut self, name: &str, now: SystemTime, ttl: Duration) {
        self.record_until(name, now + ttl);
    }

    /// Records a pass of the test or gate `name` that holds until `at`.
    pub fn record_until(&mut self, name: &str, at: SystemTime) {
        if let Some(field) = Self::field(name) {
            self.fields[field] = Some(at);
            return;
        }
        self.other_gates.retain(|(gate, _)| gate != name);
        if self.other_gates.len() < MAX_OTHER_GATES && name.len() <= MAX_GATE_NAME {
            self.other_gates.push((name.to_string(), at));
        }
    }

    /// The latest expiry of any test.
    pub fn latest(&self) -> Option<SystemTime> {
        self.fields
            .iter()
            .flatten()
            .copied()
            .chain(self.other_gates.iter().map(|(_, at)| *at))
            .max()
    }

    /// Whether cleanup may drop the entry: every test expired more than
    /// `retention` before `now` (postscreen's `postscreen_cache_retention_time`).
    pub fn stale(&self, now: SystemTime, retention: Duration) -> bool {
        self.latest().is_none_or(|latest| latest + retention < now)
    }

    /// The record text.
    pub fn encode(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|at| seconds(*at).to_string())
            .collect();
        let mut text = fields.join(";");
        for (gate, at) in &self.other_gates {
            text.push_str(&format!(";{gate}={}", seconds(Some(*at))));
        }
        text
    }

    /// Reads a record; `None` when it is not one. Other gates' fields that
    /// do not read as `name=expiry` are skipped.
    pub fn decode(text: &str) -> Option<Self> {
        let mut fields = text.trim().split(';');
        let mut entry = Self::default();
        for slot in &mut entry.fields {
            *slot = match fields.next().map(str::parse::<u64>) {
                None | Some(Ok(0)) => None,
                Some(Ok(at)) => Some(UNIX_EPOCH + Duration::from_secs(at)),
                Some(Err(_)) => return None,
            };
        }
        for field in fields {
            let Some((gate, at)) = field.split_once('=') else {
                continue;
            };
            let Ok(at) = at.parse::<u64>() else { continue };
            let valid = !gate.is_empty()
                && gate.len() <= MAX_GATE_NAME
                && gate.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if valid && at > 0 && entry.other_gates.len() < MAX_OTHER_GATES {
                entry
                    .other_gates
                    .push((gate.to_string(), UNIX_EPOCH + Duration::from_secs(at)));
            }
        }
        Some(entry)
    }
}

fn seconds(at: Option<SystemTime>) -> u64 {
    at.and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_expire() {
        let now = SystemTime::now();
        let mut entry = Entry::default();
        assert!(!entry.passed_gate("pregreet", now));
        entry.record_gate("pregreet", now, Duration::from_secs(10));
        assert!(entry.passed_gate("pregreet", now + Duration::from_secs(9)));
        assert!(!entry.passed_gate("pregreet", now + Duration::from_secs(10)));
        assert!(!entry.passed_gate("dnsbl", now));
    }

    #[test]
    fn records_round_trip_in_postscreen_layout() {
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut entry = Entry::default();
        entry.record_until("pregreet", at);
        assert_eq!(entry.encode(), "1800000000;0;0;0;0");
        assert_eq!(Entry::decode("1800000000;0;0;0;0"), Some(entry.clone()));
        assert_eq!(
            Entry::decode("1800000000"),
            Some(entry),
            "short records pad"
        );
        assert_eq!(Entry::decode("x;1"), None);
    }

    #[test]
    fn other_gates_are_stored_behind_postscreens_fields() {
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now = at - Duration::from_secs(10);
        let mut entry = Entry::default();
        entry.record_until("dnsbl", at);
        entry.record_gate("rdns", now, Duration::from_secs(10));
        assert!(entry.passed_gate("rdns", now));
        assert!(entry.passed_gate("dnsbl", now));
        assert!(!entry.passed_gate("greylist", now));
        assert_eq!(entry.encode(), "0;1800000000;0;0;0;rdns=1800000000");
        assert_eq!(Entry::decode(&entry.encode()), Some(entry.clone()));
        // A reader that knows only postscreen's five fields gets them.
        let postscreen_only = Entry::decode("0;1800000000;0;0;0").unwrap();
        assert_eq!(postscreen_only.expiry("dnsbl"), entry.expiry("dnsbl"));
        // Garbage behind the five fields is skipped, not fatal.
        let odd = Entry::decode("0;1800000000;0;0;0;x;=5;a b=3;rdns=1800000000").unwrap();
        assert_eq!(odd, entry);
    }

    /// The stored record of an entry with every test and two other gates
    /// set, pinned: entries in a redb file or Redis must read back the
    /// same, and be written the same, whatever the code behind them.
    #[test]
    fn the_record_of_an_entry_with_every_test_set_is_pinned() {
        let base = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let names = [
            "pregreet",
            "dnsbl",
            "pipelining",
            "non_smtp_command",
            "bare_newline",
            "rdns",
            "greylist",
        ];
        let mut entry = Entry::default();
        for (index, name) in names.iter().enumerate() {
            entry.record_gate(name, base, Duration::from_secs(index as u64 + 1));
        }
        let record = "1800000001;1800000002;1800000003;1800000004;1800000005;\
                      rdns=1800000006;greylist=1800000007";
        assert_eq!(entry.encode(), record);
        let decoded = Entry::decode(record).unwrap();
        assert_eq!(decoded, entry);
        assert_eq!(decoded.encode(), record);
        for (index, name) in names.iter().enumerate() {
            let expiry = base + Duration::from_secs(index as u64 + 1);
            assert!(decoded.passed_gate(name, expiry - Duration::from_secs(1)));
            assert!(!decoded.passed_gate(name, expiry), "{name}");
        }
        assert_eq!(decoded.latest(), Some(base + Duration::from_secs(7)));
        // A record with a field left unset, and postscreen's own shorter
        // records, read back the same way.
        let gaps = Entry::decode("0;1800000002;0;1800000004;0").unwrap();
        assert!(!gaps.passed_gate("pregreet", base));
        assert!(gaps.passed_gate("non_smtp_command", base));
        assert!(!gaps.passed_gate("bare_newline", base));
        assert_eq!(gaps.encode(), "0;1800000002;0;1800000004;0");
        let short = Entry::decode("1800000001;1800000002;1800000003").unwrap();
        assert!(short.passed_gate("pipelining", base));
        assert!(!short.passed_gate("non_smtp_command", base));
        assert_eq!(short.encode(), "1800000001;1800000002;1800000003;0;0");
    }

    #[test]
    fn staleness_uses_the_latest_expiry_and_the_retention() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let week = Duration::from_secs(7 * 86400);
        let entry = |pregreet: u64, dnsbl: u64| {
            let mut entry = Entry::default();
            entry.record_until("pregreet", UNIX_EPOCH + Duration::from_secs(pregreet));
            entry.record_until("dnsbl", UNIX_EPOCH + Duration::from_secs(dnsbl));
            entry
        };
        assert!(
            !entry(2_000_000, 1).stale(now, week),
            "pregreet still valid"
        );
        assert!(
            !entry(999_000, 1).stale(now, week),
            "expired within retention"
        );
        assert!(entry(1_000, 2_000).stale(now, week), "all expired long ago");
        assert!(Entry::default().stale(now, week));
    }
}
