//! The sections only a restart applies (`[[listener]]`, `[cache]`, `[log]`,
//! `[admin]`, `[runtime]`), kept as the process started with them, so that
//! a reload can say which of them the file now changes. It imports nothing
//! from the runtime.

use super::{AdminSection, CacheSection, Config, ListenerConfig, LogSection, RuntimeSection};

/// The sections only a restart applies, as the process started with them:
/// a reload compares the file with these, not with the previous reload's
/// file, so a change that was undone is no longer reported.
#[derive(Debug, PartialEq)]
pub struct RestartOnly {
    listeners: Vec<ListenerConfig>,
    cache: CacheSection,
    log: LogSection,
    admin: AdminSection,
    runtime: RuntimeSection,
}

impl RestartOnly {
    /// The restart-only sections of `config`.
    pub fn of(config: &Config) -> Self {
        Self {
            listeners: config.listeners.clone(),
            cache: config.cache.clone(),
            log: config.log.clone(),
            admin: config.admin.clone(),
            runtime: config.runtime.clone(),
        }
    }

    /// The sections of `config` that differ from these, by name.
    pub fn changed_in(&self, config: &Config) -> Vec<&'static str> {
        [
            ("[[listener]]", config.listeners != self.listeners),
            ("[cache]", config.cache != self.cache),
            ("[log]", config.log != self.log),
            ("[admin]", config.admin != self.admin),
            ("[runtime]", config.runtime != self.runtime),
        ]
        .into_iter()
        .filter_map(|(what, changed)| changed.then_some(what))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n[[backend]]\naddress = \"127.0.0.1:10026\"\n{extra}"
        );
        Config::parse(&text, Path::new("/nonexistent/doorman.toml")).expect("config")
    }

    #[test]
    fn a_change_is_judged_against_the_start_up_values() {
        let started = RestartOnly::of(&config("[cache]\nstore = \"memory\"\n"));
        let changed = config("[cache]\nstore = \"memory\"\nsize = 5\n[log]\nformat = \"json\"\n");
        assert_eq!(started.changed_in(&changed), ["[cache]", "[log]"]);
        // Back to what runs: nothing to restart for, whatever the previous
        // reload read.
        assert!(started
            .changed_in(&config("[cache]\nstore = \"memory\"\n"))
            .is_empty());
        // Other sections take effect at the reload.
        assert!(started
            .changed_in(&config(
                "[cache]\nstore = \"memory\"\n[greet]\nwait = \"2s\"\n"
            ))
            .is_empty());
    }
}
