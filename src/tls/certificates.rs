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
use crate::config::{CertificateFiles, WrittenAt};

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
        let chain = read_chain(&files.chain, files.chain_at.clone().map(|at| (at, "chain")))?;
        let key_error = |message: String| TlsError::File {
            path: files.key.clone(),
            message,
            written: files.key_at.clone().map(|at| (at, "key")),
        };
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|error| key_error(unreadable_key(&error)))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|error| {
            key_error(match error {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                    "this private key does not belong to the certificate in {:?} (the first certificate of the chain file must be the key's own)",
                    files.chain.display().to_string()
                ),
                other => format!(
                    "this private key cannot be used with the certificate in {:?}: {other}",
                    files.chain.display().to_string()
                ),
            })
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

/// Reads every certificate of a PEM file, leaf first; `written` is where
/// the config names it, and by which key.
pub fn read_chain(
    path: &Path,
    written: Option<(WrittenAt, &'static str)>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
        written: written.clone(),
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| fail(format!("cannot read: {}", pem_error(&error))))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(format!("bad PEM: {}", pem_error(&error))))?;
    if chain.is_empty() {
        return Err(fail(
            "holds no certificate (no -----BEGIN CERTIFICATE----- block)".into(),
        ));
    }
    Ok(chain)
}

/// Why a key file gave no key, in words.
fn unreadable_key(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "holds no private key (no -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)"
                .to_string()
        }
        other => format!("no private key read: {}", pem_error(other)),
    }
}

/// A PEM reading error, without the I/O error's wrapping.
fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(error) => error.to_string(),
        other => other.to_string(),
    }
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
