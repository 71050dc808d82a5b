//! `doorman cache`: look into the pass cache of the store a config names.

use std::path::PathBuf;

use clap::Subcommand;
use doorman::cache::PassCache;
use doorman::config::Config;

use super::runtime;

/// What `doorman cache` does.
#[derive(Debug, Subcommand)]
pub(crate) enum CacheAction {
    /// Show the passes of one address.
    Get {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The client address.
        ip: std::net::IpAddr,
    },
    /// Delete one address, so it is tested again.
    Delete {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The client address.
        ip: std::net::IpAddr,
    },
    /// Count the entries of the store.
    Stats {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Runs `doorman cache`.
pub(crate) fn cache_command(action: CacheAction) -> anyhow::Result<()> {
    let (CacheAction::Get { config, .. }
    | CacheAction::Delete { config, .. }
    | CacheAction::Stats { config }) = &action;
    let loaded = Config::load(config)?;
    runtime()?.block_on(async {
        let cache = PassCache::open_for_command(&loaded.cache).await?;
        match action {
            CacheAction::Get { ip, .. } => match cache.get(ip.to_canonical()).await {
                Some(entry) => println!("{}", doorman::cache::describe(ip, &entry)),
                None => println!("{ip}: not in the cache ({})", cache.name()),
            },
            CacheAction::Delete { ip, .. } => {
                let existed = cache.delete(ip.to_canonical()).await?;
                println!(
                    "{ip}: {} ({})",
                    if existed {
                        "deleted"
                    } else {
                        "was not in the cache"
                    },
                    cache.name()
                );
            }
            CacheAction::Stats { .. } => {
                let stats = cache.stats().await?;
                println!("store: {}\nentries: {}", stats.store, stats.entries);
            }
        }
        cache.close().await;
        Ok(())
    })
}
