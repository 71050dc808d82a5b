//! Postfix's XCLIENT (XCLIENT_README), sans-IO: the attributes a server
//! announces in its EHLO reply, xtext encoding, and the command that tells
//! it the real client.

use doorman_gate_api::Client;
use std::net::IpAddr;

/// The attribute names after `XCLIENT` in an EHLO reply, upper-cased;
/// `None` when XCLIENT is not announced.
pub fn announced(ehlo_reply: &[u8]) -> Option<Vec<String>> {
    String::from_utf8_lossy(ehlo_reply)
        .lines()
        .find_map(|line| {
            let keyword_line = line.get(4..)?;
            let mut words = keyword_line.split_whitespace();
            words
                .next()
                .filter(|w| w.eq_ignore_ascii_case("XCLIENT"))
                .map(|_| words.map(str::to_ascii_uppercase).collect())
        })
}

/// RFC 3461 xtext: `+`, `=` and bytes outside `!`..`~` as `+HH`.
pub fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (b'!'..=b'~').contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

/// An address as XCLIENT writes it: IPv6 with the `IPV6:` prefix.
fn address(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPV6:{v6}"),
    }
}

/// The XCLIENT command for `client`, with the attributes the server
/// announced among NAME (`[UNAVAILABLE]`: doorman does no reverse lookup,
/// so the backend does not either), ADDR, PORT, DESTADDR and DESTPORT.
pub fn command(client: &Client, attributes: &[String]) -> String {
    let mut line = String::from("XCLIENT");
    let has = |name: &str| attributes.iter().any(|a| a == name);
    let mut add = |name: &str, value: String| {
        if has(name) {
            line.push_str(&format!(" {name}={}", xtext(&value)));
        }
    };
    add("NAME", "[UNAVAILABLE]".to_string());
    add("ADDR", address(client.address.ip()));
    add("PORT", client.address.port().to_string());
    add("DESTADDR", address(client.destination.ip()));
    add("DESTPORT", client.destination.port().to_string());
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: &str) -> Client {
        Client {
            address: address.parse().unwrap(),
            destination: "198.51.100.25:25".parse().unwrap(),
            tlvs: vec![],
        }
    }

    #[test]
    fn announced_attributes() {
        let reply = b"250-backend.test\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n250 8BITMIME\r\n";
        let attributes = announced(reply).unwrap();
        assert_eq!(attributes[1], "ADDR");
        assert!(announced(b"250-x\r\n250 PIPELINING\r\n").is_none());
        assert_eq!(
            command(&client("203.0.113.7:40000"), &attributes),
            "XCLIENT NAME=[UNAVAILABLE] ADDR=203.0.113.7 PORT=40000 DESTADDR=198.51.100.25 DESTPORT=25\r\n"
        );
        assert_eq!(
            command(&client("[2001:db8::7]:1"), &["ADDR".to_string()]),
            "XCLIENT ADDR=IPV6:2001:db8::7\r\n"
        );
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext("IPV6:2001:db8::1"), "IPV6:2001:db8::1");
    }
}
