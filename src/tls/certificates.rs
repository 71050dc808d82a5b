//! The engine's certificates: PEM files read into rustls keys, and the
//! resolver that picks one per handshake.
//!
//! The client's SNI name picks the first certificate whose names cover it;
//! among certificates for the same names (an RSA and an ECDSA one), the
//! first whose key can sign with a scheme the client offers. A client
//! that sends no name, or a name no certificate holds, gets the first
//! certificate that suits its schemes, else the very first.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsError;
use crate::config::CertificateFiles;

/// One certificate chain with its signing key, and the file it came from.
pub struct Certificate {
    /// The chain and key, as rustls uses them.
    pub key: Arc<CertifiedKey>,
    /// The chain's file, for messages.
    pub chain_file: std::path::PathBuf,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Certificate({})", self.chain_file.display())
    }
}

impl Certificate {
    /// Reads a chain and its key, and checks that the key is the leaf's.
    pub fn load(files: &CertificateFiles) -> Result<Self, TlsError> {
        let chain = read_chain(&files.chain)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| TlsError::File {
            path: files.key.clone(),
            message: format!("no private key read: {error}"),
        })?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key =
            CertifiedKey::from_der(chain, key, &provider).map_err(|error| TlsError::File {
                path: files.key.clone(),
                message: format!(
                    "key does not fit the certificate {}: {error}",
                    files.chain.display()
                ),
            })?;
        Ok(Self {
            key: Arc::new(key),
            chain_file: files.chain.clone(),
        })
    }

    /// Whether the leaf certificate holds `name` (wildcards as RFC 6125).
    pub fn covers(&self, name: &str) -> bool {
        let Ok(server_name) = ServerName::try_from(name) else {
            return false;
        };
        let Ok(leaf) = self.key.end_entity_cert() else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|leaf| leaf.verify_is_valid_for_subject_name(&server_name).is_ok())
    }
}

/// Reads every certificate of a PEM file, leaf first.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| fail(format!("cannot read: {error}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(format!("bad PEM: {error}")))?;
    if chain.is_empty() {
        return Err(fail("holds no CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// Picks a certificate for each handshake (see the module docs).
#[derive(Debug)]
pub struct Resolver {
    certificates: Vec<Certificate>,
}

impl Resolver {
    /// A resolver over `certificates`, the first being the default; there
    /// is at least one.
    pub fn new(certificates: Vec<Certificate>) -> Self {
        Self { certificates }
    }

    /// The certificate for `name` (the SNI, if any) and the client's
    /// signature schemes.
    fn choose(
        &self,
        name: Option<&str>,
        schemes: &[rustls::SignatureScheme],
    ) -> Option<&Certificate> {
        let signs =
            |certificate: &&Certificate| certificate.key.key.choose_scheme(schemes).is_some();
        let named = name.map(|name| {
            self.certificates
                .iter()
                .filter(move |certificate| certificate.covers(name))
        });
        named
            .and_then(|mut named| named.find(signs))
            .or_else(|| self.certificates.iter().find(signs))
            .or_else(|| self.certificates.first())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name(), hello.signature_schemes())
            .map(|certificate| Arc::clone(&certificate.key))
    }
}
