//! DNSBL query names: IPv4 as reversed octets, IPv6 as 32 reversed nibbles.

use std::fmt::Write;
use std::net::IpAddr;

/// The name to query for `ip` in `domain`, fully qualified (trailing dot).
pub fn query_name(ip: IpAddr, domain: &str) -> String {
    let mut name = String::with_capacity(80);
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                let _ = write!(name, "{octet}.");
            }
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(domain);
    name.push('.');
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_octets_and_nibbles() {
        assert_eq!(
            query_name("192.0.2.7".parse().unwrap(), "bl.test"),
            "7.2.0.192.bl.test."
        );
        assert_eq!(
            query_name("::ffff:192.0.2.7".parse().unwrap(), "bl.test"),
            "7.2.0.192.bl.test."
        );
        assert_eq!(
            query_name("2001:db8::1".parse().unwrap(), "v6.test"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.v6.test."
        );
    }
}
