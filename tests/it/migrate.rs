//! `doorman migrate postfix`: a real Postfix's `postconf -n` for a typical
//! postscreen set-up, and its master.cf, become a doorman.toml that
//! `doorman check` accepts and that `doorman explain` judges as postscreen
//! did: mynetworks permitted, the cidr table's rejects denied with `drop`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn a_postfix_set_up_becomes_a_config_doorman_checks_and_explains() {
    if !require_program("postconf") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let postfix = dir.path().join("postfix");
    std::fs::create_dir_all(&postfix).unwrap();
    let table = postfix.join("postscreen_access.cidr");
    std::fs::write(&table, "192.0.2.66 reject\n192.0.2.0/24 dunno\n").unwrap();
    std::fs::write(
        postfix.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nmyhostname = mx.example.com\n\
mynetworks = 127.0.0.0/8 [::1]/128 198.51.100.0/24\n\
postscreen_access_list = permit_mynetworks,\n    cidr:{}\n\
postscreen_blacklist_action = drop\npostscreen_greet_action = enforce\n\
postscreen_greet_wait = ${{stress?{{2}}:{{6}}}}s\n\
postscreen_dnsbl_sites = zen.spamhaus.org=127.0.0.[2..11]*3 bl.spamcop.net*2\n\
postscreen_dnsbl_threshold = 3\npostscreen_dnsbl_action = enforce\n\
postscreen_pipelining_enable = yes\npostscreen_cache_map = btree:$data_directory/psc\n",
            table.display()
        ),
    )
    .unwrap();
    let master = postfix.join("master.cf");
    std::fs::write(
        &master,
        "smtp      inet  n       -       y       -       1       postscreen\n\
smtpd     pass  -       -       y       -       -       smtpd\n",
    )
    .unwrap();
    let postconf = stdout_of(Command::new("postconf").arg("-c").arg(&postfix).arg("-n"));
    assert!(
        postconf.contains("postscreen_blacklist_action = drop"),
        "{postconf}"
    );
    // `postconf -n` on stdin, with master.cf.
    let mut migrate = Command::new(doorman_bin())
        .args(["migrate", "postfix", "-"])
        .arg(&master)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    migrate
        .stdin
        .take()
        .unwrap()
        .write_all(postconf.as_bytes())
        .unwrap();
    let out = migrate.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    for line in [
        "hostname = \"mx.example.com\"\n",
        "address = \"[::]:25\"\n",
        "permit = [\"127.0.0.0/8\", \"::1/128\", \"198.51.100.0/24\"]\n",
        "action = \"drop\"\n",
        "[greet]\naction = \"enforce\"\nwait = \"6s\"\n",
        "[score]\nthreshold = 3\naction = \"enforce\"\n",
        "pipelining = { enable = true }\n",
    ] {
        assert!(toml.contains(line), "missing {line:?} in:\n{toml}");
    }
    // The same from main.cf itself.
    let from_file = stdout_of(
        Command::new(doorman_bin())
            .args(["migrate", "postfix"])
            .arg(postfix.join("main.cf"))
            .arg(&master),
    );
    assert!(from_file.contains("permit = [\"127.0.0.0/8\", \"::1/128\", \"198.51.100.0/24\"]\n"));
    // Listening on a free loopback port instead of 25, it checks and
    // explains.
    let config = dir.path().join("doorman.toml");
    std::fs::write(&config, toml.replace("[::]:25", "127.0.0.1:0")).unwrap();
    let checked = stdout_of(
        Command::new(doorman_bin())
            .args(["check", "--config"])
            .arg(&config),
    );
    assert!(checked.contains(": ok ("), "{checked}");
    let explain = |ip: &str| {
        stdout_of(
            Command::new(doorman_bin())
                .args(["explain", "--config"])
                .arg(&config)
                .arg(ip),
        )
    };
    let mynetworks = explain("198.51.100.7");
    assert!(
        mynetworks.contains("access list: `permit` key: permit\nverdict: permit (ALLOWLISTED)"),
        "{mynetworks}"
    );
    let denied = explain("192.0.2.66");
    assert!(
        denied.contains("access list: line 1: reject\n")
            && denied.contains("verdict: denylisted (DENYLISTED)")
            && denied.contains("action drop"),
        "{denied}"
    );
}
