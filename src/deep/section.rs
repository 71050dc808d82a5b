//! The `[deep_tests]` section, as serde reads it: `after_pass`,
//! `forbidden_commands`, and one `{ enable, action, ttl }` table for each
//! deep test, under the test's name. Unknown keys are refused, as every
//! section of the core refuses them.

use std::fmt;
use std::time::Duration;

use doorman_gate_api::schema::{at_most, HumanDuration, YEAR};
use doorman_gate_api::section::bound_message;
use doorman_gate_api::{Action, SectionError};
use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{DeepTest, TESTS};

/// What happens when a client passed the deep tests at its first RCPT.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AfterPass {
    /// Replay the dialogue into a backend and relay: the client never
    /// notices.
    #[default]
    Replay,
    /// postscreen's way: 450 to every RCPT, remember the pass, and let the
    /// client come back.
    Reconnect,
}

/// One deep test's settings.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeepTestConfig {
    /// Whether the test runs (every deep test is off by default).
    #[serde(default)]
    pub enable: bool,
    /// What to do with a client that fails it: `ignore`, `enforce` or
    /// `drop`.
    pub action: Option<Action>,
    /// How long a pass is remembered.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<HumanDuration>", transform = at_most(YEAR))]
    pub ttl: Option<Duration>,
}

/// The `[deep_tests]` section: postscreen's tests after the 220 greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeepTestsSection {
    /// What a pass leads to (see [`super::AFTER_PASS`]).
    pub after_pass: AfterPass,
    /// The non-SMTP command verbs (see [`super::FORBIDDEN_COMMANDS`]).
    pub forbidden_commands: Vec<String>,
    /// Each test's settings, in the table's order.
    tests: [DeepTestConfig; TESTS.len()],
}

impl DeepTestsSection {
    /// `test`'s settings, as written.
    pub fn settings(&self, test: DeepTest) -> &DeepTestConfig {
        &self.tests[test.0]
    }

    /// The tests that are enabled, in the table's order.
    pub fn enabled(&self) -> impl Iterator<Item = DeepTest> + '_ {
        DeepTest::ALL
            .into_iter()
            .filter(|test| self.settings(*test).enable)
    }

    /// `test`'s action: as written, else its default.
    pub fn action(&self, test: DeepTest) -> Action {
        self.settings(test)
            .action
            .unwrap_or_else(|| test.default_action())
    }

    /// How long a pass of `test` is remembered: as written, else its
    /// default.
    pub fn ttl(&self, test: DeepTest) -> Duration {
        self.settings(test)
            .ttl
            .unwrap_or_else(|| test.default_ttl())
    }

    /// Checks each test's pass TTL against `longest` (the config's bound).
    pub fn check(&self, longest: Duration) -> Result<(), SectionError> {
        for test in DeepTest::ALL {
            let name = test.name();
            if let Some(ttl) = self.settings(test).ttl {
                SectionError::within(&format!("{name}.ttl"), ttl, longest).map_err(|_| {
                    SectionError::key(
                        format!("{name}.ttl"),
                        bound_message(&format!("{name} ttl"), ttl, longest),
                    )
                })?;
            }
        }
        Ok(())
    }
}

impl Default for DeepTestsSection {
    fn default() -> Self {
        Self {
            after_pass: AfterPass::default(),
            forbidden_commands: default_forbidden_commands(),
            tests: std::array::from_fn(|_| DeepTestConfig::default()),
        }
    }
}

/// postscreen's `postscreen_forbidden_commands`: `CONNECT GET POST`.
pub(super) fn default_forbidden_commands() -> Vec<String> {
    ["CONNECT", "GET", "POST"]
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The section's keys, in the order an error lists them.
pub(super) const KEYS: [&str; TESTS.len() + 2] = {
    let mut keys = ["after_pass"; TESTS.len() + 2];
    let mut index = 0;
    while index < TESTS.len() {
        keys[index + 1] = TESTS[index].name;
        index += 1;
    }
    keys[TESTS.len() + 1] = "forbidden_commands";
    keys
};

/// One key of the section.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    AfterPass,
    ForbiddenCommands,
    Test(DeepTest),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("field identifier")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                match key {
                    "after_pass" => Ok(Key::AfterPass),
                    "forbidden_commands" => Ok(Key::ForbiddenCommands),
                    _ => DeepTest::named(key)
                        .map(Key::Test)
                        .ok_or_else(|| E::unknown_field(key, &KEYS)),
                }
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for DeepTestsSection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct("DeepTestsSection", &KEYS, SectionVisitor)
    }
}

/// Reads the section's table key by key.
struct SectionVisitor;

impl<'de> Visitor<'de> for SectionVisitor {
    type Value = DeepTestsSection;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct DeepTestsSection")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DeepTestsSection, A::Error> {
        let mut section = DeepTestsSection::default();
        let mut seen = Vec::new();
        while let Some(key) = map.next_key::<Key>()? {
            if seen.contains(&key) {
                let name = match key {
                    Key::AfterPass => "after_pass",
                    Key::ForbiddenCommands => "forbidden_commands",
                    Key::Test(test) => test.name(),
                };
                return Err(de::Error::duplicate_field(name));
            }
            seen.push(key);
            match key {
                Key::AfterPass => section.after_pass = map.next_value()?,
                Key::ForbiddenCommands => section.forbidden_commands = map.next_value()?,
                Key::Test(test) => section.tests[test.0] = map.next_value()?,
            }
        }
        Ok(section)
    }
}
