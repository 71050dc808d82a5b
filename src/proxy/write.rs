//! PROXY headers that doorman sends to its backends.
//!
//! `ppp` turns a source/destination pair of different families into an
//! UNSPEC header, which would hide the client. doorman therefore writes both
//! addresses in one family first: IPv4 when both are (or map to) IPv4,
//! otherwise IPv6 with IPv4 addresses mapped to `::ffff:a.b.c.d`.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Builder, Protocol};

/// `ver_cmd` of a v2 PROXY command.
const V2_PROXY: u8 = 0x21;
/// A v2 `LOCAL` header with no address block, as HAProxy sends for checks.
pub const V2_LOCAL: &[u8; 16] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

/// `PP2_TYPE_SSL`: the client spoke TLS to the proxy.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_VERSION`, inside the SSL TLV.
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// `PP2_SUBTYPE_SSL_CIPHER`, inside the SSL TLV.
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// `PP2_CLIENT_SSL`: the connection was made over TLS.
const PP2_CLIENT_SSL: u8 = 0x01;

/// The value of the SSL TLV, as HAProxy writes it: the client byte
/// (`PP2_CLIENT_SSL`), `verify` (non-zero: no client certificate was
/// verified), then the version and cipher sub-TLVs.
pub fn ssl_tlv(summary: &crate::tls::TlsSummary) -> Vec<u8> {
    let mut value = vec![PP2_CLIENT_SSL, 0, 0, 0, 1];
    for (kind, text) in [
        (PP2_SUBTYPE_SSL_VERSION, summary.protocol),
        (PP2_SUBTYPE_SSL_CIPHER, summary.cipher),
    ] {
        value.push(kind);
        value.extend_from_slice(&u16::try_from(text.len()).unwrap_or(0).to_be_bytes());
        value.extend_from_slice(text.as_bytes());
    }
    value
}

/// Puts both addresses in one family, preferring IPv4.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (source.ip().to_canonical(), destination.ip().to_canonical());
    match (s, d) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (
            SocketAddr::new(s, source.port()),
            SocketAddr::new(d, destination.port()),
        ),
        _ => (
            SocketAddr::new(IpAddr::V6(to_v6(s)), source.port()),
            SocketAddr::new(IpAddr::V6(to_v6(d)), destination.port()),
        ),
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A v1 line: `PROXY TCP4|TCP6 src dst sport dport\r\n`.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    ppp::v1::Addresses::from(same_family(source, destination))
        .to_string()
        .into_bytes()
}

/// A v2 PROXY header over TCP, without TLVs.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> io::Result<Vec<u8>> {
    encode_v2_with_tlvs(source, destination, &[], false)
}

/// A v2 PROXY header over TCP with the given TLVs, and optionally a CRC32C
/// TLV over the whole header.
pub fn encode_v2_with_tlvs(
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: &[(u8, &[u8])],
    checksum: bool,
) -> io::Result<Vec<u8>> {
    let addresses = ppp::v2::Addresses::from(same_family(source, destination));
    let mut builder = Builder::with_addresses(V2_PROXY, Protocol::Stream, addresses);
    for (kind, value) in tlvs {
        builder = builder.write_tlv(*kind, value)?;
    }
    if !checksum {
        return builder.build();
    }
    let mut header = builder.write_tlv(0x03u8, &[0, 0, 0, 0])?.build()?;
    let crc = crc32c::crc32c(&header).to_be_bytes();
    let end = header.len();
    header[end - 4..].copy_from_slice(&crc);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{parse, Header, Parsed};

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn round_trip(bytes: &[u8]) -> (SocketAddr, SocketAddr) {
        match parse(bytes) {
            Ok(Parsed::Complete {
                header:
                    Header::Proxied {
                        source,
                        destination,
                        ..
                    },
                length,
            }) if length == bytes.len() => (source, destination),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_lines() {
        assert_eq!(
            encode_v1(addr("192.0.2.7:40982"), addr("198.51.100.2:25")),
            b"PROXY TCP4 192.0.2.7 198.51.100.2 40982 25\r\n"
        );
        assert_eq!(
            encode_v1(addr("[2001:db8::7]:1"), addr("198.51.100.2:25")),
            b"PROXY TCP6 2001:db8::7 ::ffff:198.51.100.2 1 25\r\n"
        );
    }

    #[test]
    fn mixed_families_keep_the_client() {
        for (s, d) in [
            ("192.0.2.7:1", "[2001:db8::25]:25"),
            ("[2001:db8::7]:1", "192.0.2.8:25"),
            ("[::ffff:192.0.2.7]:1", "192.0.2.8:25"),
        ] {
            let (s, d) = (addr(s), addr(d));
            let (got_s, got_d) = round_trip(&encode_v2(s, d).expect("encode"));
            assert_eq!(
                (got_s, got_d),
                (
                    SocketAddr::new(s.ip().to_canonical(), 1),
                    SocketAddr::new(d.ip().to_canonical(), 25)
                )
            );
            let (got_s, _) = round_trip(&encode_v1(s, d));
            assert_eq!(got_s.ip(), s.ip().to_canonical());
        }
    }

    #[test]
    fn local_header_is_what_haproxy_sends() {
        assert_eq!(
            parse(V2_LOCAL),
            Ok(Parsed::Complete {
                header: Header::Local,
                length: 16
            })
        );
    }
}
