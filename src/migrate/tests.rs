//! The migration's unit tests: Postfix's parameter syntax, and a typical
//! postscreen set-up as a config doorman loads.

use super::postfix::postscreen_address;
use super::*;

const MAIN_CF: &str = "\
# A typical postscreen set-up.
myhostname = mx.example.com
mynetworks = 127.0.0.0/8 [::1]/128, 192.0.2.0/24
postscreen_access_list = permit_mynetworks,
    cidr:/etc/postfix/postscreen_access.cidr
postscreen_blacklist_action = drop
postscreen_greet_action = enforce
postscreen_greet_wait = ${stress?{2}:{6}}s
postscreen_dnsbl_sites = zen.spamhaus.org=127.0.0.[2..11]*3
    bl.spamcop.net*2, list.dnswl.org=127.0.[0..255].[1..3]*-2
postscreen_dnsbl_threshold = 3
postscreen_dnsbl_whitelist_threshold = -1
postscreen_dnsbl_action = enforce
postscreen_pipelining_enable = yes
postscreen_non_smtp_command_enable = yes
postscreen_non_smtp_command_action = drop
postscreen_bare_newline_enable = no
postscreen_cache_retention_time = 7d
postscreen_command_time_limit = 300
postscreen_cache_map = btree:$data_directory/postscreen_cache
";

const MASTER_CF: &str = "\
smtp      inet  n       -       y       -       1       postscreen
smtpd     pass  -       -       y       -       -       smtpd
#628      inet  n       -       y       -       -       qmqpd
";

#[test]
fn parameters_are_read_and_expanded_as_postfix_reads_them() {
    let params = Parameters::parse(MAIN_CF);
    assert_eq!(params.value("postscreen_greet_wait").as_deref(), Some("6s"));
    assert_eq!(
        params.duration("postscreen_greet_wait").as_deref(),
        Some("\"6s\"")
    );
    assert_eq!(
        params.duration("postscreen_command_time_limit").as_deref(),
        Some("\"300s\"")
    );
    assert_eq!(
        params.list("postscreen_access_list"),
        [
            "permit_mynetworks",
            "cidr:/etc/postfix/postscreen_access.cidr"
        ]
    );
    assert_eq!(params.list("postscreen_dnsbl_sites").len(), 3);
    let banner = Parameters::parse("myhostname = mx.test\nx = $smtpd_banner\ny = ${myhostname:none}z\nw = ${nothing:none}\nv = $(myhostname)\nloop = $loop\n");
    assert_eq!(banner.value("x").as_deref(), Some("mx.test ESMTP Postfix"));
    assert_eq!(banner.value("y").as_deref(), Some("z"));
    assert_eq!(banner.value("w").as_deref(), Some("none"));
    assert_eq!(banner.value("v").as_deref(), Some("mx.test"));
    assert!(banner.value("loop").is_some(), "a loop ends");
}

#[test]
fn master_cf_gives_postscreens_address() {
    assert_eq!(postscreen_address(MASTER_CF).as_deref(), Some("[::]:25"));
    assert_eq!(
        postscreen_address("192.0.2.25:smtp inet n - y - 1 postscreen\n").as_deref(),
        Some("192.0.2.25:25")
    );
    assert_eq!(
        postscreen_address("[2001:db8::25]:2525 inet n - y - 1 postscreen\n").as_deref(),
        Some("[2001:db8::25]:2525")
    );
    assert_eq!(postscreen_address("smtp inet n - y - - smtpd\n"), None);
}

#[test]
fn a_typical_postscreen_set_up_becomes_a_config_doorman_loads() {
    let toml = from_postfix(MAIN_CF, Some(MASTER_CF));
    for line in [
        "hostname = \"mx.example.com\"\n",
        "[[listener]]\n# Where master.cf's postscreen service listened.\naddress = \"[::]:25\"\n",
        "permit = [\"127.0.0.0/8\", \"::1/128\", \"192.0.2.0/24\"]\n",
        "file = \"/etc/postfix/postscreen_access.cidr\"\naction = \"drop\"\n",
        "[greet]\naction = \"enforce\"\nwait = \"6s\"\n",
        "sites = [\"zen.spamhaus.org=127.0.0.[2..11]*3\", \"bl.spamcop.net*2\", \"list.dnswl.org=127.0.[0..255].[1..3]*-2\"]\n",
        "[score]\nthreshold = 3\nallowlist_threshold = -1\naction = \"enforce\"\n",
        "pipelining = { enable = true }\n",
        "non_smtp_command = { enable = true, action = \"drop\" }\n",
        "bare_newline = { enable = false }\n",
        "[engine]\ncommand_time = \"300s\"\n",
        "retention_time = \"7d\"\n",
        "# not translated: postscreen_cache_map = btree:$data_directory/postscreen_cache",
    ] {
        assert!(toml.contains(line), "missing {line:?} in:\n{toml}");
    }
    let dir = tempfile::tempdir().expect("a folder");
    let path = dir.path().join("doorman.toml");
    // The cidr table lives at Postfix's path; point it at a copy here.
    let local = toml.replace("/etc/postfix/postscreen_access.cidr", "access");
    std::fs::write(dir.path().join("access"), "192.0.2.66 reject\n").expect("access");
    std::fs::write(&path, &local).expect("config");
    let config = crate::config::Config::load(&path).expect("doorman loads it");
    assert_eq!(config.listeners[0].address.port(), 25);
    assert_eq!(config.score.threshold, 3);
}

#[test]
fn hostile_and_odd_main_cf_values_are_bounded_and_said() {
    // References that fan out end in bounded time.
    let fan = format!("a = {}\nmyhostname = $a\n", "$a".repeat(16));
    let started = std::time::Instant::now();
    let toml = from_postfix(&fan, None);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(toml.len() < 200_000);
    // An exclusion in mynetworks is never widened into a permit.
    let excluded = from_postfix(
        "mynetworks = !192.168.1.5, 192.168.0.0/16, hash:/etc/postfix/net\n\
         postscreen_access_list = permit_mynetworks\n",
        None,
    );
    assert!(!excluded.contains("permit = ["), "{excluded}");
    assert!(
        excluded.contains("mynetworks excludes !192.168.1.5"),
        "{excluded}"
    );
    let table = from_postfix("mynetworks = 10.0.0.0/8, hash:/etc/postfix/net\n", None);
    assert!(table.contains("permit = [\"10.0.0.0/8\"]"), "{table}");
    assert!(
        table.contains("not translated: mynetworks entry hash:/etc/postfix/net"),
        "{table}"
    );
    // Postfix's defaults: the access list is permit_mynetworks; booleans
    // in any case; postscreen_dnsbl_ttl unset; `${x?{value}}`.
    let defaults = from_postfix(
        "mynetworks = 127.0.0.0/8\npostscreen_pipelining_enable = YES\n\
         postscreen_dnsbl_sites = a.test\n\
         postscreen_dnsbl_max_ttl = ${postscreen_dnsbl_ttl?{$postscreen_dnsbl_ttl}:{1}}h\n\
         postscreen_greet_ttl = ${myhostname?{2d}}\nmyhostname = mx.test\n",
        None,
    );
    assert!(
        defaults.contains("permit = [\"127.0.0.0/8\"]"),
        "{defaults}"
    );
    assert!(
        defaults.contains("pipelining = { enable = true }"),
        "{defaults}"
    );
    assert!(defaults.contains("max_ttl = \"1h\""), "{defaults}");
    assert!(defaults.contains("ttl = \"2d\""), "{defaults}");
    // A CR in a value cannot break the file.
    let cr = from_postfix("postscreen_cache_map = btree:x\ry\n", None);
    assert!(
        cr.contains("# not translated: postscreen_cache_map = btree:x?y"),
        "{cr:?}"
    );
    // Every key/certificate pair of smtpd_tls_chain_files.
    let chains = from_postfix(
        "postscreen_tls_security_level = may\n\
         smtpd_tls_chain_files = rsa.key, rsa.pem, ec.key, ec.pem\n",
        None,
    );
    assert!(
        chains.contains("chain = \"rsa.pem\"\nkey = \"rsa.key\""),
        "{chains}"
    );
    assert!(
        chains.contains("chain = \"ec.pem\"\nkey = \"ec.key\""),
        "{chains}"
    );
}
