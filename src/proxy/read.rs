//! The sans-IO PROXY header reader (the rules it follows:
//! docs/proxy-protocol.md).
//!
//! [`parse`] takes the bytes received so far and never reads past the
//! header: the caller keeps whatever follows as the client's first bytes.
//! v1 and v2 are told apart by their first bytes. The reader decides as early
//! as it can: bytes that cannot start a header are refused at once, a v1 line
//! is refused once 107 bytes hold no CRLF, a v2 header once its length field
//! exceeds [`V2_MAX_LEN`]. A complete v1 line goes to `ppp` only with its
//! CRLF, so `ppp`'s "partial" answer can never leave a line pending forever.

use std::net::{IpAddr, SocketAddr};

use ppp::v2;

use super::{Header, ProxyError, Tlv, V1_MAX_LEN, V2_MAX_LEN};

/// The 12-byte v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 prefix, with its separator.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The fixed part of a v2 header.
const V2_FIXED_LEN: usize = 16;
/// TLV type of the CRC32C checksum.
const TLV_CRC32C: u8 = 0x03;

/// The result of looking at the bytes received so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole header: `length` bytes of the buffer belong to it.
    Complete {
        /// The header.
        header: Header,
        /// How many bytes the header took.
        length: usize,
    },
}

/// Whether client bytes begin like a PROXY header (of either version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// They do: the bytes are (the start of) a PROXY header.
    Header,
    /// They cannot be a PROXY header.
    Other,
    /// Too few bytes to tell.
    Undecided,
}

/// Tells whether `bytes` begin like a PROXY v1 or v2 header. Used on bytes
/// from peers that are not listed, which must never get a header through.
pub fn starts_like_header(bytes: &[u8]) -> Prefix {
    let mut undecided = false;
    for signature in [&V1_PREFIX[..], &V2_SIGNATURE[..]] {
        let n = bytes.len().min(signature.len());
        if bytes[..n] == signature[..n] {
            if n == signature.len() {
                return Prefix::Header;
            }
            undecided = true;
        }
    }
    if undecided {
        Prefix::Undecided
    } else {
        Prefix::Other
    }
}

/// Parses a PROXY header at the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ProxyError> {
    match starts_like_header(bytes) {
        Prefix::Other => Err(ProxyError::NotAHeader),
        Prefix::Undecided => Ok(Parsed::Incomplete),
        Prefix::Header if bytes[0] == b'P' => parse_v1(bytes),
        Prefix::Header => parse_v2(bytes),
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        if window.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        if window.iter().any(|&b| !is_v1_text(b) && b != b'\r')
            || window.iter().rev().skip(1).any(|&b| b == b'\r')
        {
            return Err(ProxyError::V1BadBytes);
        }
        return Ok(Parsed::Incomplete);
    };
    let length = newline + 1;
    let line = &bytes[..length];
    if newline == 0
        || line[newline - 1] != b'\r'
        || !line[..newline - 1].iter().all(|&b| is_v1_text(b))
    {
        return Err(ProxyError::V1BadBytes);
    }
    let parsed = ppp::v1::Header::try_from(line)
        .map_err(|error| ProxyError::V1Malformed(error.to_string()))?;
    // `ppp` reads ports with `u16::from_str`, which takes a sign (`+25`);
    // the spec allows decimal digits only.
    let mut fields = line[..newline - 1].split(|&b| b == b' ').skip(4);
    if fields.any(|port| !port.iter().all(u8::is_ascii_digit)) {
        return Err(ProxyError::V1Malformed("port is not decimal digits".into()));
    }
    let (source, destination) = match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => (
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        ),
        ppp::v1::Addresses::Tcp6(a) => (
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        ),
        ppp::v1::Addresses::Unknown => return Err(ProxyError::V1Unknown),
    };
    Ok(Parsed::Complete {
        header: Header::Proxied {
            source: canonical(source),
            destination: canonical(destination),
            tlvs: Vec::new(),
        },
        length,
    })
}

/// Printable ASCII and space: the only bytes a v1 line holds before CRLF.
fn is_v1_text(byte: u8) -> bool {
    byte == b' ' || byte.is_ascii_graphic()
}

fn parse_v2(bytes: &[u8]) -> Result<Parsed, ProxyError> {
    if bytes.len() < V2_FIXED_LEN {
        return Ok(Parsed::Incomplete);
    }
    let version_command = bytes[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::V2Version(version_command >> 4));
    }
    let length = V2_FIXED_LEN + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if length > V2_MAX_LEN {
        return Err(ProxyError::V2TooLong(length));
    }
    if bytes.len() < length {
        return Ok(Parsed::Incomplete);
    }
    // The spec's families are 0-3 and its transports 0-2; a receiver must
    // refuse any other value, whatever the command (`ppp` does not).
    let family = bytes[13];
    if family >> 4 > 3 || family & 0x0f > 2 {
        return Err(ProxyError::V2Family(family));
    }
    match version_command & 0x0f {
        // LOCAL: skip the whole block, whatever (defined) family it names.
        0x0 => {
            return Ok(Parsed::Complete {
                header: Header::Local,
                length,
            })
        }
        0x1 => {}
        command => return Err(ProxyError::V2Command(command)),
    }
    if family != 0x11 && family != 0x21 {
        return Err(ProxyError::V2Family(family));
    }
    let parsed = v2::Header::try_from(&bytes[..length])
        .map_err(|error| ProxyError::V2Malformed(error.to_string()))?;
    let (source, destination) = match parsed.addresses {
        v2::Addresses::IPv4(a) => (
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        ),
        v2::Addresses::IPv6(a) => (
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        ),
        _ => return Err(ProxyError::V2Family(family)),
    };
    let mut tlvs = Vec::new();
    for tlv in parsed.tlvs() {
        let tlv = tlv.map_err(|error| ProxyError::V2Malformed(error.to_string()))?;
        tlvs.push(Tlv {
            kind: tlv.kind,
            value: tlv.value.to_vec(),
        });
    }
    if let Some(crc) = tlvs.iter().find(|tlv| tlv.kind == TLV_CRC32C) {
        verify_crc32c(&bytes[..length], &crc.value)?;
    }
    Ok(Parsed::Complete {
        header: Header::Proxied {
            source: canonical(source),
            destination: canonical(destination),
            tlvs,
        },
        length,
    })
}

/// Checks the CRC32C TLV: the checksum of the whole header with the TLV's
/// value zeroed must equal the value.
fn verify_crc32c(header: &[u8], value: &[u8]) -> Result<(), ProxyError> {
    let expected: [u8; 4] = value
        .try_into()
        .map_err(|_| ProxyError::V2Malformed("CRC32C TLV is not 4 bytes".into()))?;
    let mut zeroed = header.to_vec();
    let mut offset = V2_FIXED_LEN
        + match header[13] >> 4 {
            1 => 12,
            _ => 36,
        };
    while offset + 3 <= zeroed.len() {
        let kind = zeroed[offset];
        let len = usize::from(u16::from_be_bytes([zeroed[offset + 1], zeroed[offset + 2]]));
        let start = offset + 3;
        let end = (start + len).min(zeroed.len());
        if kind == TLV_CRC32C {
            zeroed[start..end].fill(0);
        }
        offset = start + len;
    }
    if crc32c::crc32c(&zeroed).to_be_bytes() == expected {
        Ok(())
    } else {
        Err(ProxyError::V2Checksum)
    }
}

/// `::ffff:a.b.c.d` as IPv4; everything else unchanged.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::write;

    fn complete(bytes: &[u8]) -> (Header, usize) {
        match parse(bytes) {
            Ok(Parsed::Complete { header, length }) => (header, length),
            other => panic!("{bytes:?}: {other:?}"),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn v1_tcp4_and_the_bytes_after_it() {
        let bytes = b"PROXY TCP4 192.0.2.7 198.51.100.2 40982 25\r\nEHLO x\r\n";
        let (header, length) = complete(bytes);
        assert_eq!(length, 44);
        assert_eq!(&bytes[length..], b"EHLO x\r\n");
        assert_eq!(
            header,
            Header::Proxied {
                source: addr("192.0.2.7:40982"),
                destination: addr("198.51.100.2:25"),
                tlvs: vec![]
            }
        );
    }

    #[test]
    fn v1_tcp6_mapped_is_ipv4() {
        let (header, _) = complete(b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::25 1 25\r\n");
        assert_eq!(
            header,
            Header::Proxied {
                source: addr("192.0.2.7:1"),
                destination: addr("[2001:db8::25]:25"),
                tlvs: vec![]
            }
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.2 40982 25\r\n";
        let v2 = write::encode_v2(addr("192.0.2.7:1"), addr("192.0.2.8:25")).expect("encode");
        for header in [&v1[..], &v2[..]] {
            for cut in 0..header.len() {
                assert_eq!(parse(&header[..cut]), Ok(Parsed::Incomplete), "cut {cut}");
            }
            assert!(matches!(parse(header), Ok(Parsed::Complete { .. })));
        }
    }

    #[test]
    fn v1_refusals() {
        let long = format!("PROXY TCP6 {} ", "1".repeat(120));
        for (bytes, expected) in [
            (&b"EHLO foo\r\n"[..], ProxyError::NotAHeader),
            (b"GET / HTTP/1.0\r\n", ProxyError::NotAHeader),
            (long.as_bytes(), ProxyError::V1TooLong),
            (b"PROXY UNKNOWN\r\n", ProxyError::V1Unknown),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
                ProxyError::V1Unknown,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", ProxyError::V1BadBytes),
            (
                b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
                ProxyError::V1BadBytes,
            ),
            (b"PROXY TCP4 1.2.3.4\x005", ProxyError::V1BadBytes),
        ] {
            assert_eq!(
                parse(bytes),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        for bytes in [
            &b"PROXY TCP4 ::1 ::1 1 2\r\n"[..],
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +25 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +25\r\n",
            b"PROXY TCP6 2001:db8::1 2001:db8::2 -0 25\r\n",
        ] {
            assert!(
                matches!(parse(bytes), Err(ProxyError::V1Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bytes),
                parse(bytes)
            );
        }
    }

    #[test]
    fn v2_local_any_family_honours_length() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x11, 0x00, 0x0c]);
        local.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2]);
        local.extend_from_slice(b"QUIT\r\n");
        assert_eq!(complete(&local), (Header::Local, 28));
        let haproxy = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        assert_eq!(complete(haproxy), (Header::Local, 16));
    }

    #[test]
    fn v2_with_tlvs_and_checksum() {
        let header = write::encode_v2_with_tlvs(
            addr("[2001:db8::7]:4000"),
            addr("[2001:db8::25]:25"),
            &[(0x02, b"mx.example.test".as_slice())],
            true,
        )
        .expect("encode");
        let (parsed, length) = complete(&header);
        assert_eq!(length, header.len());
        match parsed {
            Header::Proxied { source, tlvs, .. } => {
                assert_eq!(source, addr("[2001:db8::7]:4000"));
                assert_eq!(
                    tlvs[0],
                    Tlv {
                        kind: 0x02,
                        value: b"mx.example.test".to_vec()
                    }
                );
                assert_eq!(tlvs[1].kind, TLV_CRC32C);
            }
            other => panic!("{other:?}"),
        }
        let mut corrupt = header.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(parse(&corrupt), Err(ProxyError::V2Checksum));
    }

    #[test]
    fn v2_refusals() {
        let good = write::encode_v2(addr("192.0.2.7:1"), addr("192.0.2.8:25")).expect("encode");
        let mut version = good.clone();
        version[12] = 0x11;
        assert_eq!(parse(&version), Err(ProxyError::V2Version(1)));
        let mut command = good.clone();
        command[12] = 0x22;
        assert_eq!(parse(&command), Err(ProxyError::V2Command(2)));
        for family in [0x00u8, 0x12, 0x22, 0x31, 0x17, 0x13, 0x41, 0xf1] {
            let mut wrong = good.clone();
            wrong[13] = family;
            assert_eq!(parse(&wrong), Err(ProxyError::V2Family(family)));
        }
        // A LOCAL header's family is not used, but must still be one the
        // spec defines.
        for family in [0x17u8, 0x03, 0x40] {
            let mut local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
            local[13] = family;
            assert_eq!(parse(&local), Err(ProxyError::V2Family(family)));
        }
        let mut too_long = good.clone();
        too_long[14..16].copy_from_slice(&0xfff0u16.to_be_bytes());
        assert!(matches!(parse(&too_long), Err(ProxyError::V2TooLong(_))));
        let mut short = good.clone();
        short[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert!(matches!(parse(&short), Err(ProxyError::V2Malformed(_))));
        let mut bad_tlv = good.clone();
        bad_tlv[14..16].copy_from_slice(&14u16.to_be_bytes());
        bad_tlv.extend_from_slice(&[0x02, 0x00]);
        assert!(matches!(parse(&bad_tlv), Err(ProxyError::V2Malformed(_))));
    }

    #[test]
    fn prefixes() {
        assert_eq!(starts_like_header(b""), Prefix::Undecided);
        assert_eq!(starts_like_header(b"PRO"), Prefix::Undecided);
        assert_eq!(starts_like_header(b"PROXY TCP4"), Prefix::Header);
        assert_eq!(starts_like_header(b"PROXYX"), Prefix::Other);
        assert_eq!(starts_like_header(b"\r\n\r\n"), Prefix::Undecided);
        assert_eq!(starts_like_header(V2_SIGNATURE), Prefix::Header);
        assert_eq!(starts_like_header(b"EHLO"), Prefix::Other);
        assert_eq!(starts_like_header(b"\r\n"), Prefix::Undecided);
    }
}
