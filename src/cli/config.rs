//! `doorman config`: what the config file may hold.

use clap::Subcommand;
use doorman::config::{reference, Registry};

/// What `doorman config` does.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigAction {
    /// Print every config key with its default, bounds and meaning.
    ///
    /// The configuration reference as a markdown table, generated from the config types; `docs/configuration.md` and doorman.toml(5) hold the same table.
    Keys,
}

/// Runs `doorman config`.
pub(crate) fn config_command(action: ConfigAction) -> anyhow::Result<()> {
    match action {
        ConfigAction::Keys => {
            let rows = reference::rows(&Registry::standard())?;
            print!("{}", reference::markdown(&rows));
            Ok(())
        }
    }
}
