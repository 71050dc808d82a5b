//! The `doorman` command: CLI, logging, config load, runtime, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use doorman::config::{Config, LogSection};
use doorman::listener::Server;
use doorman::logfmt;

#[path = "cli/cache.rs"]
mod cache_cli;
use cache_cli::{cache_command, CacheAction};

/// An SMTP front door: PROXY protocol from HAProxy, postscreen-style
/// screening, handoff to real smtpd backends.
#[derive(Debug, Parser)]
#[command(
    name = "doorman",
    version,
    about,
    after_long_help = "The configuration is described in doorman.toml(5); the package installs it as /etc/doorman/doorman.toml, with haproxy_hosts and access beside it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run doorman in the foreground, logging to stderr.
    Run {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the config and every file it names; exit 1 with FILE:LINE on error.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the access list match, each DNSBL answer, the score and the verdict for an address.
    Explain {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The client address.
        ip: std::net::IpAddr,
        /// Also show which backend this recipient's user goes to, in each cluster balanced by recipient.
        #[arg(long)]
        rcpt: Option<String>,
    },
    /// Ask HAProxy (through the agent check) for no new clients: live ones finish.
    Drain {
        /// The config file (its [admin] address is asked).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Take new clients again after `doorman drain`.
    Undrain {
        /// The config file (its [admin] address is asked).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show or change the backends at runtime (for the whole fleet when it shares Redis).
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Show or move a user's backend, in a cluster balanced by recipient (for the whole fleet when it shares Redis).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Look into the pass cache of the store the config names.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Run a small SMTP sink that logs every message (for trials and benchmarks).
    Sink {
        /// The address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Require a PROXY v1/v2 header on every connection, and log the client it names.
        #[arg(long)]
        proxy: bool,
        /// Announce XCLIENT and take the client it names (as an smtpd that authorises doorman), for an XCLIENT backend.
        #[arg(long, conflicts_with = "proxy")]
        xclient: bool,
        /// The name in the sink's replies.
        #[arg(long, default_value = "sink.localhost")]
        hostname: String,
    },
    /// Write the man pages (doorman(8), one per subcommand) and the bash and zsh completions into DIR (for packagers).
    #[command(hide = true)]
    Generate {
        /// The folder to write the `.8` pages, `doorman.bash` and `_doorman` into.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UserAction {
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

#[derive(Debug, Subcommand)]
enum BackendAction {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Explain { .. }) {
        // The commands other than `run` log to stderr in the default layout,
        // under their own name (`explain` logs nothing: it writes a report,
        // and its gates' lines would read as a running doorman's).
        let _ = logfmt::init(&LogSection {
            syslog_tag: "doorman".to_string(),
            ..LogSection::default()
        });
    }
    let result = match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(loaded) => {
                match doorman::tls::check(&loaded) {
                    Ok(warnings) => {
                        for warning in warnings {
                            eprintln!("warning: {warning}");
                        }
                    }
                    Err(error) => {
                        eprintln!("{error}");
                        return ExitCode::from(1);
                    }
                }
                println!(
                    "{}: ok ({} listeners, {} backends, {} proxy hosts)",
                    config.display(),
                    loaded.listeners.len(),
                    loaded.backends.len(),
                    loaded.proxy_hosts.len()
                );
                Ok(())
            }
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::from(1);
            }
        },
        Command::Run { config } => run(config),
        Command::Drain { config } => control(&config, "/drain"),
        Command::Undrain { config } => control(&config, "/undrain"),
        Command::Cache { action } => cache_command(action),
        Command::User { action } => user_command(action),
        Command::Backend { action } => backend_command(action),
        Command::Explain { config, ip, rcpt } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|loaded| {
                let report = runtime()?.block_on(doorman::explain::explain(&loaded, ip))?;
                print!("{report}");
                if let Some(rcpt) = rcpt {
                    print!("{}", doorman::explain::recipient(&loaded, &rcpt));
                }
                Ok(())
            }),
        Command::Sink {
            listen,
            proxy,
            xclient,
            hostname,
        } => runtime().and_then(|rt| {
            let introduced = match (proxy, xclient) {
                (true, _) => doorman::sink::Introduced::Proxy,
                (_, true) => doorman::sink::Introduced::Xclient,
                _ => doorman::sink::Introduced::Not,
            };
            rt.block_on(doorman::sink::serve(listen, hostname, introduced))
                .context("sink")
        }),
        Command::Generate { dir } => generate(&dir),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("fatal: {error:#}");
            ExitCode::from(1)
        }
    };
    doorman::logbuffer::flush();
    code
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Err(error.into());
        }
    };
    logfmt::init(&config.log)?;
    let runtime = doorman::threads::Threads::new(&config.runtime)
        .main_runtime()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        server.serve(shutdown_signal()).await;
        Ok(())
    })
}

/// Sends a control request to the running doorman and prints its answer.
fn control(config: &std::path::Path, path: &str) -> anyhow::Result<()> {
    let loaded = Config::load(config)?;
    let (status, body) =
        runtime()?.block_on(doorman::admin::request(&loaded, hyper::Method::POST, path))?;
    print!("{body}");
    if !status.is_success() {
        anyhow::bail!("{path}: {status}");
    }
    Ok(())
}

/// `doorman backend ...`: a request to the running doorman's admin
/// listener; prints the backends (or the changed one).
fn backend_command(action: BackendAction) -> anyhow::Result<()> {
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
        } => (
            config,
            hyper::Method::POST,
            format!("/backends/{address}/weight?value={weight}"),
            false,
        ),
    };
    let loaded = Config::load(config)?;
    let (status, body) = runtime()?.block_on(doorman::admin::request(&loaded, method, &path))?;
    if !status.is_success() {
        anyhow::bail!("{path}: {status}: {}", body.trim());
    }
    if json {
        print!("{body}");
        return Ok(());
    }
    print!("{}", doorman::admin::backend_table(&body, &loaded)?);
    Ok(())
}

fn user_command(action: UserAction) -> anyhow::Result<()> {
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
    let path = match cluster {
        Some(cluster) => format!("{path}&cluster={}", encode(cluster)),
        None => path,
    };
    let loaded = Config::load(config)?;
    let (status, body) = runtime()?.block_on(doorman::admin::request(&loaded, method, &path))?;
    if !status.is_success() {
        anyhow::bail!("{}: {status}: {}", path, body.trim());
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

/// The runtime of the commands other than `run`.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!("cannot watch SIGTERM: {error}");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Writes doorman(8), a page per subcommand (`doorman-run(8)`, ...) and
/// the shell completions, from the CLI definition.
fn generate(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let command = Cli::command();
    write_pages(dir, &command, "doorman")?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
        clap_complete::generate_to(shell, &mut command.clone(), "doorman", dir)
            .with_context(|| format!("{shell} completions"))?;
    }
    Ok(())
}

/// Writes `name.8` for `command`, then the pages of its visible
/// subcommands as `name-sub.8`.
fn write_pages(dir: &std::path::Path, command: &clap::Command, name: &str) -> anyhow::Result<()> {
    let file = format!("{name}.8");
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone().name(name.to_string()))
        .section("8")
        .manual("System Manager's Manual")
        .render(&mut page)
        .with_context(|| file.clone())?;
    std::fs::write(dir.join(&file), page).with_context(|| file.clone())?;
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}
