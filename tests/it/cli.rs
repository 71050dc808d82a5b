//! The command line: `doorman check` on good and bad configs, `--version`,
//! and the shipped config.

use std::path::Path;
use std::process::Command;

use crate::support::{doorman_bin, stdout_of};

fn check(config: &str, hosts: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("doorman.toml"), config).unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), hosts).unwrap();
    let out = Command::new(doorman_bin())
        .args(["check", "--config"])
        .arg(dir.path().join("doorman.toml"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"hostname = "mx.test"
[proxy]
hosts_file = "haproxy_hosts"
timeout = "5s"
[[listener]]
address = "127.0.0.1:2525"
[[backend]]
address = "127.0.0.1:10026"
send_proxy = "v2"
"#;

#[test]
fn check_accepts_a_good_config() {
    let (code, out, _) = check(GOOD, "127.0.0.1\n10.0.0.0/8\n[2001:db8::1]\n");
    assert_eq!(code, 0);
    assert!(
        out.contains("ok (1 listeners, 1 backends, 3 proxy hosts)"),
        "{out}"
    );
}

#[test]
fn check_names_file_and_line_of_a_bad_value() {
    let (code, _, err) = check(&GOOD.replace("\"5s\"", "\"5 parsecs\""), "127.0.0.1\n");
    assert_eq!(code, 1);
    assert!(err.contains("doorman.toml:4: "), "{err}");

    let (code, _, err) = check(&GOOD.replace("\"v2\"", "\"v9\""), "127.0.0.1\n");
    assert_eq!(code, 1);
    assert!(err.contains("doorman.toml:9: "), "{err}");
    assert!(err.contains("v9"), "{err}");
}

#[test]
fn check_names_file_and_line_of_a_bad_proxy_host() {
    let (code, _, err) = check(GOOD, "# proxies\n127.0.0.1\n10.0.0.300\n");
    assert_eq!(code, 1);
    assert!(err.contains("haproxy_hosts:3: "), "{err}");
    assert!(err.contains("10.0.0.300"), "{err}");
    let (code, _, err) = check(GOOD, "127.0.0.1:25\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("haproxy_hosts:1: ") && err.contains("port"),
        "{err}"
    );
}

#[test]
fn check_reports_a_missing_hosts_file() {
    let (code, _, err) = check(&GOOD.replace("\"haproxy_hosts\"", "\"nope\""), "");
    assert_eq!(code, 1);
    assert!(err.contains("doorman.toml:3: hosts_file = \""), "{err}");
    assert!(
        err.contains("nope\": cannot read: No such file or directory"),
        "{err}"
    );
}

#[test]
fn check_names_the_key_and_the_value_it_refused() {
    // A duplicate key.
    let (code, _, err) = check(
        &GOOD.replace("timeout = \"5s\"", "timeout = \"5s\"\ntimeout = \"6s\""),
        "127.0.0.1\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("doorman.toml:5: timeout = \"6s\": duplicate key"),
        "{err}"
    );
    // A bare word where a number belongs.
    let config = format!("{GOOD}[pool]\nrise = two\n");
    let (code, _, err) = check(&config, "127.0.0.1\n");
    assert_eq!(code, 1);
    assert!(err.contains("doorman.toml:11: rise = two: "), "{err}");
    // A host name where an address belongs.
    let (code, _, err) = check(
        &GOOD.replace("\"127.0.0.1:2525\"", "\"localhost:2525\""),
        "127.0.0.1\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("doorman.toml:6: address = \"localhost:2525\": invalid socket address syntax"),
        "{err}"
    );
    // The access table's key, in its own table.
    let config = format!("{GOOD}[access]\nfile = \"no-such-table\"\n");
    let (code, _, err) = check(&config, "127.0.0.1\n");
    assert_eq!(code, 1);
    assert!(err.contains("doorman.toml:11: file = \""), "{err}");
}

#[test]
fn shipped_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/doorman.toml");
    stdout_of(Command::new(doorman_bin()).args(["check", "--config", path]));
}

/// The commands that install no logging of their own (`migrate`,
/// `explain`), and `run` whose logging could not start, still say why
/// they failed.
#[test]
fn a_command_without_logging_says_why_it_failed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("main.cf");
    let missing = missing.to_str().unwrap();
    let socket = dir.path().join("no-syslog");
    let config = dir.path().join("doorman.toml");
    std::fs::write(
        &config,
        format!(
            "{GOOD}[log]\nsyslog = true\nsyslog_socket = \"{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    let config = config.to_str().unwrap();
    for (args, names) in [
        (vec!["migrate", "postfix", missing], missing.to_string()),
        (
            vec!["explain", "--config", missing, "192.0.2.1"],
            missing.to_string(),
        ),
        (
            vec!["run", "--config", config],
            socket.display().to_string(),
        ),
    ] {
        let out = Command::new(doorman_bin()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("fatal: "), "{args:?}: {stderr:?}");
        assert!(stderr.contains(&names), "{args:?}: {stderr:?}");
    }
}

#[test]
fn version_and_help() {
    let out = Command::new(doorman_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("doorman "));
    let out = Command::new(doorman_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "check", "sink", "config"] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn check_refuses_a_file_that_is_not_a_regular_file() {
    let config = format!("{GOOD}[access]\nfile = \"/dev/zero\"\n");
    let started = std::time::Instant::now();
    let (code, _, err) = check(&config, "127.0.0.1\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("doorman.toml:11: file = \"/dev/zero\": cannot read: not a regular file"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn durations_have_upper_bounds() {
    let config = format!("{GOOD}[greet]\nwait = \"1d\"\n");
    let (code, _, err) = check(&config, "127.0.0.1\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("doorman.toml:11: wait = \"1day\": at most \"5m\""),
        "{err}"
    );
    let config = format!("{GOOD}[deep_tests]\npipelining = {{ enable = true, ttl = \"2y\" }}\n");
    let (code, _, err) = check(&config, "127.0.0.1\n");
    assert_eq!(code, 1);
    assert!(err.contains("doorman.toml:11: pipelining ttl = "), "{err}");
    // The bounds admit sane settings: five minutes of greet wait.
    let config = format!("{GOOD}[greet]\nwait = \"5m\"\n");
    assert_eq!(check(&config, "127.0.0.1\n").0, 0);
}

#[test]
fn check_says_the_valid_form_of_what_it_refused() {
    let hosts = "127.0.0.1\n";
    for address in ["::1:2525", "127.0.0.1"] {
        let (code, _, err) = check(&GOOD.replace("127.0.0.1:2525", address), hosts);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!(
                "doorman.toml:6: address = \"{address}\": invalid socket address syntax: expected IP:PORT, e.g. 127.0.0.1:2525 or [::1]:2525"
            )),
            "{err}"
        );
    }
    for wait in ["\"6\"", "6"] {
        let (code, _, err) = check(&format!("{GOOD}[greet]\nwait = {wait}\n"), hosts);
        assert_eq!(code, 1);
        assert!(
            err.contains("doorman.toml:11: ")
                && err.contains("expected a duration: a duration is a number with its unit, e.g. \"6s\", \"500ms\", \"5m\", \"1h\", \"30d\""),
            "{err}"
        );
    }
    // A misspelt section: the gates' sections are listed too.
    let (code, _, err) = check(&format!("{GOOD}[acess]\nfile = \"access\"\n"), hosts);
    assert_eq!(code, 1);
    assert!(
        err.contains("doorman.toml:10: [acess]: unknown field `acess`"),
        "{err}"
    );
    for section in ["`tls`", "`access`", "`rdns`", "`greylist`", "`policy`"] {
        assert!(err.contains(section), "{section} in {err}");
    }
    assert!(err.contains("(did you mean `access`?)"), "{err}");
    // A misspelt gate: a sentence.
    let (code, _, err) = check(&format!("gates = [\"acess\"]\n{GOOD}"), hosts);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "doorman.toml:1: unknown gate \"acess\" (did you mean \"access\"?): the gates are access, dnsbl, rdns, greylist, policy, pregreet and deep"
        ),
        "{err}"
    );
    assert!(!err.contains('['), "{err}");
}

/// The packaged doorman.toml: the shipped one with the substitutions
/// `scripts/build-deb` makes (its `sed -e 's|^OLD$|NEW|'` lines).
fn packaged_config() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = std::fs::read_to_string(format!("{root}/scripts/build-deb")).unwrap();
    let substitutions: Vec<(String, String)> = script
        .lines()
        .filter_map(|line| line.split_once("-e 's|^")?.1.split_once("$|"))
        .filter_map(|(old, rest)| Some((old.to_string(), rest.split_once("|'")?.0.to_string())))
        .collect();
    assert!(!substitutions.is_empty(), "{script}");
    let shipped = std::fs::read_to_string(format!("{root}/config/doorman.toml")).unwrap();
    shipped
        .lines()
        .map(|line| {
            substitutions
                .iter()
                .find(|(old, _)| old == line)
                .map_or(line, |(_, new)| new.as_str())
        })
        .fold(String::new(), |text, line| text + line + "\n")
}

#[test]
fn the_packaged_config_and_the_example_haproxy_cfg_run_together() {
    let root = env!("CARGO_MANIFEST_DIR");
    let packaged = doorman::config::Config::parse(
        &packaged_config(),
        &Path::new(root).join("config/doorman.toml"),
    )
    .unwrap();
    let haproxy = std::fs::read_to_string(format!("{root}/config/haproxy.cfg")).unwrap();
    let active = haproxy
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'));
    let mut servers = 0;
    let mut binds = Vec::new();
    for line in active {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["bind", address, ..] => binds.push(address.to_string()),
            ["server", _, address, rest @ ..] => {
                servers += 1;
                let address: std::net::SocketAddr = address.parse().unwrap();
                assert!(
                    packaged.listeners.iter().any(|l| l.address == address),
                    "HAProxy sends to {address}, doorman listens on {:?}",
                    packaged.listeners
                );
                let source = rest
                    .windows(2)
                    .find(|pair| pair[0] == "source")
                    .map(|pair| pair[1].parse().unwrap())
                    .expect("a source address");
                assert!(
                    packaged.proxy_hosts.contains(source),
                    "haproxy_hosts lists {source}"
                );
                assert!(rest.contains(&"send-proxy-v2") && rest.contains(&"check-send-proxy"));
            }
            _ => {}
        }
    }
    assert_eq!(servers, 1);
    assert_eq!(binds, [":25"]);
    // HAProxy has port 25: neither doorman nor its backend takes it.
    for address in packaged
        .listeners
        .iter()
        .map(|l| l.address)
        .chain(packaged.backends.iter().map(|b| b.address))
    {
        assert_ne!(address.port(), 25, "{address}");
    }
}

/// `doorman check` with a token file of `text` and `mode`: the exit code
/// and stderr.
fn check_token(text: &str, mode: u32) -> (i32, String, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, text).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
    let config = format!("{GOOD}[admin]\ntoken_file = \"admin-token\"\n");
    std::fs::write(dir.path().join("doorman.toml"), config).unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    let out = Command::new(doorman_bin())
        .args(["check", "--config"])
        .arg(dir.path().join("doorman.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err, token)
}

#[test]
fn check_refuses_a_short_or_readable_admin_token() {
    let (code, err, token) = check_token("s3cret\n", 0o600);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:1: the admin token has 6 characters; it needs at least 16",
            token.display()
        )),
        "{err}"
    );
    for mode in [0o644, 0o640, 0o604] {
        let (code, err, token) = check_token("0123456789abcdef0123\n", mode);
        assert_eq!(code, 1, "{mode:o}: {err}");
        assert!(
            err.contains(&format!(
                "{}:1: the admin token file is open to group or others (mode {mode:03o})",
                token.display()
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("chmod 600 {}", token.display())),
            "{err}"
        );
    }
    let (code, err, _) = check_token("0123456789abcdef0123\n", 0o600);
    assert_eq!(code, 0, "{err}");
}
