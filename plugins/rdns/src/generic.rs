//! Whether a host name looks generic: one an access provider gives every
//! address of a pool, as Haraka's `fcrdns` judges it (haraka-net-utils'
//! `is_ip_in_str`). A generic name embeds the address (its octets dotted,
//! dashed or underscored, forwards or reversed, or in hex), or its host
//! labels hold a pool word such as `dsl`, `dynamic` or `pool`.

use std::net::IpAddr;

/// Words that mark a name from an access provider's pool.
const POOL_WORDS: [&str; 16] = [
    "dsl",
    "adsl",
    "vdsl",
    "xdsl",
    "dynamic",
    "dyn",
    "dhcp",
    "pool",
    "ppp",
    "pppoe",
    "cable",
    "client",
    "dial",
    "dialup",
    "broadband",
    "customer",
];

/// Whether `name` (a host name, any case, with or without the root dot)
/// looks generic for `ip`.
pub fn is_generic(name: &str, ip: IpAddr) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    embeds_address(&name, ip) || has_pool_word(&name)
}

/// Whether `name` holds the address in one of the usual forms.
fn embeds_address(name: &str, ip: IpAddr) -> bool {
    let forms: Vec<String> = match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let mut forms = Vec::new();
            for octets in [o, [o[3], o[2], o[1], o[0]]] {
                for separator in [".", "-", "_"] {
                    forms.push(
                        octets
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(separator),
                    );
                }
                forms.push(octets.iter().map(|b| format!("{b:03}")).collect());
                forms.push(octets.iter().map(|b| format!("{b:02x}")).collect());
            }
            forms
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let host = &segments[4..];
            vec![
                host.iter().map(|s| format!("{s:04x}")).collect(),
                host.iter()
                    .map(|s| format!("{s:x}"))
                    .collect::<Vec<_>>()
                    .join("-"),
            ]
        }
    };
    forms.iter().any(|form| contains_whole(name, form))
}

/// Whether `form` stands in `name` with no letter or digit right before or
/// after it (so `1.2.3.4` is not found in `11.2.3.45`).
fn contains_whole(name: &str, form: &str) -> bool {
    let bytes = name.as_bytes();
    name.match_indices(form).any(|(start, _)| {
        let end = start + form.len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(end).copied();
        !before.is_some_and(|b| b.is_ascii_alphanumeric())
            && !after.is_some_and(|b| b.is_ascii_alphanumeric())
    })
}

/// Whether a host label (any but the last two, the provider's domain) holds
/// a pool word as one of its alphabetic runs.
fn has_pool_word(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    let hosts = labels.len().saturating_sub(2);
    labels[..hosts].iter().any(|label| {
        label
            .split(|c: char| !c.is_ascii_alphabetic())
            .any(|word| POOL_WORDS.contains(&word))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn addresses_in_names() {
        let client = ip("203.0.113.33");
        for name in [
            "dsl-203-0-113-33.example.net",
            "203.0.113.33.static.example.net",
            "33.113.0.203.in-addr.example.net",
            "c-33-113-0-203.hsd1.example.com.",
            "cb007121.example.net",
            "h-203000113033.example.net",
            "203_0_113_33.example.net",
        ] {
            assert!(is_generic(name, client), "{name}");
        }
        for name in [
            "mail.example.net",
            "mx1.203.example.net",
            "2203.0.113.33.example.net",
            "203.0.113.330.example.net",
        ] {
            assert!(!embeds_address(name, client), "{name}");
        }
    }

    #[test]
    fn pool_words_in_host_labels_only() {
        let client = ip("198.51.100.9");
        assert!(is_generic("pool-9.dynamic.example.net", client));
        assert!(is_generic("ppp123.example.net", client));
        assert!(is_generic("Cable-Modem.CUSTOMER.example.net", client));
        assert!(!is_generic("mail.example.net", client));
        assert!(!is_generic("pool.net", client), "the provider's own domain");
        assert!(!is_generic("dslr-shop.example.net", client), "whole words");
    }

    #[test]
    fn ipv6_interface_identifiers() {
        let client = ip("2001:db8::21a:2bff:fe3c:4d5e");
        assert!(is_generic("021a2bfffe3c4d5e.example.net", client));
        assert!(is_generic("21a-2bff-fe3c-4d5e.example.net", client));
        assert!(!is_generic("mail6.example.net", client));
        assert!(
            is_generic("x.example.net", ip("::ffff:192.0.2.1"))
                == is_generic("x.example.net", ip("192.0.2.1"))
        );
    }
}
