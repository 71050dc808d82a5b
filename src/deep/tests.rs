//! The deep tests' table, their looks at lines, and their section.

use super::*;

fn line(text: &str, bare: bool) -> Line {
    Line {
        text: text.as_bytes().to_vec(),
        bare_newline: bare,
    }
}

fn test(name: &str) -> DeepTest {
    DeepTest::named(name).expect("a deep test")
}

fn all() -> DeepTests {
    DeepTests::new(
        DeepTest::ALL.to_vec(),
        &["CONNECT".into(), "GET".into(), "POST".into()],
    )
}

/// What each test is, pinned: its names in the config, the metrics, the
/// cache and the log, postscreen's default action, the 30 days a pass
/// holds, and the reply of a drop.
#[test]
fn the_table_says_what_postscreen_says() {
    let table: Vec<_> = DeepTest::ALL
        .into_iter()
        .map(|test| {
            (
                test.name(),
                test.log_name(),
                test.default_action(),
                test.default_ttl(),
                test.drop_reply(),
            )
        })
        .collect();
    let days = Duration::from_secs(30 * 86400);
    let protocol_error = "521 5.5.1 Protocol error\r\n".to_string();
    assert_eq!(
        table,
        [
            (
                "pipelining",
                "COMMAND PIPELINING",
                Action::Enforce,
                days,
                protocol_error.clone()
            ),
            (
                "non_smtp_command",
                "NON-SMTP COMMAND",
                Action::Drop,
                days,
                "521 5.7.0 Error: I can break rules, too. Goodbye.\r\n".to_string()
            ),
            (
                "bare_newline",
                "BARE NEWLINE",
                Action::Ignore,
                days,
                protocol_error
            ),
        ]
    );
    assert_eq!(
        test("bare_newline")
            .refusal(Action::Enforce)
            .enforce_reply(),
        "550 5.5.1 Protocol error\r\n"
    );
    assert_eq!(DeepTest::named("pregreet"), None);
    assert_eq!(format!("{:?}", test("pipelining")), "pipelining");
}

#[test]
fn violations_once_each() {
    let mut deep = all();
    let v = deep.inspect(&line("EHLO x", false), b"MAIL FROM:<a@b>\r\n", "CONNECT");
    assert_eq!(
        v,
        vec![Violation {
            test: test("pipelining"),
            detail: "after EHLO: MAIL FROM:<a@b>\\r\\n".into()
        }]
    );
    assert!(
        deep.inspect(&line("NOOP", false), b"x", "EHLO").is_empty(),
        "once"
    );
    let v = deep.inspect(&line("GET / HTTP/1.0", false), b"", "EHLO");
    assert_eq!(v[0].detail, "after EHLO: GET / HTTP/1.0");
    let v = deep.inspect(&line("RSET", true), b"", "GET");
    assert_eq!(v[0].detail, "after RSET");
    assert!(deep.failed());
}

#[test]
fn one_line_reports_each_test_in_the_tables_order() {
    let mut deep = all();
    let v = deep.inspect(&line("Host: x", true), b"y", "CONNECT");
    let tests: Vec<_> = v.iter().map(|v| v.test.name()).collect();
    assert_eq!(tests, ["pipelining", "non_smtp_command", "bare_newline"]);
    assert_eq!(
        v[0].detail, "after HOST:: y",
        "the verb, as postscreen shows it"
    );
    assert_eq!(v[1].detail, "after CONNECT: Host: x");
    assert_eq!(v[2].detail, "after Host: x");
}

#[test]
fn a_bdat_chunk_is_not_pipelining() {
    let mut deep = all();
    assert!(deep
        .inspect(&line("BDAT 5 LAST", false), b"hello", "RCPT")
        .is_empty());
    assert!(!deep.has_failed(test("pipelining")));
    let v = deep.inspect(&line("DATA", false), b"Subject: x\r\n", "RCPT");
    assert_eq!(v[0].test, test("pipelining"));
    assert!(deep.has_failed(test("pipelining")));
}

#[test]
fn header_labels_and_disabled_tests() {
    let mut deep = all();
    assert_eq!(
        deep.inspect(&line("Host: example.com", false), b"", "GET")
            .len(),
        1
    );
    let mut deep = all();
    assert!(deep
        .inspect(&line("MAIL FROM:<a@b>", false), b"", "EHLO")
        .is_empty());
    let mut only_bare = DeepTests::new(vec![test("bare_newline")], &[]);
    assert!(only_bare
        .inspect(&line("GET /", false), b"x", "CONNECT")
        .is_empty());
    assert!(!only_bare.failed());
}

#[test]
fn the_section_has_a_key_per_test_with_its_defaults() {
    let section: DeepTestsSection = toml::from_str(
        "after_pass = \"reconnect\"\npipelining = { enable = true }\nbare_newline = { enable = true, action = \"drop\", ttl = \"1h\" }\n",
    )
    .expect("a section");
    assert_eq!(section.after_pass, AfterPass::Reconnect);
    assert_eq!(section.forbidden_commands, ["CONNECT", "GET", "POST"]);
    let enabled: Vec<_> = section.enabled().map(DeepTest::name).collect();
    assert_eq!(enabled, ["pipelining", "bare_newline"]);
    let pipelining = test("pipelining");
    assert_eq!(section.action(pipelining), Action::Enforce);
    assert_eq!(section.ttl(pipelining), Duration::from_secs(30 * 86400));
    assert_eq!(section.action(test("non_smtp_command")), Action::Drop);
    assert_eq!(section.action(test("bare_newline")), Action::Drop);
    assert_eq!(section.ttl(test("bare_newline")), Duration::from_secs(3600));
    assert!(!section.settings(test("non_smtp_command")).enable);
    assert_eq!(
        toml::from_str::<DeepTestsSection>("").expect("empty"),
        DeepTestsSection::default()
    );
    let year = Duration::from_secs(365 * 86400);
    assert_eq!(section.check(year), Ok(()));
    assert!(section.check(Duration::from_secs(60)).is_err());
    let unknown = toml::from_str::<DeepTestsSection>("pregreet = { enable = true }")
        .expect_err("not a deep test");
    assert!(
        unknown.to_string().contains(
            "unknown field `pregreet`, expected one of `after_pass`, `pipelining`, `non_smtp_command`, `bare_newline`, `forbidden_commands`"
        ),
        "{unknown}"
    );
}
