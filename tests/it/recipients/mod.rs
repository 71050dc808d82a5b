//! A cluster balanced by recipient (Dovecot's director, for SMTP): each
//! transaction goes to its first recipient's backend, a recipient of
//! another backend gets `452 4.5.3` in that transaction, every later
//! transaction of the session is checked too, and a cached client is
//! routed as well.

mod odd_recipients;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use doorman::config::{Balance, RecipientKey};
use doorman::handoff::balance::{order, Affinity, Candidate};

use crate::support::*;

fn start(a: SocketAddr, b: SocketAddr) -> Doorman {
    start_with(a, b, "[cache]\nstore = \"memory\"\n", "15m")
}

/// doorman in front of `a` and `b`, balanced by recipient, with `cache`
/// as its `[cache]` section.
fn start_with(a: SocketAddr, b: SocketAddr, cache: &str, expire: &str) -> Doorman {
    let admin = free_port();
    let config = format!(
        "hostname = \"mx.doorman.test\"\n[proxy]\nhosts_file = \"haproxy_hosts\"\n\
[admin]\naddress = \"127.0.0.1:{admin}\"\n\
[[listener]]\naddress = \"127.0.0.1:0\"\n\
[[backend]]\naddress = \"{a}\"\nsend_proxy = \"v2\"\n\
[[backend]]\naddress = \"{b}\"\nsend_proxy = \"v2\"\n\
[cluster.\"\"]\nbalance = \"recipient\"\nuser_expire = \"{expire}\"\n\
[pool]\ncheck_interval = \"300ms\"\nfall = 1\nrise = 1\n[greet]\nwait = \"1s\"\n{cache}"
    );
    Doorman::start(&config, "127.0.0.2\n")
}

/// The backend (its index in `backends`) the hash gives `address`'s user.
fn owner(address: &str, backends: &[SocketAddr]) -> usize {
    let candidates: Vec<Candidate> = backends
        .iter()
        .map(|backend| Candidate {
            key: backend.to_string(),
            weight: 1,
            active: 0,
            usable: true,
        })
        .collect();
    let user = RecipientKey::Address.of(address);
    order(Balance::Recipient, &candidates, Affinity::User(&user), 0)[0]
}

/// A user of backend `n`.
fn user_of(n: usize, backends: [SocketAddr; 2]) -> String {
    (0..)
        .map(|i| format!("user{i}@mail.test"))
        .find(|user| owner(user, &backends) == n)
        .unwrap()
}

fn say(stream: &mut TcpStream, line: &str) -> String {
    stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    let mut reply = read_line(stream);
    while reply.as_bytes().get(3) == Some(&b'-') {
        reply = read_line(stream);
    }
    reply
}

#[test]
fn each_transaction_goes_to_its_first_recipients_backend() {
    let (a, b) = (FakeBackend::start(true), FakeBackend::start(true));
    let backends = [a.address, b.address];
    let doorman = start(a.address, b.address);
    let (user_a, user_b) = (user_of(0, backends), user_of(1, backends));

    // A new client: the teaser, the greet wait, then the engine completes
    // the greeting.
    let mut client = connect_from(Ipv4Addr::new(127, 0, 0, 1), doorman.address);
    assert_eq!(read_line(&mut client), "220-mx.doorman.test ESMTP\r\n");
    assert_eq!(read_line(&mut client), "220 mx.doorman.test ESMTP\r\n");
    assert!(say(&mut client, "EHLO client.test").starts_with("250 "));
    assert_eq!(
        say(&mut client, "MAIL FROM:<s@client.test>"),
        "250 2.1.0 Ok\r\n"
    );
    // The first recipient picks the backend (its reply is the backend's).
    assert_eq!(
        say(&mut client, &format!("RCPT TO:<{user_a}>")),
        "250 2.0.0 ok\r\n"
    );
    // One of the other backend waits for a transaction of its own.
    assert_eq!(
        say(&mut client, &format!("RCPT TO:<{user_b}>")),
        "452 4.5.3 Too many recipients\r\n"
    );
    assert_eq!(say(&mut client, "DATA"), "354 go ahead\r\n");
    assert_eq!(
        say(&mut client, "Subject: one\r\n\r\n.. a dotted line\r\n."),
        "250 2.0.0 queued\r\n"
    );
    // The next transaction of the session is checked as well: the user's
    // +extension and case do not change its backend.
    assert_eq!(
        say(&mut client, "MAIL FROM:<s@client.test>"),
        "250 2.0.0 ok\r\n"
    );
    let (local, domain) = user_a.split_once('@').unwrap();
    let variant = format!("{}+list@{}", local.to_uppercase(), domain);
    assert_eq!(
        say(&mut client, &format!("RCPT TO:<{variant}>")),
        "250 2.0.0 ok\r\n"
    );
    assert_eq!(
        say(&mut client, &format!("RCPT TO:<{user_b}>")),
        "452 4.5.3 Too many recipients\r\n"
    );
    assert_eq!(say(&mut client, "QUIT"), "221 2.0.0 bye\r\n");
    let got = String::from_utf8_lossy(&a.wait_closed(0)).into_owned();
    assert!(got.contains(&format!("RCPT TO:<{user_a}>")), "{got}");
    assert!(got.contains(&format!("RCPT TO:<{variant}>")), "{got}");
    assert!(got.contains(".. a dotted line\r\n.\r\n"), "{got}");
    assert!(!got.contains(&user_b), "{got}");
    assert_eq!(b.count(), 0);

    // The deferred recipient's retry reaches its own backend, and the same
    // client, now cached (no test runs), is routed too.
    let mut retry = connect_from(Ipv4Addr::new(127, 0, 0, 1), doorman.address);
    assert_eq!(read_line(&mut retry), "220 mx.doorman.test ESMTP\r\n");
    doorman
        .log
        .wait_for("PASS OLD [127.0.0.1]", std::time::Duration::from_secs(5));
    assert!(say(&mut retry, "EHLO client.test").starts_with("250 "));
    assert_eq!(
        say(&mut retry, "MAIL FROM:<s@client.test>"),
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        say(&mut retry, &format!("RCPT TO:<{user_b}>")),
        "250 2.0.0 ok\r\n"
    );
    assert_eq!(say(&mut retry, "QUIT"), "221 2.0.0 bye\r\n");
    let got = String::from_utf8_lossy(&b.wait_closed(0)).into_owned();
    assert!(got.contains(&format!("RCPT TO:<{user_b}>")), "{got}");
    assert_eq!(a.count(), 1);
    doorman.log.wait_for(
        &format!("<{user_b}> belongs to backend {}: 452 4.5.3", b.address),
        std::time::Duration::from_secs(5),
    );
}

/// `doorman user ...` with `args` against `doorman`: its exit status and
/// output.
fn user(doorman: &Doorman, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(doorman_bin())
        .arg("user")
        .arg(args[0])
        .arg("--config")
        .arg(doorman.config_path())
        .args(&args[1..])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// A session that sends one message to `to`; the backend's reply to RCPT.
fn deliver(doorman: &Doorman, to: &str) -> String {
    let mut client = connect_from(Ipv4Addr::new(127, 0, 0, 3), doorman.address);
    let mut greeting = read_line(&mut client);
    if greeting.starts_with("220-") {
        greeting = read_line(&mut client);
    }
    assert_eq!(greeting, "220 mx.doorman.test ESMTP\r\n");
    assert!(say(&mut client, "EHLO client.test").starts_with("250 "));
    assert_eq!(
        say(&mut client, "MAIL FROM:<s@client.test>"),
        "250 2.1.0 Ok\r\n"
    );
    let reply = say(&mut client, &format!("RCPT TO:<{to}>"));
    say(&mut client, "QUIT");
    reply
}

#[test]
fn an_operator_looks_a_user_up_and_moves_it() {
    let (a, b) = (FakeBackend::start(true), FakeBackend::start(true));
    let backends = [a.address, b.address];
    let doorman = start(a.address, b.address);
    let user_b = user_of(1, backends);

    // `doorman explain --rcpt` shows the user and its backends by the hash.
    let explained = stdout_of(
        std::process::Command::new(doorman_bin())
            .args(["explain", "--config"])
            .arg(doorman.config_path())
            .args([
                "127.0.0.9",
                "--rcpt",
                &format!("X+tag@{}", user_b.split_once('@').unwrap().1),
            ]),
    );
    assert!(
        explained.contains("recipient <X+tag@mail.test>: user x@mail.test in cluster \"\" -> "),
        "{explained}"
    );
    let explained = stdout_of(
        std::process::Command::new(doorman_bin())
            .args(["explain", "--config"])
            .arg(doorman.config_path())
            .args(["127.0.0.9", "--rcpt", &user_b]),
    );
    assert!(
        explained.contains(&format!("recipient <{user_b}>: user {user_b} in cluster \"\" -> {} (then {}; remembered for 900s after each use)", b.address, a.address)),
        "{explained}"
    );

    // Before any mail: the hash's answer, not remembered.
    let (ok, shown) = user(&doorman, &["lookup", &user_b]);
    assert!(ok, "{shown}");
    assert!(
        shown.contains(&format!("-> {} (fresh: by the hash)", b.address)),
        "{shown}"
    );
    assert_eq!(deliver(&doorman, &user_b), "250 2.0.0 ok\r\n");
    assert_eq!(b.count(), 1);
    let (_, shown) = user(&doorman, &["lookup", &user_b.to_uppercase()]);
    assert!(
        shown.contains(&format!(
            "user {user_b} in cluster \"\" -> {} (remembered)",
            b.address
        )),
        "{shown}"
    );

    // Moved: the next transaction goes to the other backend.
    let (ok, shown) = user(&doorman, &["move", &user_b, &a.address.to_string()]);
    assert!(
        ok && shown.contains(&format!("-> {}", a.address)),
        "{shown}"
    );
    doorman.log.wait_for(
        &format!("user {user_b}: moved to backend {}", a.address),
        std::time::Duration::from_secs(5),
    );
    assert_eq!(deliver(&doorman, &user_b), "250 2.0.0 ok\r\n");
    assert_eq!((a.count(), b.count()), (1, 1));
    let got = String::from_utf8_lossy(&a.wait_closed(0)).into_owned();
    assert!(got.contains(&format!("RCPT TO:<{user_b}>")), "{got}");

    // A backend the cluster does not have is an error.
    let (ok, shown) = user(&doorman, &["move", &user_b, "127.0.0.1:1"]);
    assert!(
        !ok && shown.contains(
            "127.0.0.1:1 is not a backend of the default cluster: the user was not moved"
        ),
        "{shown}"
    );
}

#[test]
fn two_instances_on_one_redis_share_users_and_a_down_backends_users_come_back() {
    let Some(redis) = Redis::start() else { return };
    let a = FakeBackend::start(true);
    let b = FakeBackend::start(true);
    let backends = [a.address, b.address];
    let cache = format!(
        "[cache]\nstore = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"users-test:\"\n",
        redis.url()
    );
    let first = start_with(a.address, b.address, &cache, "3s");
    let second = start_with(a.address, b.address, &cache, "3s");
    let (user_a, user_b) = (user_of(0, backends), user_of(1, backends));

    // A move on the first instance routes the second's next transaction.
    let (ok, shown) = user(&first, &["move", &user_b, &a.address.to_string()]);
    assert!(ok, "{shown}");
    assert_eq!(deliver(&second, &user_b), "250 2.0.0 ok\r\n");
    assert_eq!((a.count(), b.count()), (1, 0));

    // Backend a goes down: its user fails over to b, which is logged.
    a.stop();
    second.log.wait_for(
        &format!("backend {} is DOWN", a.address),
        std::time::Duration::from_secs(10),
    );
    assert_eq!(deliver(&second, &user_a), "250 2.0.0 ok\r\n");
    assert_eq!(b.count(), 1);
    second.log.wait_for(
        &format!(
            "user {user_a}: backend {} is not available; routed to {}",
            a.address, b.address
        ),
        std::time::Duration::from_secs(5),
    );
    let (_, shown) = user(&first, &["lookup", &user_a]);
    assert!(
        shown.contains(&format!("-> {} (remembered)", b.address)),
        "{shown}"
    );

    // Back up, a gets its user again once the assignment to b expires
    // (user_expire after its last use), not in the middle of a burst.
    let a = FakeBackend::start_on(a.address, true);
    second.log.wait_for(
        &format!("backend {} is UP", a.address),
        std::time::Duration::from_secs(10),
    );
    assert_eq!(deliver(&second, &user_a), "250 2.0.0 ok\r\n");
    assert_eq!(
        (a.count(), b.count()),
        (0, 2),
        "still on b while remembered"
    );
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert_eq!(deliver(&first, &user_a), "250 2.0.0 ok\r\n");
    assert_eq!((a.count(), b.count()), (1, 2), "back on a");

    // Two moves of one user from two instances: the last write wins on
    // every instance.
    let (ok, _) = user(&first, &["move", &user_b, &b.address.to_string()]);
    assert!(ok);
    let (ok, _) = user(&second, &["move", &user_b, &a.address.to_string()]);
    assert!(ok);
    for instance in [&first, &second] {
        let (_, shown) = user(instance, &["lookup", &user_b]);
        assert!(
            shown.contains(&format!("-> {} (remembered)", a.address)),
            "{shown}"
        );
    }
}

#[test]
fn two_postfix_mailstores_each_get_their_own_users() {
    // Each mailstore holds only its own users: the hash of the two ports
    // picks them, before the Postfix instances start.
    let ports = [free_port(), free_port()];
    let backends = ports.map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
    let (user_a, user_b) = (user_of(0, backends), user_of(1, backends));
    let Some(a) = Postfix::start_delivering_on(ports[0], &mailstore(&user_a)) else {
        return;
    };
    let Some(b) = Postfix::start_delivering_on(ports[1], &mailstore(&user_b)) else {
        return;
    };
    let doorman = start(a.address(), b.address());

    // One message for both: the second recipient is split off with 452,
    // and the first is delivered by its own mailstore.
    let mut client = connect_from(Ipv4Addr::new(127, 0, 0, 1), doorman.address);
    assert_eq!(read_line(&mut client), "220-mx.doorman.test ESMTP\r\n");
    assert_eq!(read_line(&mut client), "220 mx.doorman.test ESMTP\r\n");
    postfix_message(
        &mut client,
        &[
            (&user_a, "250 2.1.5 Ok\r\n"),
            (&user_b, "452 4.5.3 Too many recipients\r\n"),
        ],
        "both",
    );
    a.wait_for_log(
        &format!("to=<{user_a}>"),
        std::time::Duration::from_secs(10),
    );

    // The retry of the second recipient, from the now cached client,
    // reaches its own mailstore (the other would refuse it: User unknown).
    let mut retry = connect_from(Ipv4Addr::new(127, 0, 0, 1), doorman.address);
    assert_eq!(read_line(&mut retry), "220 mx.doorman.test ESMTP\r\n");
    postfix_message(&mut retry, &[(&user_b, "250 2.1.5 Ok\r\n")], "retry");
    b.wait_for_log(
        &format!("to=<{user_b}>"),
        std::time::Duration::from_secs(10),
    );
}

/// EHLO, MAIL, each RCPT with the reply it must get, a message with
/// `subject`, and QUIT, through doorman to a real Postfix.
fn postfix_message(client: &mut TcpStream, recipients: &[(&str, &str)], subject: &str) {
    assert!(say(client, "EHLO client.test").starts_with("250 "));
    assert_eq!(say(client, "MAIL FROM:<s@client.test>"), "250 2.1.0 Ok\r\n");
    for (to, reply) in recipients {
        assert_eq!(say(client, &format!("RCPT TO:<{to}>")), *reply);
    }
    assert!(say(client, "DATA").starts_with("354 "));
    let message = format!("Subject: {subject}\r\n\r\nhello\r\n.");
    assert!(say(client, &message).starts_with("250 2.0.0 Ok: queued"));
    assert_eq!(say(client, "QUIT"), "221 2.0.0 Bye\r\n");
}

/// The main.cf lines of a Postfix that accepts mail for `user` alone, as a
/// mailstore holding only its own users does.
fn mailstore(user: &str) -> String {
    format!(
        "smtpd_upstream_proxy_protocol = haproxy\nrelay_domains = mail.test\n\
relay_recipient_maps = inline:{{ {user}=ok }}\n"
    )
}
