//! The `doorman` command: CLI, logging, config load, runtime, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use doorman::config::{Config, LogSection};
use doorman::listener::Server;
use doorman::logfmt;

#[path = "cli/admin.rs"]
mod admin_cli;
#[path = "cli/cache.rs"]
mod cache_cli;
#[path = "cli/config.rs"]
mod config_cli;
use admin_cli::{backend_command, control, user_command, BackendAction, UserAction};
use cache_cli::{cache_command, CacheAction};
use config_cli::{config_command, ConfigAction};

/// An SMTP front door: PROXY protocol from HAProxy, postscreen-style
/// screening, handoff to real smtpd backends.
#[derive(Debug, Parser)]
#[command(
    name = "doorman",
    version,
    about,
    after_long_help = "The configuration is described in doorman.toml(5), and `doorman config keys` prints its every key; the package installs it as /etc/doorman/doorman.toml, with haproxy_hosts and access beside it."
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
    /// Show what the config file may hold.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
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
    /// Print a doorman.toml made from another program's settings.
    Migrate {
        #[command(subcommand)]
        from: MigrateFrom,
    },
    /// Write the man pages (doorman(8), one per subcommand) and the bash and zsh completions into DIR (for packagers).
    #[command(hide = true)]
    Generate {
        /// The folder to write the `.8` pages, `doorman.bash` and `_doorman` into.
        dir: PathBuf,
    },
}

/// Where `doorman migrate` reads settings from.
#[derive(Debug, Subcommand)]
enum MigrateFrom {
    /// Postfix with postscreen: main.cf (or `postconf -n` output; `-` reads stdin) and master.cf.
    Postfix {
        /// main.cf, or a file holding `postconf -n` output; `-`: stdin.
        main_cf: PathBuf,
        /// master.cf, for the address postscreen listens on.
        master_cf: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Lines still in the stderr buffer go out before a panic's message (and
    // before the process goes down, when the panic ends it).
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        doorman::logbuffer::flush();
        report_panic(info);
    }));
    if !matches!(
        cli.command,
        Command::Run { .. }
            | Command::Explain { .. }
            | Command::Migrate { .. }
            | Command::Config { .. }
    ) {
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
        Command::Config { action } => config_command(action),
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
        Command::Migrate {
            from: MigrateFrom::Postfix { main_cf, master_cf },
        } => migrate_postfix(&main_cf, master_cf.as_deref()),
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
            // `explain` and `migrate` install no logging, nor does `run`
            // when its own could not start: the error goes to stderr.
            if tracing::dispatcher::has_been_set() {
                tracing::error!("fatal: {error:#}");
            } else {
                eprintln!("fatal: {error:#}");
            }
            ExitCode::from(1)
        }
    };
    doorman::logbuffer::flush();
    code
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    // Before logging starts: `main` writes the error to stderr.
    let config = Config::load(&path)?;
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

/// `doorman migrate postfix`: the translated config on stdout.
fn migrate_postfix(
    main_cf: &std::path::Path,
    master_cf: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let main = if main_cf.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("reading postconf -n output from stdin")?
    } else {
        std::fs::read_to_string(main_cf)
            .with_context(|| format!("{}: cannot read", main_cf.display()))?
    };
    let master = master_cf
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))
        })
        .transpose()?;
    print!(
        "{}",
        doorman::migrate::from_postfix(&main, master.as_deref())
    );
    Ok(())
}
