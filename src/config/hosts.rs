//! The `haproxy_hosts` list: which peers must (and alone may) send a PROXY
//! header.
//!
//! The format is Haraka's: one IP address or CIDR network a line, `#` starts
//! a comment, blank lines are ignored. An address without a prefix is one
//! host (/32 for IPv4, /128 for IPv6; Haraka widens a bare IPv6 address to a
//! /64, which would trust a whole network, so doorman does not). IPv6
//! entries may be written in brackets (`[2001:db8::1]`), as Haraka's sample
//! shows them. A port is an error, not silently dropped.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::ConfigError;

/// The parsed list of trusted proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyHosts {
    networks: Vec<IpNet>,
}

impl ProxyHosts {
    /// Parses the text of a `haproxy_hosts` file; `path` only names the file
    /// in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut networks = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let entry = raw.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            let network = parse_entry(entry).map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: index + 1,
                message,
            })?;
            networks.push(network);
        }
        Ok(Self { networks })
    }

    /// Reads and parses a `haproxy_hosts` file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&super::read_file(path)?, path)
    }

    /// Whether `ip` is a listed proxy. An IPv4-mapped IPv6 address matches
    /// the IPv4 entries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|network| network.contains(&ip))
    }

    /// How many entries the list has.
    pub fn len(&self) -> usize {
        self.networks.len()
    }

    /// Whether the list is empty (no peer may send PROXY).
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// Parses one entry: an address or a network, IPv6 optionally in brackets.
fn parse_entry(entry: &str) -> Result<IpNet, String> {
    if entry.split_whitespace().count() > 1 {
        return Err(format!("expected one address or network, found {entry:?}"));
    }
    let unbracketed = match entry.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("missing ']' in {entry:?}"))?;
            if after.starts_with(':') {
                return Err(format!("{entry:?} has a port; list addresses only"));
            }
            format!("{inside}{after}")
        }
        None => entry.to_string(),
    };
    if let Ok(network) = unbracketed.parse::<IpNet>() {
        return Ok(canonical(network));
    }
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    if unbracketed.matches(':').count() == 1 && unbracketed.contains('.') {
        return Err(format!("{entry:?} has a port; list addresses only"));
    }
    Err(format!("{entry:?} is not an IP address or CIDR network"))
}

/// Writes `::ffff:a.b.c.d/n` (n >= 96) as the IPv4 network it is.
fn canonical(network: IpNet) -> IpNet {
    match network {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(network),
            None => network,
        },
        other => other.trunc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ProxyHosts, ConfigError> {
        ProxyHosts::parse(text, Path::new("haproxy_hosts"))
    }

    #[test]
    fn entries_comments_and_blank_lines() {
        let hosts = parse(
            "# proxies\n127.0.0.1\n\n10.1.0.0/16  # lb pool\n[2001:db8::1]\n2001:db8:1::/48\n",
        )
        .expect("valid list");
        assert_eq!(hosts.len(), 4);
        assert!(hosts.contains("127.0.0.1".parse().unwrap()));
        assert!(!hosts.contains("127.0.0.2".parse().unwrap()));
        assert!(hosts.contains("10.1.200.3".parse().unwrap()));
        assert!(hosts.contains("2001:db8::1".parse().unwrap()));
        assert!(!hosts.contains("2001:db8::2".parse().unwrap()));
        assert!(hosts.contains("2001:db8:1:ff::9".parse().unwrap()));
        assert!(hosts.contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv6_entries_match_ipv4_peers() {
        let hosts = parse("::ffff:192.0.2.0/120\n").expect("valid list");
        assert!(hosts.contains("192.0.2.77".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("127.0.0.1\nbanana\n", 2, "not an IP address"),
            ("127.0.0.1:25\n", 1, "has a port"),
            ("[::1]:25\n", 1, "has a port"),
            ("\n\n10.0.0.0/33\n", 3, "not an IP address"),
            ("1.2.3.4 5.6.7.8\n", 1, "one address"),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid {
                    line: got, message, ..
                }) => {
                    assert_eq!(got, line, "{text:?}");
                    assert!(message.contains(needle), "{message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
