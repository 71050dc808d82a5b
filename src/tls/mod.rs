//! TLS at the front door: STARTTLS in the built-in engine, and STARTTLS to
//! the backends that clients are replayed into.
//!
//! - [`certificates`]: the `[tls]` certificates, and the resolver that
//!   picks one by SNI and the client's signature schemes.
//! - [`channel`]: a socket before or after STARTTLS, read and written as
//!   one type.
//! - [`backend`]: the client side, for STARTTLS to a backend.
//! - [`suites`]: which cipher suite a client gets.
//! - [`summary`]: a session in Postfix's words (`TLSv1.3 with cipher ...`).
//! - [`validity`]: a certificate's validity period, and the warning when
//!   it is over, has not begun or ends soon.
//!
//! rustls does the protocol, with the aws-lc-rs crypto provider: no
//! OpenSSL is linked, it builds with the C compiler alone, and its RSA
//! signature, most of a handshake's CPU, takes 0.28 ms here against
//! *ring*'s 0.67 ms (RSA-2048).
//!
//! It reads the `[tls]` and backend keys of the config only; it never runs a
//! test.

pub mod backend;
pub mod certificates;
pub mod channel;
pub mod suites;
pub mod summary;
pub mod validity;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

pub use channel::Channel;
pub use summary::TlsSummary;

use crate::config::{TlsSection, TlsVersion, WrittenAt};
use certificates::{Certificate, Resolver};
use validity::Validity;

/// Why the TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file is missing, unreadable or wrong.
    #[error("{}", match written {
        Some((at, key)) => at.says(key, path, message),
        None => format!("{}: {message}", path.display()),
    })]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
        /// Where the config names it, and the key that does (`chain`,
        /// `key`), when known.
        written: Option<(WrittenAt, &'static str)>,
    },
    /// rustls refused the settings.
    #[error("tls: {0}")]
    Settings(#[from] rustls::Error),
    /// A backend's `tls_server_name` is neither a DNS name nor an address.
    #[error("backend {backend}: tls_server_name {name:?} is no DNS name or address")]
    ServerName {
        /// The backend.
        backend: std::net::SocketAddr,
        /// The name as configured.
        name: String,
    },
}

/// Why a client's handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// No handshake within `handshake_timeout`.
    #[error("timeout")]
    Timeout,
    /// The client closed the connection mid-handshake.
    #[error("lost connection")]
    Lost,
    /// The client sent something TLS refuses (rustls's words).
    #[error("{0}")]
    Refused(String),
}

impl HandshakeError {
    /// What smtpd logs after `SSL_accept error` when the client left or
    /// went silent: `lost connection`, `timeout`.
    pub fn smtpd_ended(&self) -> Option<&'static str> {
        match self {
            HandshakeError::Lost => Some("lost connection"),
            HandshakeError::Timeout => Some("timeout"),
            HandshakeError::Refused(_) => None,
        }
    }

    /// The metrics label of the failure.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::Lost => "lost",
            HandshakeError::Refused(_) => "refused",
        }
    }
}

/// The engine's side of STARTTLS: its certificates and limits.
#[derive(Clone)]
pub struct ServerTls {
    /// The config that picks the cipher suite in doorman's order.
    server_order: Arc<ServerConfig>,
    /// The same, honouring the client's order (see [`suites`]).
    client_order: Arc<ServerConfig>,
    timeout: Duration,
    /// Each certificate's chain file and its leaf's expiry (Unix time).
    expiries: Vec<(String, i64)>,
    /// The certificates out of their validity period, or near its end,
    /// when they were read.
    warnings: Vec<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls(timeout {:?})", self.timeout)
    }
}

impl ServerTls {
    /// Reads the certificates of `section` and builds the server side.
    pub fn load(section: &TlsSection) -> Result<Self, TlsError> {
        Self::with_certificates(section, load_certificates(section)?)
    }

    /// The server side of `section` with its certificates, already read.
    fn with_certificates(
        section: &TlsSection,
        certificates: Vec<Certificate>,
    ) -> Result<Self, TlsError> {
        let versions: &[&rustls::SupportedProtocolVersion] = match section.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let now = SystemTime::now();
        let warnings = certificates
            .iter()
            .filter_map(|certificate| validity_warning(certificate, now))
            .collect();
        let expiries = certificates
            .iter()
            .filter_map(|certificate| {
                let leaf = certificate.key.end_entity_cert().ok()?;
                let seconds = Validity::of(leaf)?
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs());
                Some((
                    certificate.chain_file.display().to_string(),
                    i64::try_from(seconds).unwrap_or(i64::MAX),
                ))
            })
            .collect();
        let mut config = ServerConfig::builder_with_provider(Arc::new(suites::doorman_order()))
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver::new(certificates)));
        // No session cache to hold (a mail server's sessions are mostly
        // one-off), but stateless TLS 1.3 tickets, sent as soon as the
        // client's Finished is read, as OpenSSL's servers send theirs:
        // that write is what lets a client that leaves Nagle's algorithm on
        // (Postfix's smtp client) send its EHLO without waiting for a
        // delayed ACK, and it gives resumption to clients that use it.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        config.send_tls13_tickets = 1;
        let mut server_order = config.clone();
        server_order.ignore_client_order = true;
        Ok(Self {
            client_order: Arc::new(config),
            server_order: Arc::new(server_order),
            timeout: section.handshake_timeout,
            expiries,
            warnings,
        })
    }

    /// The certificates that are expired, not valid yet, or expire within
    /// two weeks, one sentence each with the date (when they were read: at
    /// start-up, or at the reload that built this).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Each certificate's chain file and the Unix time its leaf expires,
    /// for the metrics.
    pub fn expiries(&self) -> &[(String, i64)] {
        &self.expiries
    }

    /// Runs the server handshake on `stream` within the handshake timeout.
    pub async fn accept<S>(
        &self,
        stream: S,
    ) -> Result<tokio_rustls::server::TlsStream<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            let start =
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            let config = match suites::client_prefers_chacha(start.client_hello().cipher_suites()) {
                true => &self.client_order,
                false => &self.server_order,
            };
            start.into_stream(Arc::clone(config)).await
        };
        match tokio::time::timeout(self.timeout, handshake).await {
            Err(_) => Err(HandshakeError::Timeout),
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(match error.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe => HandshakeError::Lost,
                _ => HandshakeError::Refused(error.to_string()),
            }),
        }
    }
}

/// `doorman check`'s TLS checks of `config`: every certificate pair and
/// backend CA file is loaded (an error fails the check), then the
/// warnings: certificates that expire soon or do not cover `hostname`,
/// and what STARTTLS costs when there is no `[tls]`.
pub fn check(config: &crate::config::Config) -> Result<Vec<String>, TlsError> {
    let mut found = config.deprecated.clone();
    if let Some(section) = &config.tls {
        let certificates = load_certificates(section)?;
        found.extend(warnings(&certificates, &config.hostname));
        ServerTls::with_certificates(section, certificates)?;
    }
    for backend in &config.backends {
        backend::BackendTlsClient::new(backend)?;
        if backend.tls_ca_file.is_some() && !backend.tls_verify {
            found.push(format!(
                "backend {}: tls_ca_file is set but tls_verify is off: its certificate is not checked",
                backend.address
            ));
        }
    }
    found.extend(config.starttls_warning());
    Ok(found)
}

/// Reads every certificate pair of `section`.
fn load_certificates(section: &TlsSection) -> Result<Vec<Certificate>, TlsError> {
    section.certificates.iter().map(Certificate::load).collect()
}

/// `doorman check`'s warnings about `certificates` (the first is the
/// default): one that is expired, not valid yet or expires within 14 days,
/// and one whose names do not cover `hostname`.
fn warnings(certificates: &[Certificate], hostname: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    let now = SystemTime::now();
    for (index, certificate) in certificates.iter().enumerate() {
        let file = certificate.chain_file.display();
        warnings.extend(validity_warning(certificate, now));
        if !certificate.covers(hostname) {
            let role = if index == 0 {
                "the default certificate, given to clients that name no other"
            } else {
                "served only to clients that ask for one of its names by SNI"
            };
            warnings.push(format!(
                "{file}: the certificate's names do not cover hostname {hostname:?} ({role})"
            ));
        }
    }
    warnings
}

/// The warning about `certificate`'s leaf at `now`, when it is out of its
/// validity period or near its end.
fn validity_warning(certificate: &Certificate, now: SystemTime) -> Option<String> {
    let leaf = certificate.key.end_entity_cert().ok()?;
    Validity::of(leaf)?.warning(&certificate.chain_file.display().to_string(), now)
}
