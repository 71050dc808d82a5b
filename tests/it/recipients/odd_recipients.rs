//! A backend added to the cluster moves no user; odd recipients get a bounded user, in plain text and inside TLS.

use super::*;

#[test]
fn a_backend_added_to_the_cluster_moves_no_remembered_user() {
    let (a, b, c) = (
        FakeBackend::start(true),
        FakeBackend::start(true),
        FakeBackend::start(true),
    );
    let doorman = start(a.address, b.address);
    // A user of b that the hash would give to c once c is in the cluster.
    let user = (0..)
        .map(|i| format!("user{i}@mail.test"))
        .find(|user| {
            owner(user, &[a.address, b.address]) == 1
                && owner(user, &[a.address, b.address, c.address]) == 2
        })
        .unwrap();
    assert_eq!(deliver(&doorman, &user), "250 2.0.0 ok\r\n");
    assert_eq!(b.count(), 1);

    // c joins the cluster (a reload); the user stays on b while remembered.
    let config = std::fs::read_to_string(doorman.config_path()).unwrap();
    let added = config.replace(
        "[cluster.",
        &format!(
            "[[backend]]\naddress = \"{}\"\nsend_proxy = \"v2\"\n[cluster.",
            c.address
        ),
    );
    std::fs::write(doorman.config_path(), added).unwrap();
    signal(doorman.child.id(), "HUP");
    doorman
        .log
        .wait_for("reloaded", std::time::Duration::from_secs(10));
    assert_eq!(deliver(&doorman, &user), "250 2.0.0 ok\r\n");
    assert_eq!((b.count(), c.count()), (2, 0));
    // A user with no assignment gets the new ranking.
    let fresh = (0..)
        .map(|i| format!("new{i}@mail.test"))
        .find(|user| owner(user, &[a.address, b.address, c.address]) == 2)
        .unwrap();
    assert_eq!(deliver(&doorman, &fresh), "250 2.0.0 ok\r\n");
    assert_eq!(c.count(), 1);
}

#[test]
fn odd_recipients_get_a_bounded_user_and_the_usual_reply() {
    let (a, b) = (FakeBackend::start(true), FakeBackend::start(true));
    let doorman = start(a.address, b.address);
    let long = format!("{}@mail.test", "x".repeat(1500));
    // An empty recipient is smtpd's syntax error, from doorman, and never
    // reaches a backend.
    assert_eq!(
        deliver(&doorman, ""),
        "501 5.1.3 Bad recipient address syntax\r\n"
    );
    for odd in [
        "\"quoted+part\"@mail.test",
        "Ünïcode@mail.test",
        long.as_str(),
        "no-domain",
    ] {
        // Each is routed like any user (the fake backends take anything)
        // and doorman goes on.
        assert_eq!(deliver(&doorman, odd), "250 2.0.0 ok\r\n", "{odd:?}");
    }
    assert_eq!(a.count() + b.count(), 4);
    // The user of the long address is cut to 256 bytes in lookups too.
    let (ok, shown) = user(&doorman, &["lookup", &long]);
    assert!(ok, "{shown}");
    let key = shown
        .split(": user ")
        .nth(1)
        .and_then(|rest| rest.split(" in cluster").next())
        .unwrap_or_default();
    assert_eq!(key, &long[..256], "{shown}");
}

#[test]
fn odd_recipients_inside_tls_go_to_their_users_backends() {
    // The same recipients after STARTTLS in doorman's engine: the routing
    // reads them from the dialogue inside TLS, and each session reaches
    // the backend its user's hash gives.
    let (a, b) = (FakeBackend::start(true), FakeBackend::start(true));
    let certs = tempfile::tempdir().unwrap();
    let pair = tls::certificate(certs.path(), "mx", "mx.doorman.test", tls::Key::Ecdsa, 30);
    let sections = format!(
        "[cache]\nstore = \"memory\"\n{}",
        tls::tls_section(&[pair], "")
    );
    let doorman = start_with(a.address, b.address, &sections, "15m");
    let long = format!("{}@mail.test", "x".repeat(1500));
    assert_eq!(
        deliver_tls(&doorman, ""),
        "501 5.1.3 Bad recipient address syntax\r\n"
    );
    for odd in [
        "\"quoted+part\"@mail.test",
        "Ünïcode@mail.test",
        long.as_str(),
        "no-domain",
    ] {
        let before = [a.count(), b.count()];
        assert_eq!(deliver_tls(&doorman, odd), "250 2.0.0 ok\r\n", "{odd:?}");
        let mut expected = before;
        expected[owner(odd, &[a.address, b.address])] += 1;
        assert_eq!([a.count(), b.count()], expected, "{odd:?}");
    }
}

/// [`deliver`] with STARTTLS first: EHLO, STARTTLS, the handshake, EHLO,
/// MAIL and RCPT inside TLS; the backend's reply to RCPT.
fn deliver_tls(doorman: &Doorman, to: &str) -> String {
    let mut client = connect_from(Ipv4Addr::new(127, 0, 0, 3), doorman.address);
    let mut greeting = read_line(&mut client);
    if greeting.starts_with("220-") {
        greeting = read_line(&mut client);
    }
    assert_eq!(greeting, "220 mx.doorman.test ESMTP\r\n");
    assert!(say(&mut client, "EHLO client.test").contains("STARTTLS"));
    assert_eq!(
        say(&mut client, "STARTTLS"),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    let mut tls = tls::start_tls(client, Some("mx.doorman.test"));
    let mut say_tls = |line: &str| {
        tls::say_tls(&mut tls, &format!("{line}\r\n"));
        tls::reply_tls(&mut tls)
    };
    assert!(say_tls("EHLO client.test").starts_with("250"));
    assert_eq!(say_tls("MAIL FROM:<s@client.test>"), "250 2.1.0 Ok\r\n");
    let reply = say_tls(&format!("RCPT TO:<{to}>"));
    say_tls("QUIT");
    reply
}
