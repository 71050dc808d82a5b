//! TLS for the tests: certificates made with openssl, and a blocking
//! rustls client that takes over a socket after `220 2.0.0 Ready to start
//! TLS`.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

/// A client's TLS session over its socket.
pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A key type for [`certificate`].
#[derive(Clone, Copy)]
pub enum Key {
    Rsa,
    Ecdsa,
}

/// Makes a self-signed certificate for `name` (CN and DNS name) valid for
/// `days`, in `dir` as `<file>.pem` and `<file>.key`.
pub fn certificate(dir: &Path, file: &str, name: &str, key: Key, days: u32) -> (PathBuf, PathBuf) {
    let (pem, private) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    let mut command = Command::new("openssl");
    command.args(["req", "-x509", "-nodes", "-days", &days.to_string()]);
    match key {
        Key::Rsa => command.args(["-newkey", "rsa:2048"]),
        Key::Ecdsa => command.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    };
    let made = command
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(&private)
        .arg("-out")
        .arg(&pem)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    (pem, private)
}

/// Makes a self-signed ECDSA certificate for `name` valid from `start` to
/// `end` (`YYYYMMDDHHMMSSZ`, in the past or the future: `openssl req
/// -days` cannot go back), in `dir` as `<file>.pem` and `<file>.key`, with
/// `openssl ca -selfsign`.
pub fn certificate_between(
    dir: &Path,
    file: &str,
    name: &str,
    start: &str,
    end: &str,
) -> (PathBuf, PathBuf) {
    let (pem, key, csr) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
        dir.join(format!("{file}.csr")),
    );
    let ca = dir.join(format!("{file}-ca"));
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::write(ca.join("index.txt"), "").unwrap();
    std::fs::write(ca.join("serial"), "01\n").unwrap();
    let settings = ca.join("ca.cnf");
    std::fs::write(
        &settings,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\n\
serial = {0}/serial\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n\
unique_subject = no\n[p]\ncommonName = supplied\n",
            ca.display()
        ),
    )
    .unwrap();
    let request = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:P-256"])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(request.status.success(), "{request:?}");
    let signed = Command::new("openssl")
        .args(["ca", "-batch", "-selfsign", "-notext", "-config"])
        .arg(&settings)
        .arg("-keyfile")
        .arg(&key)
        .arg("-in")
        .arg(&csr)
        .arg("-out")
        .arg(&pem)
        .args(["-startdate", start, "-enddate", end])
        .output()
        .unwrap();
    assert!(signed.status.success(), "{signed:?}");
    (pem, key)
}

/// Makes a CA and a leaf for `name` signed by it, in `dir`: the chain file
/// (leaf, then CA) as `<file>.pem`, the leaf's key as `<file>.key`.
pub fn chain(dir: &Path, file: &str, name: &str) -> (PathBuf, PathBuf) {
    let (ca, ca_key) = certificate(dir, &format!("{file}-ca"), "doorman test CA", Key::Rsa, 30);
    let (csr, key) = (
        dir.join(format!("{file}.csr")),
        dir.join(format!("{file}.key")),
    );
    let leaf = dir.join(format!("{file}-leaf.pem"));
    let extensions = dir.join(format!("{file}.ext"));
    std::fs::write(&extensions, format!("subjectAltName=DNS:{name}\n")).unwrap();
    for args in [
        vec!["req", "-new", "-nodes", "-newkey", "rsa:2048", "-subj"],
        vec!["x509", "-req", "-days", "30", "-CAcreateserial"],
    ] {
        let mut command = Command::new("openssl");
        command.args(&args);
        if args[0] == "req" {
            command
                .arg(format!("/CN={name}"))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr);
        } else {
            command
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&extensions)
                .arg("-out")
                .arg(&leaf);
        }
        let made = command.output().unwrap();
        assert!(made.status.success(), "{made:?}");
    }
    let pem = dir.join(format!("{file}.pem"));
    let mut text = std::fs::read(&leaf).unwrap();
    text.extend(std::fs::read(&ca).unwrap());
    std::fs::write(&pem, text).unwrap();
    (pem, key)
}

/// The `[tls]` section for the given (chain, key) pairs.
pub fn tls_section(pairs: &[(PathBuf, PathBuf)], extra: &str) -> String {
    let mut section = format!("[tls]\n{extra}\n");
    for (chain, key) in pairs {
        section.push_str(&format!(
            "[[tls.certificate]]\nchain = \"{}\"\nkey = \"{}\"\n",
            chain.display(),
            key.display()
        ));
    }
    section
}

/// Runs a TLS handshake on `stream` (which just read `220 2.0.0 Ready to
/// start TLS`), sending `sni` if given; the certificate is not verified.
pub fn start_tls(stream: TcpStream, sni: Option<&str>) -> Tls {
    let mut config = doorman::tls::backend::client_config(None).unwrap();
    config.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("mx.doorman.test").to_string()).unwrap();
    let mut connection = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut stream = stream;
    while connection.is_handshaking() {
        connection.complete_io(&mut stream).unwrap();
    }
    StreamOwned::new(connection, stream)
}

/// Writes `text` inside TLS.
pub fn say_tls(tls: &mut Tls, text: &str) {
    tls.write_all(text.as_bytes()).unwrap();
    tls.flush().unwrap();
}

/// Reads one whole reply inside TLS (see [`super::whole_reply`]).
pub fn reply_tls(tls: &mut Tls) -> String {
    super::whole_reply(tls)
}

/// The subject CN and serial of the leaf certificate the server showed.
pub fn peer_certificate(tls: &Tls) -> (String, String) {
    let certificates = tls.conn.peer_certificates().unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&certificates[0]).unwrap();
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    (cn, leaf.raw_serial_as_string())
}

/// `openssl s_client -starttls smtp` against `address`, with `args`; its
/// output (the chain and the session).
pub fn s_client(address: std::net::SocketAddr, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-starttls",
            "smtp",
            "-showcerts",
        ])
        .args(["-connect", &address.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Postfix smtpd that takes PROXY v2, delivers for doorman.test (into
/// discard) and offers STARTTLS at `level` (`may` or `encrypt`) with a
/// throwaway certificate for backend.postfix.test; the folder holds it.
pub fn postfix_with_tls(level: &str) -> Option<(super::Postfix, tempfile::TempDir)> {
    postfix_with_tls_and(level, "smtpd_upstream_proxy_protocol = haproxy\n")
}

/// As [`postfix_with_tls`], with `extra` main.cf lines instead of the PROXY
/// protocol.
pub fn postfix_with_tls_and(
    level: &str,
    extra: &str,
) -> Option<(super::Postfix, tempfile::TempDir)> {
    if !super::require_program("openssl") {
        return None;
    }
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(certs.path(), "backend", "backend.postfix.test", Key::Rsa, 2);
    // smtpd runs as the postfix user: let it read the throwaway key.
    for (path, mode) in [(certs.path(), 0o755), (key.as_path(), 0o644)] {
        let mut permissions = std::fs::metadata(path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, mode);
        std::fs::set_permissions(path, permissions).unwrap();
    }
    let postfix = super::Postfix::start_delivering(&format!(
        "{extra}smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_security_level = {level}\nsmtpd_tls_loglevel = 1\nrelay_domains = doorman.test\n",
        cert.display(),
        key.display()
    ))?;
    Some((postfix, certs))
}
