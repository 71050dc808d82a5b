//! The admin listener: Prometheus `/metrics` and `/healthz` over HTTP/1.1.
//!
//! `/healthz` answers 200 while some backend is up and 503 when none is,
//! for load balancers that check over HTTP instead of SMTP.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::log;
use crate::metrics::Metrics;
use crate::shared::Shared;

/// Binds the admin listener.
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(address).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen on {address} (admin): {error}"),
        )
    })?;
    log::admin_listening(listener.local_addr()?);
    Ok(listener)
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: TcpListener, current: Arc<ArcSwap<Shared>>, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let current = Arc::clone(&current);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &current, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    current: &ArcSwap<Shared>,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let shared = current.load();
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(&shared.pool.status()),
        ),
        (&Method::GET, "/healthz") if shared.pool.any_healthy() => {
            (StatusCode::OK, "text/plain", "ok\n".to_string())
        }
        (&Method::GET, "/healthz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no backend is up\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    response
}
