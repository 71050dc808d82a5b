//! `GET /users?address=ADDR[&cluster=NAME]` and `POST
//! /users/move?address=ADDR&backend=BACKEND[&cluster=NAME]`: a user's
//! backend in a cluster balanced by recipient, and moving it (after
//! `doveadm director move`). Query values are percent-encoded. It reads and
//! writes only the users' assignments, through the pool.

use std::net::{Ipv4Addr, SocketAddr};

use doorman_gate_api::Client;
use hyper::{Method, StatusCode};
use percent_encoding::percent_decode_str;

use crate::handoff::users::UserRoute;
use crate::log::{self, Endpoint};
use crate::shared::ConfigState;

/// The value of `name` in a query string, percent-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .map(|value| percent_decode_str(value).decode_utf8_lossy().into_owned())
}

/// Answers a `/users` request: the status and a JSON body.
pub(super) async fn users(
    method: &Method,
    rest: &str,
    query: Option<&str>,
    peer: SocketAddr,
    shared: &ConfigState,
) -> (StatusCode, String) {
    let error = |status: StatusCode, message: &str| {
        (
            status,
            serde_json::json!({ "error": message }).to_string() + "\n",
        )
    };
    let Some(address) = query_value(query, "address") else {
        return error(StatusCode::BAD_REQUEST, "address=ADDR is needed");
    };
    let config = &shared.config;
    let routed: Vec<&String> = config.recipient_clusters().map(|(name, _)| name).collect();
    let cluster =
        match query_value(query, "cluster") {
            Some(cluster) => cluster,
            None if routed.len() == 1 => routed[0].clone(),
            None => return error(
                StatusCode::BAD_REQUEST,
                "cluster=NAME is needed: there is not exactly one cluster balanced by recipient",
            ),
        };
    let Some(section) = config.by_recipient(&cluster) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such cluster balanced by recipient",
        );
    };
    let user = section.key.of(&address);
    let route = UserRoute {
        cluster: &cluster,
        user: &user,
        expire: section.user_expire,
    };
    // The hash of a user does not depend on a client; this one stands for
    // the operator.
    let operator = Client {
        address: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        destination: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        tlvs: Vec::new(),
    };
    match (method, rest) {
        (&Method::GET, "") => {
            let (remembered, hashed) = shared.pool.user_lookup(&operator, &route).await;
            let backend = remembered.or(hashed);
            (
                StatusCode::OK,
                serde_json::json!({
                    "address": address,
                    "cluster": cluster,
                    "key": user,
                    "backend": backend.map(|b| b.to_string()),
                    "remembered": remembered.is_some(),
                })
                .to_string()
                    + "\n",
            )
        }
        (&Method::POST, "/move") => {
            let Some(backend) =
                query_value(query, "backend").and_then(|b| b.parse::<SocketAddr>().ok())
            else {
                return error(StatusCode::BAD_REQUEST, "backend=ADDR:PORT is needed");
            };
            if !shared.pool.move_user(&route, backend).await {
                return error(StatusCode::NOT_FOUND, "no such backend in the cluster");
            }
            log::user_moved_by(&user, backend, &Endpoint(peer).to_string());
            (
                StatusCode::OK,
                serde_json::json!({ "key": user, "backend": backend.to_string() }).to_string()
                    + "\n",
            )
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}
