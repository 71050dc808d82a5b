//! STARTTLS to a backend: the client side of the second TLS session.
//!
//! By default the backend's certificate is not verified, as Postfix's
//! `smtp_tls_security_level = may` does not: the backend is doorman's own
//! smtpd on a network the operator runs. `tls_verify = true` verifies it
//! against `tls_ca_file` for `tls_server_name`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::certificates::read_chain;
use super::TlsError;
use crate::config::BackendConfig;

/// How doorman starts TLS with one backend.
#[derive(Clone)]
pub struct BackendTlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for BackendTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendTlsClient({:?})", self.name)
    }
}

impl BackendTlsClient {
    /// The TLS client for `backend`'s settings.
    pub fn new(backend: &BackendConfig) -> Result<Self, TlsError> {
        let roots = match (&backend.tls_ca_file, backend.tls_verify) {
            (Some(ca_file), true) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_chain(ca_file, None)? {
                    roots.add(certificate).map_err(|error| TlsError::File {
                        path: ca_file.clone(),
                        message: format!("bad CA certificate: {error}"),
                        written: None,
                    })?;
                }
                Some(roots)
            }
            _ => None,
        };
        let config = client_config(roots)?;
        let name = backend
            .tls_server_name
            .clone()
            .unwrap_or_else(|| backend.address.ip().to_string());
        let name = ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName {
            backend: backend.address,
            name,
        })?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// Runs the client handshake on `stream`.
    pub async fn connect<S>(&self, stream: S) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector.connect(self.name.clone(), stream).await
    }
}

/// A TLS client config: verifying against `roots`, or, without them,
/// accepting any certificate (the handshake's signatures are still
/// checked).
pub fn client_config(roots: Option<RootCertStore>) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(super::suites::doorman_order());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    Ok(match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    })
}

/// A verifier that accepts any certificate (checking the handshake's
/// signatures), for clients of doorman's own: the load generator.
pub fn any_certificate() -> Arc<dyn ServerCertVerifier> {
    Arc::new(Unverified(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    )))
}

/// Accepts any certificate, but still checks the handshake's signatures,
/// so the session is bound to the key the backend showed.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
