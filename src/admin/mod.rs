//! The admin listener: Prometheus `/metrics`, `/healthz`, and control
//! requests, over HTTP/1.1.
//!
//! `/healthz` answers 200 while some backend is up and takes new clients,
//! and 503 when none is up or every one is drained,
//! for load balancers that check over HTTP instead of SMTP. `POST /drain`
//! makes the agent check answer `drain` (HAProxy sends no new client) and
//! `POST /undrain` undoes it. Control requests are taken from the networks
//! in `[admin] trusted` (loopback by default), or from anywhere with
//! `Authorization: Bearer <token>` (the token of `[admin] token_file`);
//! any other gets 401, and the attempt is logged with the peer. Request
//! bodies are never read; what a connection may cost is bounded in
//! [`accept`] (how many at once, the size and time of a request's head,
//! how long a connection lives).
//!
//! It reads the running state (config, director, pool) and never touches a
//! session.

mod accept;
mod users;

pub use accept::{serve, MAX_CONNECTIONS};

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::director::{describe, Change};
use crate::handoff::{Availability, BackendStatus};
use crate::log::{self, Endpoint};
use crate::metrics::Live;
use crate::shared::{ConfigState, ProcessState};

/// Binds the admin listener.
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    bind_named(address, "admin").await
}

/// Binds `address` for one of doorman's own services; the error names it.
pub async fn bind_named(address: SocketAddr, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen on {address} ({what}): {error}"),
        )
    })
}

/// Whether a control request may change anything, or read users'
/// addresses: from a trusted network, or with the configured bearer token.
fn authorised(request: &Request<Incoming>, peer: SocketAddr, shared: &ConfigState) -> bool {
    let admin = &shared.config.admin;
    let ip = peer.ip().to_canonical();
    if admin.trusted.iter().any(|net| net.contains(&ip)) {
        return true;
    }
    let Some(token) = &shared.config.admin_token else {
        return false;
    };
    request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| {
            // In constant time, so the time a refusal takes tells nothing
            // of how much of the token was right.
            bool::from(subtle::ConstantTimeEq::ct_eq(
                given.trim().as_bytes(),
                token.as_bytes(),
            ))
        })
}

/// The answer to one request from `peer`.
async fn respond(
    request: Request<Incoming>,
    peer: SocketAddr,
    current: Arc<ArcSwap<ConfigState>>,
    process: ProcessState,
) -> Response<Full<Bytes>> {
    let shared = current.load_full();
    let path = request.uri().path();
    // Changes, and users' addresses (personal data), need authorisation.
    let private = request.method() == Method::POST || path.starts_with("/users");
    if private && !authorised(&request, peer, &shared) {
        log::admin_refused(peer, request.method().as_str(), path);
        return reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "unauthorised\n".into(),
        );
    }
    if let Some(rest) = path.strip_prefix("/users") {
        let (status, body) =
            users::users(request.method(), rest, request.uri().query(), peer, &shared).await;
        return reply(status, "application/json", body);
    }
    if let Some(rest) = path.strip_prefix("/backends") {
        let (status, body) = backends(
            request.method(),
            rest,
            request.uri().query(),
            peer,
            &shared,
            &process,
        )
        .await;
        return reply(status, "application/json", body);
    }
    let (status, content_type, body) = match (request.method(), path) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            process.metrics.render(&Live {
                backends: &shared.pool.status(),
                screening: process.limits.screening(),
                screening_limit: shared.config.limits.screening,
                store_up: shared.cache.store_up(),
                store_writes: shared.cache.write_stats(),
                certificates: shared.tls.as_ref().map_or(&[], |tls| tls.expiries()),
            }),
        ),
        (&Method::POST, "/drain") | (&Method::POST, "/undrain") => {
            let draining = path == "/drain";
            process.draining.store(draining, Ordering::SeqCst);
            log::agent_state(draining, &format!("{path} from {}", Endpoint(peer)));
            (
                StatusCode::OK,
                "text/plain",
                if draining { "drain\n" } else { "ready\n" }.to_string(),
            )
        }
        (&Method::GET, "/healthz") => match shared.pool.availability(None) {
            Availability::Ready => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Availability::Drained => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "every backend is drained\n".to_string(),
            ),
            Availability::Down => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no backend is up\n".to_string(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    reply(status, content_type, body)
}

/// `GET /backends`, and `POST /backends/ADDR/drain|undrain|flush|weight`:
/// the status and a JSON body.
async fn backends(
    method: &Method,
    rest: &str,
    query: Option<&str>,
    peer: SocketAddr,
    shared: &ConfigState,
    process: &ProcessState,
) -> (StatusCode, String) {
    let error = |status: StatusCode, message: &str| {
        (
            status,
            serde_json::json!({ "error": message }).to_string() + "\n",
        )
    };
    let statuses = shared.pool.status();
    if method == Method::GET && rest.is_empty() {
        let list: Vec<_> = statuses.iter().map(backend_json).collect();
        return (StatusCode::OK, serde_json::json!(list).to_string() + "\n");
    }
    if method != Method::POST {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let mut parts = rest.trim_start_matches('/').splitn(2, '/');
    let (Some(address), Some(verb)) = (parts.next(), parts.next()) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let Some(address) = address
        .parse::<SocketAddr>()
        .ok()
        .filter(|address| statuses.iter().any(|s| s.address == *address))
    else {
        return error(StatusCode::NOT_FOUND, "no such backend");
    };
    let change = match verb {
        "drain" => Change::Drain,
        "undrain" => Change::Undrain,
        "flush" => Change::Flush,
        "weight" => {
            let value = query
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("value=")))
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|v| *v <= MAX_WEIGHT);
            match value {
                Some(value) => Change::Weight(value),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "weight needs ?value=N with N from 0 to 1000",
                    )
                }
            }
        }
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    };
    let state = process
        .director
        .change(address, change, shared.config.pool.flush_grace)
        .await;
    log::backend_changed(address, verb, &describe(state), peer);
    let status = shared
        .pool
        .status()
        .into_iter()
        .find(|s| s.address == address);
    (
        StatusCode::OK,
        status.map_or_else(String::new, |s| backend_json(&s).to_string()) + "\n",
    )
}

/// The largest weight a backend may be given at runtime.
const MAX_WEIGHT: u32 = 1000;

fn backend_json(status: &BackendStatus) -> serde_json::Value {
    serde_json::json!({
        "address": status.address.to_string(),
        "cluster": status.cluster,
        "weight": status.weight,
        "up": status.healthy,
        "draining": status.draining,
        "sessions": status.active,
    })
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    response
}

/// Why a control request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The config names no `[admin] address`.
    #[error("the config has no [admin] address to send the request to")]
    NoAddress,
    /// The admin listener could not be reached or did not answer.
    #[error("cannot reach the running doorman's admin listener on {address} (its [admin] address): {message}")]
    Unreachable {
        /// Where it was asked.
        address: SocketAddr,
        /// What went wrong.
        message: String,
    },
}

/// Sends a control request (`POST /drain`, say) to the admin listener the
/// config names, with its token when it has one; the status and body.
pub async fn request(
    config: &crate::config::Config,
    method: Method,
    path: &str,
) -> Result<(StatusCode, String), AdminError> {
    let mut address = config.admin.address.ok_or(AdminError::NoAddress)?;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let fail = |message: String| AdminError::Unreachable { address, message };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", address.to_string());
        if let Some(token) = &config.admin_token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = builder
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| fail("no answer within 10s".into()))?
}

/// The backends of a `/backends` answer (a list, or one backend) as a
/// table, with where their runtime state is kept.
pub fn backend_table(
    body: &str,
    config: &crate::config::Config,
) -> Result<String, serde_json::Error> {
    use std::fmt::Write;
    let value: serde_json::Value = serde_json::from_str(body)?;
    let rows = match value {
        serde_json::Value::Array(rows) => rows,
        one => vec![one],
    };
    let mut out = format!(
        "{:<24} {:<10} {:>6} {:<5} {:<9} {:>8}\n",
        "backend", "cluster", "weight", "up", "draining", "sessions"
    );
    for row in &rows {
        let text = |key: &str| match &row[key] {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:>6} {:<5} {:<9} {:>8}",
            text("address"),
            if text("cluster").is_empty() {
                "-".to_string()
            } else {
                text("cluster")
            },
            text("weight"),
            text("up"),
            text("draining"),
            text("sessions")
        );
    }
    let kept = match config.cache.store {
        crate::config::CacheStore::Redis => {
            "shared by every doorman on the same Redis (applies within one check_interval)"
        }
        crate::config::CacheStore::Embedded => "this instance's, kept in its embedded store",
        crate::config::CacheStore::Memory => "this instance's, until it stops",
    };
    let _ = writeln!(out, "runtime state: {kept}");
    Ok(out)
}
