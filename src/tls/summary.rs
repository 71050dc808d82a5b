//! What a TLS session is, in the words Postfix uses for it: the protocol
//! (`TLSv1.3`), OpenSSL's name of the cipher, its key size and the key
//! exchange. The log line, the policy attributes and the PROXY v2 SSL TLV
//! all use these.

use std::fmt;

use rustls::{CipherSuite, CommonState, NamedGroup, ProtocolVersion};

/// A negotiated TLS session, as Postfix names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSummary {
    /// `TLSv1.2` or `TLSv1.3`.
    pub protocol: &'static str,
    /// The cipher, as OpenSSL names it (`TLS_AES_256_GCM_SHA384`,
    /// `ECDHE-RSA-AES128-GCM-SHA256`).
    pub cipher: &'static str,
    /// The cipher's key size in bits.
    pub bits: u16,
    /// The key exchange group (`X25519`), when known.
    pub group: Option<&'static str>,
}

impl TlsSummary {
    /// The summary of an established connection, if it is established.
    pub fn of(state: &CommonState) -> Option<Self> {
        let suite = state.negotiated_cipher_suite()?.suite();
        let (cipher, bits) = cipher_name(suite);
        Some(Self {
            protocol: match state.protocol_version()? {
                ProtocolVersion::TLSv1_3 => "TLSv1.3",
                ProtocolVersion::TLSv1_2 => "TLSv1.2",
                _ => "TLS",
            },
            cipher,
            bits,
            group: state
                .negotiated_key_exchange_group()
                .map(|group| group_name(group.name())),
        })
    }
}

impl From<&TlsSummary> for doorman_gate_api::Encryption {
    fn from(summary: &TlsSummary) -> Self {
        Self {
            protocol: summary.protocol.to_string(),
            cipher: summary.cipher.to_string(),
            keysize: summary.bits,
        }
    }
}

/// `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)
/// key-exchange X25519`, as Postfix's TLS lines have it.
impl fmt::Display for TlsSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} with cipher {} ({}/{} bits)",
            self.protocol, self.cipher, self.bits, self.bits
        )?;
        if let Some(group) = self.group {
            write!(f, " key-exchange {group}")?;
        }
        Ok(())
    }
}

/// OpenSSL's name for a suite rustls offers, and its key size.
fn cipher_name(suite: CipherSuite) -> (&'static str, u16) {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => ("TLS_AES_256_GCM_SHA384", 256),
        CipherSuite::TLS13_AES_128_GCM_SHA256 => ("TLS_AES_128_GCM_SHA256", 128),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => ("TLS_CHACHA20_POLY1305_SHA256", 256),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => {
            ("ECDHE-ECDSA-AES256-GCM-SHA384", 256)
        }
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => {
            ("ECDHE-ECDSA-AES128-GCM-SHA256", 128)
        }
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            ("ECDHE-ECDSA-CHACHA20-POLY1305", 256)
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-RSA-AES256-GCM-SHA384", 256),
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-RSA-AES128-GCM-SHA256", 128),
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
            ("ECDHE-RSA-CHACHA20-POLY1305", 256)
        }
        _ => ("unknown", 0),
    }
}

/// OpenSSL's name for a key exchange group.
fn group_name(group: NamedGroup) -> &'static str {
    match group {
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "prime256v1",
        NamedGroup::secp384r1 => "secp384r1",
        NamedGroup::secp521r1 => "secp521r1",
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_words() {
        let summary = TlsSummary {
            protocol: "TLSv1.3",
            cipher: cipher_name(CipherSuite::TLS13_AES_256_GCM_SHA384).0,
            bits: 256,
            group: Some(group_name(NamedGroup::X25519)),
        };
        assert_eq!(
            summary.to_string(),
            "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519"
        );
        assert_eq!(
            cipher_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            ("ECDHE-RSA-AES128-GCM-SHA256", 128)
        );
    }
}
