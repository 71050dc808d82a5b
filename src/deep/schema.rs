//! The `[deep_tests]` section's JSON Schema, written by hand because the
//! section's `Deserialize` is (one key per entry of the deep-test table):
//! the configuration reference gets `after_pass`, `forbidden_commands`
//! and, for each test in the table, a `{ enable, action, ttl }` table with
//! that test's own defaults and description.

use std::borrow::Cow;

use doorman_gate_api::schema::format_duration;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::section::{default_forbidden_commands, AfterPass, DeepTestConfig, DeepTestsSection};
use super::DeepTest;

/// The meaning of `[deep_tests] after_pass`.
pub const AFTER_PASS: &str = "What a client that passed the deep tests at its first RCPT meets: \
    `replay` (the dialogue is replayed into a backend and relayed; the client never notices) or \
    `reconnect` (postscreen's way: 450 to every RCPT, the pass remembered, the client comes back).";

/// The meaning of `[deep_tests] forbidden_commands`.
pub const FORBIDDEN_COMMANDS: &str = "The non-SMTP command verbs of the `non_smtp_command` test \
    (postscreen's `postscreen_forbidden_commands`).";

impl JsonSchema for DeepTestsSection {
    fn schema_name() -> Cow<'static, str> {
        "DeepTestsSection".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut after_pass = generator.subschema_for::<AfterPass>();
        after_pass.insert("description".into(), AFTER_PASS.into());
        after_pass.insert("default".into(), serde_json::json!(AfterPass::default()));
        let forbidden = default_forbidden_commands();
        let mut properties = serde_json::Map::new();
        properties.insert("after_pass".into(), after_pass.into());
        properties.insert(
            "forbidden_commands".into(),
            json_schema!({
                "type": "array",
                "items": { "type": "string" },
                "description": FORBIDDEN_COMMANDS,
                "default": forbidden,
            })
            .into(),
        );
        for test in DeepTest::ALL {
            properties.insert(test.name().into(), test_schema(generator, test).into());
        }
        json_schema!({
            "type": "object",
            "description": "postscreen's deep protocol tests, after the 220 greeting.",
            "properties": properties,
            "additionalProperties": false,
        })
    }
}

/// One test's `{ enable, action, ttl }` table, with its defaults.
fn test_schema(generator: &mut SchemaGenerator, test: DeepTest) -> Schema {
    let action = test.default_action().to_string();
    let ttl = format_duration(test.default_ttl());
    let enable = DeepTestConfig::default().enable;
    let mut schema = DeepTestConfig::json_schema(generator);
    if let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        let defaults = [
            ("enable", enable.into()),
            ("action", action.clone().into()),
            ("ttl", ttl.clone().into()),
        ];
        for (key, default) in defaults {
            if let Some(field) = properties
                .get_mut(key)
                .and_then(serde_json::Value::as_object_mut)
            {
                field.insert("default".into(), default);
            }
        }
    }
    schema.insert("description".into(), test.about().into());
    schema.insert(
        "default".into(),
        serde_json::json!({ "enable": enable, "action": action, "ttl": ttl }),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema names the keys the section's `Deserialize` reads, and
    /// each test's table its own defaults.
    #[test]
    fn the_schema_has_the_sections_keys() {
        let schema = schemars::schema_for!(DeepTestsSection);
        let properties = schema
            .get("properties")
            .and_then(serde_json::Value::as_object)
            .unwrap();
        let mut named: Vec<&str> = properties.keys().map(String::as_str).collect();
        let mut keys = super::super::section::KEYS.to_vec();
        named.sort_unstable();
        keys.sort_unstable();
        assert_eq!(named, keys);
        for test in DeepTest::ALL {
            let action = &properties[test.name()]["properties"]["action"]["default"];
            assert_eq!(action, &test.default_action().to_string());
        }
    }
}
