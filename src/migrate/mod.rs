//! `doorman migrate postfix MAIN_CF [MASTER_CF]`: a Postfix set-up with
//! postscreen, as a doorman.toml, sans-IO (text in, text out).
//!
//! It reads main.cf (or `postconf -n`, the same `name = value` form) with
//! Postfix's rules: `#` comments, continuation lines that start with
//! white space, `$name`/`${name}`/`$(name)` and the conditional forms
//! `${name?value}`, `${name:value}`, `${name?{a}:{b}}` (not under
//! stress), and every postscreen parameter it knows, old names included
//! (`postscreen_blacklist_action`, `..._whitelist_threshold`). From
//! master.cf it takes the address postscreen listens on. What it cannot
//! translate is written as a comment, so nothing is dropped in silence.

mod postfix;
mod write;

pub use postfix::Parameters;
use write::Toml;

/// The postscreen parameters with no doorman counterpart, and why; each
/// one found is written as a comment.
const NOT_TRANSLATED: [(&str, &str); 9] = [
    (
        "postscreen_cache_map",
        "doorman keeps its own pass cache ([cache] store)",
    ),
    (
        "postscreen_dnsbl_reply_map",
        "copy its entries into [dnsbl] reply_map",
    ),
    (
        "postscreen_discard_ehlo_keywords",
        "the engine announces the backends' keywords",
    ),
    (
        "postscreen_disable_vrfy_command",
        "the engine answers VRFY as postscreen does",
    ),
    ("postscreen_helo_required", "not a doorman setting"),
    ("postscreen_expansion_filter", "not a doorman setting"),
    (
        "postscreen_post_queue_limit",
        "doorman hands off in-process ([limits] total)",
    ),
    (
        "postscreen_watchdog_timeout",
        "every wait in doorman has its own deadline",
    ),
    ("postscreen_command_filter", "not a doorman setting"),
];

/// The doorman.toml for a Postfix set-up: `main_cf` (main.cf or `postconf
/// -n` output) and, if given, `master_cf`.
pub fn from_postfix(main_cf: &str, master_cf: Option<&str>) -> String {
    let params = Parameters::parse(main_cf);
    let mut toml = Toml::default();
    toml.comment("Made by `doorman migrate postfix` from Postfix's postscreen settings;");
    toml.comment("check it with `doorman check --config FILE` before use.");
    let hostname = params.value("myhostname");
    match hostname.as_deref() {
        Some(name) if !name.is_empty() => toml.string("hostname", name),
        _ => {
            toml.comment("main.cf sets no myhostname: put your MX name here.");
            toml.string("hostname", "mx.example.com");
        }
    }
    let proxied = params
        .value("postscreen_upstream_proxy_protocol")
        .as_deref()
        == Some("haproxy");
    listener_and_proxy(&mut toml, &params, master_cf, proxied);
    backend(&mut toml);
    access(&mut toml, &params);
    greet(&mut toml, &params);
    dnsbl_and_score(&mut toml, &params);
    deep_tests(&mut toml, &params);
    limits_engine_cache(&mut toml, &params);
    tls(&mut toml, &params);
    not_translated(&mut toml, &params);
    toml.finish()
}

/// `[proxy]` and the `[[listener]]`: where postscreen listened (master.cf),
/// and HAProxy's PROXY header when postscreen took one.
fn listener_and_proxy(
    toml: &mut Toml,
    params: &Parameters,
    master_cf: Option<&str>,
    proxied: bool,
) {
    if proxied {
        toml.table("proxy");
        toml.comment("postscreen_upstream_proxy_protocol = haproxy: list HAProxy's address(es),");
        toml.comment("one a line, in this file beside doorman.toml.");
        toml.string("hosts_file", "haproxy_hosts");
        if let Some(timeout) = params.duration("postscreen_upstream_proxy_timeout") {
            toml.raw("timeout", &timeout);
        }
    }
    toml.array_table("listener");
    let address = master_cf.and_then(postfix::postscreen_address);
    match address {
        Some(address) => {
            toml.comment("Where master.cf's postscreen service listened.");
            toml.string("address", &address);
        }
        None => {
            toml.comment(
                "No postscreen service in master.cf (or none given): port 25 on every address.",
            );
            toml.string("address", "[::]:25");
        }
    }
    if proxied {
        toml.string("proxy", "required");
    }
}

/// The smtpd postscreen handed clients to, which doorman reaches over TCP.
fn backend(toml: &mut Toml) {
    toml.array_table("backend");
    toml.comment("The smtpd that postscreen passed clients to, now on a TCP port with the PROXY");
    toml.comment("protocol; in master.cf, instead of `smtpd pass ... smtpd`:");
    toml.comment("  127.0.0.1:10026 inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy");
    toml.string("address", "127.0.0.1:10026");
    toml.string("send_proxy", "v2");
}

/// `[access]`: `postscreen_access_list` (one cidr table, and
/// `permit_mynetworks` as `permit` networks) and its action.
fn access(toml: &mut Toml, params: &Parameters) {
    // Unset, it is Postfix's default: permit_mynetworks.
    let list = match params.raw("postscreen_access_list") {
        Some(_) => params.list("postscreen_access_list"),
        None => vec!["permit_mynetworks".to_string()],
    };
    let action = params
        .value("postscreen_denylist_action")
        .or_else(|| params.value("postscreen_blacklist_action"));
    if list.is_empty() && action.is_none() {
        return;
    }
    toml.table("access");
    let mut tables = Vec::new();
    let mut permit_first = false;
    for (index, entry) in list.iter().enumerate() {
        if entry == "permit_mynetworks" {
            permit_first = tables.is_empty() || index == 0;
            if params.raw("mynetworks").is_none() {
                toml.comment(
                    "permit_mynetworks: main.cf sets no mynetworks, and Postfix's default",
                );
                toml.comment(
                    "(mynetworks_style = subnet) also covers this host's own subnets: add them.",
                );
                toml.strings(
                    "permit",
                    &["127.0.0.0/8".to_string(), "::1/128".to_string()],
                );
                continue;
            }
            let (networks, dropped) = mynetworks(params);
            if dropped.iter().any(|item| item.starts_with('!')) {
                toml.comment(&format!(
                    "permit_mynetworks: mynetworks excludes {}; doorman's `permit` cannot, so",
                    dropped.join(", ")
                ));
                toml.comment("write the networks as `permit` and `reject`/`dunno` lines of the cidr table instead.");
                continue;
            }
            for item in &dropped {
                toml.comment(&format!(
                    "not translated: mynetworks entry {item} (an address or network is needed)"
                ));
            }
            toml.comment("permit_mynetworks, with main.cf's mynetworks:");
            toml.strings("permit", &networks);
        } else if let Some(path) = entry.strip_prefix("cidr:") {
            tables.push(path.to_string());
        } else {
            toml.comment(&format!(
                "not translated: {entry} (doorman reads Postfix cidr tables only)"
            ));
        }
    }
    if let Some((first, rest)) = tables.split_first() {
        toml.string("file", first);
        for other in rest {
            toml.comment(&format!(
                "also in postscreen_access_list: {other}: merge it into {first}"
            ));
        }
        if !permit_first {
            toml.comment(
                "(postscreen asked the table before mynetworks; doorman asks `permit` first)",
            );
        }
    }
    if let Some(action) = action {
        toml.string("action", &action);
    }
}

/// `[greet]`: the pregreet test.
fn greet(toml: &mut Toml, params: &Parameters) {
    let keys = [
        ("postscreen_greet_action", "action", false),
        ("postscreen_greet_banner", "banner", false),
        ("postscreen_greet_wait", "wait", true),
        ("postscreen_greet_ttl", "ttl", true),
    ];
    section(toml, params, "greet", &keys);
}

/// `[dnsbl]` (the lists and their DNS settings) and `[score]` (how the
/// summed weights are judged).
fn dnsbl_and_score(toml: &mut Toml, params: &Parameters) {
    let sites = params.list("postscreen_dnsbl_sites");
    let dns = [
        ("postscreen_dnsbl_min_ttl", "min_ttl", true),
        ("postscreen_dnsbl_max_ttl", "max_ttl", true),
        ("postscreen_dnsbl_ttl", "max_ttl", true),
        ("postscreen_dnsbl_timeout", "timeout", true),
    ];
    if !sites.is_empty() || dns.iter().any(|(name, ..)| params.value(name).is_some()) {
        toml.table("dnsbl");
        if !sites.is_empty() {
            toml.strings("sites", &sites);
        }
        let mut written = Vec::new();
        for (name, key, _) in dns {
            let Some(raw) = params.value(name) else {
                continue;
            };
            match params.duration(name) {
                Some(value) if !written.contains(&key) => {
                    toml.raw(key, &value);
                    written.push(key);
                }
                Some(_) => {}
                None => toml.comment(&format!("not translated: {name} = {raw}")),
            }
        }
    }
    let score = [
        ("postscreen_dnsbl_threshold", "threshold"),
        (
            "postscreen_dnsbl_allowlist_threshold",
            "allowlist_threshold",
        ),
        (
            "postscreen_dnsbl_whitelist_threshold",
            "allowlist_threshold",
        ),
    ];
    let action = params.value("postscreen_dnsbl_action");
    if score.iter().all(|(name, _)| params.value(name).is_none()) && action.is_none() {
        return;
    }
    toml.table("score");
    let mut written = Vec::new();
    for (name, key) in score {
        match params.value(name).map(|value| value.parse::<i32>()) {
            Some(Ok(number)) if !written.contains(&key) => {
                toml.raw(key, &number.to_string());
                written.push(key);
            }
            Some(Err(_)) => toml.comment(&format!("not translated: {name} is not a number")),
            _ => {}
        }
    }
    if let Some(action) = action {
        toml.string("action", &action);
    }
}

/// `[deep_tests]`: each `postscreen_X_enable` with its action and TTL.
fn deep_tests(toml: &mut Toml, params: &Parameters) {
    let tests = ["pipelining", "non_smtp_command", "bare_newline"];
    let forbidden = params.list("postscreen_forbidden_commands");
    let any = tests.iter().any(|test| {
        ["enable", "action", "ttl"]
            .iter()
            .any(|part| params.value(&format!("postscreen_{test}_{part}")).is_some())
    });
    if !any && forbidden.is_empty() {
        return;
    }
    toml.table("deep_tests");
    for test in tests {
        let enable = params.flag(&format!("postscreen_{test}_enable"));
        let mut fields = vec![format!("enable = {}", enable.unwrap_or(false))];
        if let Some(action) = params.value(&format!("postscreen_{test}_action")) {
            fields.push(format!("action = {}", write::quote(&action)));
        }
        if let Some(ttl) = params.duration(&format!("postscreen_{test}_ttl")) {
            fields.push(format!("ttl = {ttl}"));
        }
        toml.raw(test, &format!("{{ {} }}", fields.join(", ")));
    }
    if !forbidden.is_empty() {
        toml.strings("forbidden_commands", &forbidden);
    }
}

/// `[limits]`, `[engine]` and `[cache]`: postscreen's counts, times and
/// cache times.
fn limits_engine_cache(toml: &mut Toml, params: &Parameters) {
    let limits = [
        (
            "postscreen_client_connection_count_limit",
            "client_connections",
            false,
        ),
        ("postscreen_pre_queue_limit", "screening", false),
    ];
    section(toml, params, "limits", &limits);
    let engine = [
        ("postscreen_command_count_limit", "command_limit", false),
        ("postscreen_command_time_limit", "command_time", true),
    ];
    section(toml, params, "engine", &engine);
    let cache = [
        ("postscreen_cache_retention_time", "retention_time", true),
        (
            "postscreen_cache_cleanup_interval",
            "cleanup_interval",
            true,
        ),
    ];
    section(toml, params, "cache", &cache);
}

/// A section of plain keys: each `(parameter, key, is a duration)` found
/// is written; numbers as numbers, the rest as strings.
fn section(toml: &mut Toml, params: &Parameters, table: &str, keys: &[(&str, &str, bool)]) {
    if keys.iter().all(|(name, ..)| params.value(name).is_none()) {
        return;
    }
    toml.table(table);
    for (name, key, duration) in keys {
        let Some(value) = params.value(name) else {
            continue;
        };
        if *duration {
            match params.duration(name) {
                Some(value) => toml.raw(key, &value),
                None => toml.comment(&format!("not translated: {name} = {value}")),
            }
        } else if value.parse::<u64>().is_ok() {
            toml.raw(key, &value);
        } else {
            toml.string(key, &value);
        }
    }
}

/// `[tls]` when postscreen (or smtpd) offered STARTTLS with a certificate
/// main.cf names.
fn tls(toml: &mut Toml, params: &Parameters) {
    let level = params
        .value("postscreen_tls_security_level")
        .or_else(|| params.value("smtpd_tls_security_level"));
    if !matches!(level.as_deref(), Some("may" | "encrypt")) {
        return;
    }
    // smtpd_tls_chain_files lists each key before its certificate chain.
    let chains = params.list("smtpd_tls_chain_files");
    let mut pairs: Vec<(String, String)> = chains
        .chunks(2)
        .filter(|pair| pair.len() == 2)
        .map(|pair| (pair[1].clone(), pair[0].clone()))
        .collect();
    for (cert, key) in [
        ("smtpd_tls_cert_file", "smtpd_tls_key_file"),
        ("smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
    ] {
        if !chains.is_empty() {
            break;
        }
        if let Some(cert) = params.value(cert).filter(|cert| !cert.is_empty()) {
            let key = params.value(key).filter(|key| !key.is_empty());
            pairs.push((cert.clone(), key.unwrap_or(cert)));
        }
    }
    if pairs.is_empty() {
        toml.comment(
            "STARTTLS was on, but no certificate pair was found in main.cf: add [tls] by hand.",
        );
        return;
    }
    toml.table("tls");
    toml.comment("STARTTLS in doorman's engine, with smtpd's certificate (doorman must be able to read the key).");
    for (chain, key) in pairs {
        toml.array_table("tls.certificate");
        toml.string("chain", &chain);
        toml.string("key", &key);
    }
}

/// The postscreen parameters set in main.cf that doorman has no key for.
fn not_translated(toml: &mut Toml, params: &Parameters) {
    let found: Vec<String> = NOT_TRANSLATED
        .iter()
        .filter_map(|(name, why)| {
            params
                .raw(name)
                .map(|value| format!("not translated: {name} = {value} ({why})"))
        })
        .collect();
    if found.is_empty() {
        return;
    }
    toml.blank();
    for line in found {
        toml.comment(&line);
    }
}

#[cfg(test)]
mod tests;

/// main.cf's `mynetworks` as networks doorman can permit, and the entries
/// it cannot (exclusions, tables, host names), as written.
fn mynetworks(params: &Parameters) -> (Vec<String>, Vec<String>) {
    let mut networks = Vec::new();
    let mut dropped = Vec::new();
    for item in params.list("mynetworks") {
        let bare = item.replace(['[', ']'], "");
        if let Ok(network) = bare.parse::<ipnet::IpNet>() {
            networks.push(network.to_string());
        } else if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            networks.push(ipnet::IpNet::from(ip).to_string());
        } else {
            dropped.push(item);
        }
    }
    (networks, dropped)
}
