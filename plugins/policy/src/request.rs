//! The request Postfix's smtpd sends at RCPT, with what doorman knows.

use doorman_gate_api::{Client, Command};

use crate::protocol::attribute;

/// The attributes of a RCPT request, ended by the empty line. The
/// `encryption_*` ones describe the client's TLS session (empty and 0 in
/// plain text, as Postfix sends them). Attributes doorman does not know
/// (client certificates, SASL, the size before DATA) are sent empty,
/// as Postfix sends unknown values; `client_name` and
/// `reverse_client_name` come from the reverse-DNS gate, else `unknown`.
pub fn rcpt(client: &Client, command: &Command<'_>, instance: &str) -> String {
    let envelope = command.envelope;
    let mut request = String::with_capacity(512);
    let ip = client.ip();
    for (name, value) in [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", envelope.proto()),
        ("helo_name", envelope.helo.as_deref().unwrap_or_default()),
        ("queue_id", ""),
        ("sender", envelope.sender.as_deref().unwrap_or_default()),
        ("recipient", command.argument),
    ] {
        attribute(&mut request, name, value);
    }
    attribute(
        &mut request,
        "recipient_count",
        &envelope.recipients.len().to_string(),
    );
    attribute(&mut request, "client_address", &ip.to_string());
    attribute(&mut request, "client_name", envelope.names.client_name());
    attribute(
        &mut request,
        "reverse_client_name",
        envelope.names.reverse_client_name(),
    );
    attribute(&mut request, "instance", instance);
    for name in ["sasl_method", "sasl_username", "sasl_sender"] {
        attribute(&mut request, name, "");
    }
    attribute(&mut request, "size", "0");
    for name in [
        "ccert_subject",
        "ccert_issuer",
        "ccert_fingerprint",
        "ccert_pubkey_fingerprint",
    ] {
        attribute(&mut request, name, "");
    }
    let encryption = envelope.encryption.as_ref();
    attribute(
        &mut request,
        "encryption_protocol",
        encryption.map_or("", |tls| tls.protocol.as_str()),
    );
    attribute(
        &mut request,
        "encryption_cipher",
        encryption.map_or("", |tls| tls.cipher.as_str()),
    );
    attribute(
        &mut request,
        "encryption_keysize",
        &encryption.map_or(0, |tls| tls.keysize).to_string(),
    );
    attribute(&mut request, "etrn_domain", "");
    attribute(&mut request, "stress", "");
    attribute(
        &mut request,
        "client_port",
        &client.address.port().to_string(),
    );
    attribute(&mut request, "policy_context", "");
    attribute(
        &mut request,
        "server_address",
        &client.destination.ip().to_string(),
    );
    attribute(
        &mut request,
        "server_port",
        &client.destination.port().to_string(),
    );
    request.push('\n');
    request
}
