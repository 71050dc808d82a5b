//! The config tests: defaults, sections, errors with their lines, and the
//! old `[dnsbl]` score keys.

use super::*;

const MINIMAL: &str = "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:10026\"\n";

#[test]
fn minimal_config_gets_defaults() {
    let config = Config::parse(MINIMAL, Path::new("/etc/doorman/doorman.toml")).expect("ok");
    assert_eq!(config.proxy.timeout, Duration::from_secs(30));
    assert_eq!(config.backends[0].send_proxy, SendProxy::V2);
    assert_eq!(config.backends[0].connect_timeout, Duration::from_secs(5));
    assert_eq!(config.listeners[0].proxy, ProxyMode::Optional);
    assert!(config.proxy_hosts.is_empty());
    assert_eq!(config.greet_banner(), "mx.test ESMTP");
    assert_eq!(config.greet.wait, Duration::from_secs(6));
    assert_eq!(config.greet.ttl, Duration::from_secs(86400));
    assert_eq!(config.score, ScoreSection::default());
    assert_eq!(config.score.threshold, 1);
    assert_eq!(config.shared.min_ttl, Duration::from_secs(60));
    assert_eq!(config.shared.max_ttl, Duration::from_secs(3600));
    assert_eq!(config.cache.size, 100_000);
    assert_eq!(config.engine.command_limit, 20);
    assert_eq!(config.engine.line_length, 2048);
    let gates: Vec<&str> = config.gate_sections.iter().map(|(name, _)| *name).collect();
    assert_eq!(gates, ["access", "dnsbl"]);
    assert!(config.deprecated.is_empty());
}

#[test]
fn gating_sections() {
    let text = format!(
        "{MINIMAL}[greet]\nbanner = \"\"\naction = \"drop\"\n[dnsbl]\nsites = [\"zen.test=127.0.0.[2..11]*3\", \"wl.test*-2\"]\nallowlist_threshold = -1\nnameservers = [\"127.0.0.1:5300\"]\nreply_map = {{ \"zen.test\" = \"zen.example\" }}\n"
    );
    let config = Config::parse(&text, Path::new("d.toml")).expect("ok");
    assert_eq!(config.greet_banner(), "");
    assert_eq!(config.greet.action, doorman_gate_api::Action::Drop);
    assert_eq!(config.score.allowlist_threshold, -1);
    assert_eq!(config.shared.nameservers.len(), 1);
    assert_eq!(config.deprecated.len(), 1, "{:?}", config.deprecated);
    let bad = text.replace("*-2", "*two");
    let shown = Config::parse(&bad, Path::new("d.toml"))
        .expect_err("bad site")
        .to_string();
    assert!(
        shown.starts_with("d.toml:10: bad DNSBL weight factor"),
        "{shown}"
    );
}

#[test]
fn errors_carry_file_and_line() {
    let text = format!("{MINIMAL}send_proxy = \"v3\"\n");
    let error = Config::parse(&text, Path::new("d.toml")).expect_err("bad value");
    let shown = error.to_string();
    assert!(shown.starts_with("d.toml:6: "), "{shown}");
    assert!(shown.contains("v3"), "{shown}");

    let text = MINIMAL.replace("[[backend]]", "bogus = 1\n[[backend]]");
    let shown = Config::parse(&text, Path::new("d.toml"))
        .expect_err("unknown key")
        .to_string();
    assert!(shown.starts_with("d.toml:4: "), "{shown}");
    assert!(shown.contains("bogus"), "{shown}");

    let text = MINIMAL.replace("\"mx.test\"", "\"mx test\"");
    let shown = Config::parse(&text, Path::new("d.toml"))
        .expect_err("bad hostname")
        .to_string();
    assert!(shown.starts_with("d.toml:1: "), "{shown}");
}

#[test]
fn defer_accept_needs_a_required_listener() {
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\ndefer_accept = true\n",
    );
    let shown = Config::parse(&text, Path::new("d.toml"))
        .expect_err("optional listener")
        .to_string();
    assert_eq!(
        shown,
        "d.toml:4: defer_accept needs proxy = \"required\" (other clients wait for the banner)"
    );
    assert!(
        !Config::parse(MINIMAL, Path::new("d.toml"))
            .expect("ok")
            .listeners[0]
            .defer_accept
    );
}

#[test]
fn a_check_error_names_the_line_of_its_own_key() {
    // The backend's connect_timeout is on line 4, the proxy timeout
    // on line 7: a substring search would have named line 4.
    let text = "hostname = \"h\"\n[[backend]]\naddress = \"127.0.0.1:1\"\nconnect_timeout = \"2s\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[proxy]\ntimeout = \"0s\"\n";
    let shown = Config::parse(text, Path::new("d.toml"))
        .expect_err("zero timeout")
        .to_string();
    assert_eq!(shown, "d.toml:8: proxy timeout must be above 0");
    let text =
        format!("{MINIMAL}[[backend]]\naddress = \"127.0.0.1:2\"\nconnect_timeout = \"0s\"\n");
    let shown = Config::parse(&text, Path::new("d.toml"))
        .expect_err("zero connect timeout")
        .to_string();
    assert!(
        shown.starts_with("d.toml:8: backend 127.0.0.1:2"),
        "{shown}"
    );
    let text = format!("{MINIMAL}[greylist]\ndelay = \"2d\"\n");
    let text = text.replace(
        "hostname = \"mx.test\"",
        "hostname = \"mx.test\"\ngates = [\"greylist\"]",
    );
    let shown = Config::parse(&text, Path::new("d.toml"))
        .expect_err("delay above its bound")
        .to_string();
    assert!(
        shown.starts_with("d.toml:8: delay = \"2days\": at most \"1day\""),
        "{shown}"
    );
}

#[test]
fn score_takes_the_old_dnsbl_keys_as_aliases() {
    let old = format!("{MINIMAL}[dnsbl]\nthreshold = 3\naction = \"enforce\"\n");
    let config = Config::parse(&old, Path::new("d.toml")).expect("aliases");
    assert_eq!(config.score.threshold, 3);
    assert_eq!(config.score.action, doorman_gate_api::Action::Enforce);
    assert_eq!(
        config.deprecated,
        [
            "[dnsbl] threshold is deprecated: it is [score] threshold now, which judges every gate's weights",
            "[dnsbl] action is deprecated: it is [score] action now, which judges every gate's weights",
        ]
    );
    let new = format!("{MINIMAL}[score]\nthreshold = 3\naction = \"enforce\"\n");
    let config = Config::parse(&new, Path::new("d.toml")).expect("score");
    assert_eq!(config.score.threshold, 3);
    assert!(config.deprecated.is_empty());
    let both = format!("{MINIMAL}[score]\nthreshold = 3\n[dnsbl]\nthreshold = 2\n");
    let shown = Config::parse(&both, Path::new("d.toml"))
        .expect_err("both")
        .to_string();
    assert!(
        shown.starts_with("d.toml:9: [dnsbl] threshold is the old name"),
        "{shown}"
    );
}

#[test]
fn durations_and_modes() {
    let text = "hostname = \"h\"\n[proxy]\ntimeout = \"1500ms\"\n[[listener]]\naddress = \"[::1]:2525\"\nproxy = \"optional\"\n[[backend]]\naddress = \"127.0.0.1:1\"\nsend_proxy = \"none\"\nconnect_timeout = \"2s\"\n";
    let config = Config::parse(text, Path::new("x.toml")).expect("ok");
    assert_eq!(config.proxy.timeout, Duration::from_millis(1500));
    assert_eq!(config.backends[0].send_proxy, SendProxy::None);
    assert_eq!(config.listeners[0].address, "[::1]:2525".parse().unwrap());
}

#[test]
fn required_mode_needs_hosts() {
    let text = MINIMAL.replace(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nproxy = \"required\"",
    );
    let shown = Config::parse(&text, Path::new("d.toml"))
        .expect_err("needs hosts")
        .to_string();
    assert!(shown.contains("hosts_file"), "{shown}");
}

#[test]
fn a_cluster_balanced_by_recipient_is_checked_and_warned_about_without_tls() {
    let text = format!(
        "{MINIMAL}[cluster.\"\"]\nbalance = \"recipient\"\nkey = \"domain\"\nuser_expire = \"1h\"\n"
    );
    let config = Config::parse(&text, Path::new("d.toml")).expect("ok");
    let section = config.by_recipient("").expect("balanced by recipient");
    assert_eq!(section.key, RecipientKey::Domain);
    assert_eq!(section.user_expire, Duration::from_secs(3600));
    assert_eq!(
        config.starttls_warning().as_deref(),
        Some("no [tls] section: clients whose conversation doorman reads (routing by recipient) are not offered STARTTLS; add [tls] to offer it")
    );
    let shown = Config::parse(&text.replace("\"1h\"", "\"2d\""), Path::new("d.toml"))
        .expect_err("above a day")
        .to_string();
    assert!(shown.starts_with("d.toml:9: user_expire"), "{shown}");
    let shown = Config::parse(
        &text.replace("[cluster.\"\"]", "[cluster.nowhere]"),
        Path::new("d.toml"),
    )
    .expect_err("no such cluster")
    .to_string();
    assert!(
        shown.contains("[cluster.nowhere] names a cluster with no [[backend]]"),
        "{shown}"
    );
    let shown = Config::parse(
        &format!("{MINIMAL}[pool]\nbalance = \"recipient\"\n"),
        Path::new("d.toml"),
    )
    .expect_err("recipient in [pool]")
    .to_string();
    assert!(
        shown.starts_with("d.toml:7: balance = \"recipient\" is set per cluster"),
        "{shown}"
    );
}

#[test]
fn relay_mode_clusters_are_whole_and_not_balanced_by_recipient() {
    let relay = MINIMAL.replace(
        "address = \"127.0.0.1:10026\"\n",
        "address = \"127.0.0.1:10026\"\nsend_proxy = \"received\"\n",
    );
    let config = Config::parse(&relay, Path::new("d.toml")).expect("ok");
    assert_eq!(config.backends[0].send_proxy, SendProxy::Received);
    assert_eq!(config.relay, RelaySection::default());
    assert_eq!(config.relay.max_hops, 50);
    assert_eq!(
        config.starttls_warning().as_deref(),
        Some("no [tls] section: clients whose conversation doorman reads (relay mode) are not offered STARTTLS; add [tls] to offer it")
    );
    let mixed = format!("{relay}[[backend]]\naddress = \"127.0.0.1:10027\"\n");
    let shown = Config::parse(&mixed, Path::new("d.toml"))
        .expect_err("a mixed cluster")
        .to_string();
    assert!(
        shown.starts_with("d.toml:6: cluster \"\" mixes send_proxy = \"received\""),
        "{shown}"
    );
    let balanced = format!("{relay}[cluster.\"\"]\nbalance = \"recipient\"\n");
    let shown = Config::parse(&balanced, Path::new("d.toml"))
        .expect_err("relay mode by recipient")
        .to_string();
    assert!(shown.contains("cannot be balanced by recipient"), "{shown}");
    let shown = Config::parse(
        &format!("{relay}[relay]\nmax_hops = 0\n"),
        Path::new("d.toml"),
    )
    .expect_err("no hops")
    .to_string();
    assert!(shown.contains("max_hops"), "{shown}");
}

/// `[deep_tests]` as written, with its errors and their lines, pinned:
/// the section's form must not change with the code that reads it.
#[test]
fn deep_tests_keys_and_errors_are_pinned() {
    let text = format!(
        "{MINIMAL}[deep_tests]\nafter_pass = \"reconnect\"\npipelining = {{ enable = true, action = \"drop\", ttl = \"2d\" }}\nnon_smtp_command = {{ enable = true }}\nbare_newline = {{ ttl = \"1h\" }}\nforbidden_commands = [\"get\"]\n"
    );
    let config = Config::parse(&text, Path::new("d.toml")).expect("ok");
    assert_eq!(
        config.shortest_ttl(),
        Duration::from_secs(60),
        "[dnsbl] min_ttl"
    );
    let shorter = text.replace("\"1h\"", "\"20s\"");
    let config = Config::parse(&shorter, Path::new("d.toml")).expect("ok");
    assert_eq!(config.shortest_ttl(), Duration::from_secs(20));
    // The keys in the order serde lists them: the deep tests' own names
    // (pinned in `crate::deep`'s tests) between `after_pass` and
    // `forbidden_commands`, so that a new deep test touches no line here.
    let keys: Vec<String> = ["after_pass"]
        .into_iter()
        .chain(crate::deep::DeepTest::ALL.map(crate::deep::DeepTest::name))
        .chain(["forbidden_commands"])
        .map(|key| format!("`{key}`"))
        .collect();
    let unknown_key = format!(
        "d.toml:11: forbidden = [\"get\"]: unknown field `forbidden`, expected one of {}",
        keys.join(", ")
    );
    let errors = [
        (
            text.replace("forbidden_commands", "forbidden"),
            unknown_key.as_str(),
        ),
        (
            text.replace("enable = true }", "enable = \"yes\" }"),
            "d.toml:9: non_smtp_command = { enable = \"yes\" }: invalid type: string \"yes\", expected a boolean",
        ),
        (
            text.replace("\"2d\"", "\"2y\""),
            "d.toml:8: pipelining ttl = \"2years\": at most \"11months 30days 3h 50m 24s\" (the configuration reference lists every bound)",
        ),
        (
            text.replace("\"reconnect\"", "\"again\""),
            "d.toml:7: after_pass = \"again\": unknown variant `again`, expected `replay` or `reconnect`",
        ),
    ];
    for (bad, expected) in errors {
        let shown = Config::parse(&bad, Path::new("d.toml"))
            .expect_err(expected)
            .to_string();
        assert_eq!(shown, expected);
    }
}

/// The resolver keys written under `[dnsbl]`, with their errors and their
/// lines, pinned: which gate's table holds them is the registry's
/// knowledge, and the file reads the same.
#[test]
fn the_shared_resolver_keys_under_dnsbl_are_pinned() {
    let text = format!(
        "{MINIMAL}[dnsbl]\nsites = [\"zen.test\"]\nmin_ttl = \"30s\"\nmax_ttl = \"2h\"\ntimeout = \"3s\"\nnameservers = [\"127.0.0.1:5300\"]\n"
    );
    let config = Config::parse(&text, Path::new("d.toml")).expect("ok");
    let resolver = &config.context.resolver;
    assert_eq!(resolver.min_ttl, Duration::from_secs(30));
    assert_eq!(resolver.max_ttl, Duration::from_secs(7200));
    assert_eq!(resolver.timeout, Duration::from_secs(3));
    assert_eq!(resolver.nameservers.len(), 1);
    assert_eq!(config.shortest_ttl(), Duration::from_secs(30));
    let errors = [
        (
            text.replace("\"30s\"", "30"),
            "d.toml:8: min_ttl = 30: invalid type: integer `30`, expected a duration: a duration is a number with its unit, e.g. \"6s\", \"500ms\", \"5m\", \"1h\", \"30d\"",
        ),
        (
            text.replace("\"30s\"", "\"3h\""),
            "d.toml:8: dnsbl min_ttl is above max_ttl",
        ),
        (
            text.replace("\"3s\"", "\"10m\""),
            "d.toml:10: timeout = \"10m\": at most \"5m\" (the configuration reference lists every bound)",
        ),
        (
            text.replace("sites", "sitez"),
            "d.toml:7: sitez = [\"zen.test\"]: unknown field `sitez`, expected `sites` or `reply_map`",
        ),
    ];
    for (bad, expected) in errors {
        let shown = Config::parse(&bad, Path::new("d.toml"))
            .expect_err(expected)
            .to_string();
        assert_eq!(shown, expected);
    }
}
