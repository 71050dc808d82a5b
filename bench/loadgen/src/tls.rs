//! S8's client side: EHLO, STARTTLS, a full TLS handshake with rustls (no
//! session resumption, the certificate not verified), EHLO, QUIT.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A connector that resumes no session, accepts any certificate
/// (doorman's own client for unverified backends) and offers X25519 alone,
/// as the OpenSSL of the Postfix anchors does.
pub fn connector() -> TlsConnector {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .kx_groups
        .retain(|group| group.name() == rustls::NamedGroup::X25519);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("the provider's versions")
        .dangerous()
        .with_custom_certificate_verifier(doorman::tls::backend::any_certificate())
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}
/// After the greeting: the TLS dialogue; true when it reached the 221.
pub async fn dialogue(
    mut stream: TcpStream,
    connector: &TlsConnector,
    hold: Duration,
    message: usize,
) -> anyhow::Result<bool> {
    stream.write_all(b"EHLO load.test\r\n").await?;
    reply(&mut stream).await?;
    stream.write_all(b"STARTTLS\r\n").await?;
    anyhow::ensure!(
        reply(&mut stream).await?.starts_with(b"220"),
        "no 220 to STARTTLS"
    );
    let name = ServerName::try_from("mx.bench.test")?;
    let mut tls = connector.connect(name, stream).await?;
    tls.write_all(b"EHLO load.test\r\n").await?;
    anyhow::ensure!(reply(&mut tls).await?.starts_with(b"250"), "no 250 to EHLO");
    if message > 0 {
        for command in [&b"MAIL FROM:<a@x.test>\r\n"[..], b"RCPT TO:<b@x.test>\r\n"] {
            tls.write_all(command).await?;
            anyhow::ensure!(reply(&mut tls).await?.starts_with(b"250"), "refused");
        }
        tls.write_all(b"DATA\r\n").await?;
        anyhow::ensure!(reply(&mut tls).await?.starts_with(b"354"), "no 354");
        let line = [b'x'; 78];
        let mut body = Vec::with_capacity(message + 128);
        body.extend_from_slice(b"Subject: load\r\n\r\n");
        while body.len() < message {
            body.extend_from_slice(&line);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".\r\n");
        tls.write_all(&body).await?;
        anyhow::ensure!(
            reply(&mut tls).await?.starts_with(b"250"),
            "message refused"
        );
    }
    tokio::time::sleep(hold).await;
    tls.write_all(b"QUIT\r\n").await?;
    Ok(reply(&mut tls).await?.starts_with(b"221"))
}

/// Reads one whole reply (its last line has a space after the code).
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> anyhow::Result<Vec<u8>> {
    let mut seen = Vec::with_capacity(256);
    let mut buffer = [0u8; 512];
    loop {
        let read = stream.read(&mut buffer).await?;
        anyhow::ensure!(read > 0, "closed before a reply");
        seen.extend_from_slice(&buffer[..read]);
        let last_start = seen[..seen.len().saturating_sub(2)]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        if seen.ends_with(b"\r\n") && seen.get(last_start + 3) == Some(&b' ') {
            return Ok(seen);
        }
    }
}
