//! doorman's log lines in postscreen's syslog layout, read by Debian's real
//! fail2ban with its stock `postfix` filter: the PREGREET, HANGUP and
//! COMMAND ... LIMIT lines match mode `ddos` and the NOQUEUE reject matches
//! mode `normal`, each for the real client's address. Also: the JSON layout
//! and the syslog socket.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// The addresses fail2ban's `postfix[mode=<mode>]` finds in `log`.
fn banned(log: &std::path::Path, mode: &str) -> Vec<String> {
    let out = stdout_of(
        Command::new("fail2ban-regex")
            .args(["-o", "ip"])
            .arg(log)
            .arg(format!("postfix[mode={mode}]")),
    );
    let mut ips: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    ips.sort();
    ips
}

#[test]
fn stock_fail2ban_postfix_filter_bans_the_real_clients() {
    if !require_program("fail2ban-regex") {
        return;
    }
    let Some(dns) = Rbldnsd::start() else { return };
    let backend = FakeBackend::start(true);
    let sections = format!(
        "[greet]\nwait = \"1s\"\n[dnsbl]\nsites = [\"bl.test=127.0.0.[2..11]*2\"]\nthreshold = 2\naction = \"enforce\"\nnameservers = [\"{}\"]\n[engine]\ncommand_time = \"1s\"\n[log]\nformat = \"postscreen\"\n",
        dns.address
    );
    let doorman = Doorman::start(
        &config_with(backend.address, "v2", "", "5s", &sections),
        "127.0.0.1\n",
    );

    // A pregreeting zombie, logged PREGREET, then handed off (ignore).
    let mut zombie = connect_as(&doorman, "203.0.113.201");
    zombie.write_all(b"EHLO ylmf-pc\r\n").unwrap();
    // A client that hangs up during the greet wait.
    let hangup = connect_as(&doorman, "203.0.113.204");
    // A listed client refused at RCPT by the built-in engine.
    let mut listed = connect_as(&doorman, "203.0.113.7");
    // A listed client that never finishes its command.
    let mut slow = connect_as(&doorman, "203.0.113.8");
    assert_eq!(read_line(&mut slow), "220-mx.doorman.test ESMTP\r\n");
    drop(hangup);
    assert_eq!(read_line(&mut listed), "220-mx.doorman.test ESMTP\r\n");
    assert_eq!(read_line(&mut listed), "220 mx.doorman.test ESMTP\r\n");
    // One command at a time: a pipelining client would get the pipelining
    // test's reply instead (postscreen's latest failure).
    for command in [
        "HELO badguy.example.com\r\n",
        "MAIL FROM:<spammer@example.com>\r\n",
        "RCPT TO:<goodguy@example.com>\r\n",
    ] {
        listed.write_all(command.as_bytes()).unwrap();
        read_line(&mut listed);
    }
    listed.write_all(b"QUIT\r\n").unwrap();
    read_to_close(&mut listed);
    assert_eq!(read_line(&mut slow), "220 mx.doorman.test ESMTP\r\n");
    slow.write_all(b"HEL").unwrap();
    read_to_close(&mut slow);
    doorman.log.wait_for(
        "COMMAND TIME LIMIT from [203.0.113.8]:40000 after CONNECT",
        Duration::from_secs(5),
    );
    doorman
        .log
        .wait_for("PREGREET 14 after", Duration::from_secs(5));
    doorman.log.wait_for("HANGUP after", Duration::from_secs(5));
    doorman.log.wait_for(
        "NOQUEUE: reject: RCPT from [203.0.113.7]:40000",
        Duration::from_secs(5),
    );
    drop(zombie);

    let lines = doorman.log.lines();
    for line in &lines {
        assert!(line.contains(" postfix/postscreen["), "layout: {line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mail_log = dir.path().join("mail.log");
    std::fs::write(&mail_log, lines.join("\n") + "\n").unwrap();
    assert_eq!(
        banned(&mail_log, "ddos"),
        vec!["203.0.113.201", "203.0.113.204", "203.0.113.8"]
    );
    assert_eq!(banned(&mail_log, "normal"), vec!["203.0.113.7"]);
}

#[test]
fn json_layout_and_syslog_socket() {
    let backend = FakeBackend::start(true);
    let json = Doorman::start(
        &config_with(
            backend.address,
            "v2",
            "",
            "5s",
            "[greet]\nbanner = \"\"\n[log]\nformat = \"json\"\n",
        ),
        "127.0.0.1\n",
    );
    let mut client = connect_as(&json, "203.0.113.10");
    assert_eq!(read_line(&mut client), "220 backend.test ESMTP fake\r\n");
    let line = json.log.wait_for("CONNECT from", Duration::from_secs(5));
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(
        line.contains("\"message\":\"CONNECT from [203.0.113.10]:40000 to [198.51.100.25]:25\""),
        "{line}"
    );

    // With syslog, nothing reaches stderr; wait for the listening datagram.
    let (socket, mut child, _dirs) = logging_to_a_socket(
        backend.address,
        "[greet]\nbanner = \"\"\n",
        "syslog_tag = \"doorman-test\"\n",
    );
    let mut datagram = [0u8; 2048];
    let n = socket.recv(&mut datagram).unwrap();
    let text = String::from_utf8_lossy(&datagram[..n]).into_owned();
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.starts_with("<22>"), "mail.info priority: {text}");
    assert!(text.contains(" doorman-test["), "{text}");
    assert!(text.contains("]: listening on [127.0.0.1]:"), "{text}");
}

/// `doorman run` with `sections` (and `log_keys` in its `[log]`), in front
/// of `backend`, its lines sent as syslog datagrams (`[log] syslog =
/// true`) to a socket of the test's:
/// the socket (reads time out after 10 s), the child, and the folder
/// holding the socket and the config.
fn logging_to_a_socket(
    backend: std::net::SocketAddr,
    sections: &str,
    log_keys: &str,
) -> (UnixDatagram, std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("log.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = config_with(
        backend,
        "v2",
        "",
        "5s",
        &format!(
            "{sections}[log]\n{log_keys}syslog = true\nsyslog_socket = \"{}\"\n",
            socket_path.display()
        ),
    );
    std::fs::write(dir.path().join("doorman.toml"), &config).unwrap();
    std::fs::write(dir.path().join("haproxy_hosts"), "127.0.0.1\n").unwrap();
    let child = Command::new(doorman_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("doorman.toml"))
        .spawn()
        .unwrap();
    (socket, child, dir)
}

/// One syslog datagram as journald stores it and fail2ban's `systemd`
/// backend renders it: `DATE HOST IDENTIFIER[PID]: MESSAGE`. journald takes
/// the identifier, the PID and the message from the datagram (`<PRI>DATE
/// IDENTIFIER[PID]: MESSAGE`) and adds the host.
fn as_journal_line(datagram: &str, host: &str) -> String {
    let line = datagram.split_once('>').map_or(datagram, |(_, rest)| rest);
    let (date, rest) = line.split_at(15.min(line.len()));
    format!("{date} {host}{rest}")
}

#[test]
fn the_journal_jail_bans_from_doormans_syslog_lines() {
    if !require_program("fail2ban-regex") {
        return;
    }
    let backend = FakeBackend::start(true);
    // The journal set-up: [log] syslog = true, to the socket journald
    // serves at /dev/log (here a test socket).
    let (socket, mut child, dirs) =
        logging_to_a_socket(backend.address, "[greet]\nwait = \"1s\"\n", "");
    let mut lines = Vec::new();
    let mut datagram = [0u8; 4096];
    let mut address = None;
    while address.is_none() {
        let n = socket.recv(&mut datagram).unwrap();
        let text = String::from_utf8_lossy(&datagram[..n]).into_owned();
        if text.contains("]: listening on ") {
            address = Some(parse_endpoint(&text));
        }
        lines.push(text);
    }
    let target = address.unwrap();
    let mut zombie = connect_from(std::net::Ipv4Addr::LOCALHOST, target);
    zombie
        .write_all(b"PROXY TCP4 203.0.113.221 198.51.100.25 40000 25\r\nEHLO ylmf-pc\r\n")
        .unwrap();
    loop {
        let n = socket.recv(&mut datagram).unwrap();
        let text = String::from_utf8_lossy(&datagram[..n]).into_owned();
        let done = text.contains("PREGREET");
        lines.push(text);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let journal = dirs.path().join("journal.txt");
    let rendered: Vec<String> = lines.iter().map(|l| as_journal_line(l, "mx")).collect();
    for line in &rendered {
        assert!(line.contains(" mx postfix/postscreen["), "{line}");
    }
    std::fs::write(&journal, rendered.join("\n") + "\n").unwrap();
    assert_eq!(banned(&journal, "ddos"), vec!["203.0.113.221"]);
}
