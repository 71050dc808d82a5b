//! The commands that ask the running doorman's admin listener: `drain` and
//! `undrain`, `doorman backend ...` and `doorman user ...`. A refusal is
//! said as a sentence about what the operator asked for, never as the HTTP
//! request and status behind it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use doorman::config::Config;

use super::runtime;

/// The largest weight `doorman backend weight` gives (the admin listener's
/// bound too).
const MAX_WEIGHT: u32 = 1000;

/// What `doorman user` does.
#[derive(Debug, Subcommand)]
pub(crate) enum UserAction {
    /// The user's key, its backend, and whether that is remembered or fresh from the hash.
    Lookup {
        /// The config file (its [admin] address is asked).
        #[arg(long, short)]
        config: PathBuf,
        /// The cluster, when more than one is balanced by recipient.
        #[arg(long)]
        cluster: Option<String>,
        /// A recipient address of the user.
        address: String,
    },
    /// Send the user's next transaction to BACKEND, on every instance that shares the store.
    Move {
        /// The config file (its [admin] address is asked).
        #[arg(long, short)]
        config: PathBuf,
        /// The cluster, when more than one is balanced by recipient.
        #[arg(long)]
        cluster: Option<String>,
        /// A recipient address of the user.
        address: String,
        /// The backend, as the config names it.
        backend: SocketAddr,
    },
}

/// What `doorman backend` does.
#[derive(Debug, Subcommand)]
pub(crate) enum BackendAction {
    /// Each backend's address, cluster, weight, health, drain state and sessions.
    List {
        /// The config file (its [admin] address is asked).
        #[arg(long, short)]
        config: PathBuf,
        /// Print the JSON the admin listener gives.
        #[arg(long)]
        json: bool,
    },
    /// Give the backend no new clients; its live sessions finish.
    Drain {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The backend, as the config names it.
        address: SocketAddr,
    },
    /// Give the backend new clients again, at the weight an operator set (after weight 0, or none set: the config's).
    Undrain {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The backend.
        address: SocketAddr,
    },
    /// Drain the backend and end its live sessions after [pool] flush_grace.
    Flush {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The backend.
        address: SocketAddr,
    },
    /// Set the backend's share of clients (0 drains it).
    Weight {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The backend.
        address: SocketAddr,
        /// The weight, 0 to 1000.
        weight: u32,
    },
}

/// `doorman drain` (`path` = `/drain`) and `doorman undrain`: asks the
/// running doorman to tell HAProxy's agent check; prints its answer. A
/// drain with no agent listener would reach nobody, so it fails.
pub(crate) fn control(config: &Path, path: &str) -> anyhow::Result<()> {
    let loaded = Config::load(config)?;
    if path == "/drain" && loaded.admin.agent.is_none() {
        anyhow::bail!(
            "{} has no [admin] agent, so HAProxy cannot learn of a drain (it learns of it through its agent check): \
set agent = \"127.0.0.1:9777\" in [admin], add `agent-check agent-port 9777 agent-inter 1s` to doorman's \
server line in haproxy.cfg, and restart doorman",
            config.display()
        );
    }
    let (status, body) =
        runtime()?.block_on(doorman::admin::request(&loaded, hyper::Method::POST, path))?;
    if !status.is_success() {
        return Err(refused(status, &body, "the drain state was not changed"));
    }
    print!("{body}");
    Ok(())
}

/// `doorman backend ...`: a request to the running doorman's admin
/// listener; prints the backends (or the changed one).
pub(crate) fn backend_command(action: BackendAction) -> anyhow::Result<()> {
    let (config, method, path, json) = match &action {
        BackendAction::List { config, json } => {
            (config, hyper::Method::GET, "/backends".to_string(), *json)
        }
        BackendAction::Drain { config, address } => (
            config,
            hyper::Method::POST,
            format!("/backends/{address}/drain"),
            false,
        ),
        BackendAction::Undrain { config, address } => (
            config,
            hyper::Method::POST,
            format!("/backends/{address}/undrain"),
            false,
        ),
        BackendAction::Flush { config, address } => (
            config,
            hyper::Method::POST,
            format!("/backends/{address}/flush"),
            false,
        ),
        BackendAction::Weight {
            config,
            address,
            weight,
        } => {
            if *weight > MAX_WEIGHT {
                anyhow::bail!(
                    "weight {weight} is out of range: give a weight from 0 to {MAX_WEIGHT} (0 drains the backend)"
                );
            }
            (
                config,
                hyper::Method::POST,
                format!("/backends/{address}/weight?value={weight}"),
                false,
            )
        }
    };
    let loaded = Config::load(config)?;
    let (status, body) = runtime()?.block_on(doorman::admin::request(&loaded, method, &path))?;
    if !status.is_success() {
        let unknown = match &action {
            BackendAction::List { .. } => None,
            BackendAction::Drain { address, .. }
            | BackendAction::Undrain { address, .. }
            | BackendAction::Flush { address, .. }
            | BackendAction::Weight { address, .. } => Some(address),
        };
        return Err(match unknown {
            Some(address) if status == hyper::StatusCode::NOT_FOUND => anyhow::anyhow!(
                "{address} is not a backend of the running doorman (`doorman backend list --config {}` shows them)",
                config.display()
            ),
            _ => refused(status, &body, "nothing was changed"),
        });
    }
    if json {
        print!("{body}");
        return Ok(());
    }
    print!("{}", doorman::admin::backend_table(&body, &loaded)?);
    Ok(())
}

/// `doorman user ...`: a user's backend in a cluster balanced by recipient,
/// and moving it.
pub(crate) fn user_command(action: UserAction) -> anyhow::Result<()> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    let (config, cluster, method, path) = match &action {
        UserAction::Lookup {
            config,
            cluster,
            address,
        } => (
            config,
            cluster,
            hyper::Method::GET,
            format!("/users?address={}", encode(address)),
        ),
        UserAction::Move {
            config,
            cluster,
            address,
            backend,
        } => (
            config,
            cluster,
            hyper::Method::POST,
            format!(
                "/users/move?address={}&backend={}",
                encode(address),
                encode(&backend.to_string())
            ),
        ),
    };
    let loaded = Config::load(config)?;
    let cluster = recipient_cluster(&loaded, cluster.as_deref())?;
    let path = format!("{path}&cluster={}", encode(&cluster));
    let (status, body) = runtime()?.block_on(doorman::admin::request(&loaded, method, &path))?;
    if !status.is_success() {
        return Err(match &action {
            UserAction::Move { backend, .. } if status == hyper::StatusCode::NOT_FOUND => {
                let cluster = match cluster.as_str() {
                    "" => "the default cluster".to_string(),
                    name => format!("cluster {name:?}"),
                };
                anyhow::anyhow!("{backend} is not a backend of {cluster}: the user was not moved")
            }
            _ => refused(status, &body, "nothing was changed"),
        });
    }
    let answer: serde_json::Value =
        serde_json::from_str(&body).context("the admin listener's answer")?;
    let text = |key: &str| answer[key].as_str().unwrap_or("none").to_string();
    match action {
        UserAction::Lookup { address, .. } => println!(
            "{address}: user {} in cluster {:?} -> {} ({})",
            text("key"),
            text("cluster"),
            text("backend"),
            if answer["remembered"].as_bool() == Some(true) {
                "remembered"
            } else {
                "fresh: by the hash"
            }
        ),
        UserAction::Move { address, .. } => {
            println!("{address}: user {} -> {}", text("key"), text("backend"))
        }
    }
    Ok(())
}

/// The cluster balanced by recipient that `doorman user` works on:
/// `named` (`--cluster`), or the config's only one.
fn recipient_cluster(config: &Config, named: Option<&str>) -> anyhow::Result<String> {
    let routed: Vec<&String> = config.recipient_clusters().map(|(name, _)| name).collect();
    let show = |names: &[&String]| {
        names
            .iter()
            .map(|name| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (named, routed.as_slice()) {
        (_, []) => anyhow::bail!(
            "no cluster of {} is balanced by recipient, so users have no backend of their own: \
set balance = \"recipient\" in a [cluster.NAME] section (NAME being the cluster of its backends, \"\" for the default one)",
            config.path.display()
        ),
        (Some(name), _) if config.by_recipient(name).is_some() => Ok(name.to_string()),
        (Some(name), _) => anyhow::bail!(
            "cluster {name:?} is not balanced by recipient; the clusters that are: {}",
            show(&routed)
        ),
        (None, [only]) => Ok((*only).clone()),
        (None, _) => anyhow::bail!(
            "more than one cluster is balanced by recipient ({}): name one with --cluster",
            show(&routed)
        ),
    }
}

/// The admin listener refused a request: its own sentence (the `error` of
/// its JSON answer, or its text), and `unchanged`.
fn refused(status: hyper::StatusCode, body: &str, unchanged: &str) -> anyhow::Error {
    let said = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|answer| answer["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    match status {
        hyper::StatusCode::UNAUTHORIZED => anyhow::anyhow!(
            "the running doorman refused the request: this host is not in [admin] trusted and the config's token_file holds no token it takes; {unchanged}"
        ),
        _ if said.is_empty() => anyhow::anyhow!(
            "the running doorman refused the request ({}); {unchanged}",
            status.canonical_reason().unwrap_or("no reason given")
        ),
        _ => anyhow::anyhow!("the running doorman refused the request: {said}; {unchanged}"),
    }
}
