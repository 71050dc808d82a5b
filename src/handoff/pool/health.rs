//! The backends' health: the checks (all at once before doorman serves,
//! then each backend every `check_interval`), the rise/fall streaks, and
//! what a good check learns of a backend's EHLO.

use super::*;
use crate::smtp::response::{announces, keyword_name};

impl Pool {
    /// Checks every backend once, all at once, and takes the results as
    /// their states.
    pub async fn check_all(&self) {
        let mut checks = tokio::task::JoinSet::new();
        for backend in &self.backends {
            let backend = Arc::clone(backend);
            let hostname = self.hostname.clone();
            checks.spawn(async move {
                let healthy = match probe(&backend.config, &hostname).await {
                    Ok(found) => {
                        backend.learn(found);
                        true
                    }
                    Err(error) => {
                        log::backend_check_failed(backend.config.address, &error);
                        false
                    }
                };
                backend.healthy.store(healthy, Ordering::SeqCst);
                if !healthy {
                    log::backend_state(backend.config.address, false);
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }

    /// Starts the periodic checks; they stop when the pool is dropped.
    pub fn start_checks(self: &Arc<Self>) {
        for index in 0..self.backends.len() {
            let pool = Arc::downgrade(self);
            tokio::spawn(check_loop(pool, index, self.settings.check_interval));
        }
    }

    /// Whether a client of `cluster` may reach an XCLIENT backend, which
    /// trusts doorman's own address to speak for clients, so that doorman
    /// must read the conversation.
    pub fn trusts_doorman(&self, cluster: &str) -> bool {
        self.backends
            .iter()
            .any(|b| b.config.cluster == cluster && b.config.send_proxy == SendProxy::Xclient)
    }

    /// Whether `cluster`'s backends are in relay mode (`send_proxy =
    /// "received"`; a cluster is all relay mode or none of it).
    pub fn relays(&self, cluster: &str) -> bool {
        self.backends
            .iter()
            .any(|b| b.config.cluster == cluster && b.config.send_proxy == SendProxy::Received)
    }

    /// The EHLO keywords every usable backend of `cluster` announced at
    /// its last good check (SIZE with the smallest limit): what the engine
    /// may promise a client of that cluster, whichever backend it reaches.
    /// `None` until a check has read any.
    pub fn ehlo_keywords(&self, cluster: &str) -> Option<Vec<String>> {
        let known: Vec<Vec<String>> = self
            .backends
            .iter()
            .filter(|b| b.config.cluster == cluster && b.healthy.load(Ordering::SeqCst))
            .filter_map(|b| b.keywords.lock().ok().and_then(|k| k.clone()))
            .collect();
        let (first, rest) = known.split_first()?;
        Some(common_keywords(first, rest))
    }

    /// Counts a check result and changes the state after `rise`/`fall`.
    pub(super) fn record(&self, backend: &BackendState, success: bool) {
        let Ok(mut streak) = backend.streak.lock() else {
            return;
        };
        *streak = if success {
            (streak.0.saturating_add(1), 0)
        } else {
            (0, streak.1.saturating_add(1))
        };
        let healthy = backend.healthy.load(Ordering::SeqCst);
        if !healthy && streak.0 >= self.settings.rise {
            backend.healthy.store(true, Ordering::SeqCst);
            log::backend_state(backend.config.address, true);
        } else if healthy && streak.1 >= self.settings.fall {
            backend.healthy.store(false, Ordering::SeqCst);
            log::backend_state(backend.config.address, false);
        }
    }
}

impl BackendState {
    /// Takes what a good check learned: the EHLO keywords, and whether
    /// they announce STARTTLS.
    ///
    /// STARTTLS is pinned: a backend once seen announcing it keeps getting
    /// it (until `tls = "none"` says otherwise), so a probe that no longer
    /// sees it (a man in the middle, one failed EHLO) logs a warning and
    /// never sends a decrypted client's session on in clear text.
    fn learn(&self, keywords: Option<Vec<String>>) {
        let starttls = keywords
            .as_ref()
            .is_some_and(|keywords| announces(keywords, "STARTTLS"));
        if starttls {
            self.announces_starttls.store(true, Ordering::Relaxed);
        } else if self.announces_starttls.load(Ordering::Relaxed) && keywords.is_some() {
            log::backend_starttls_gone(self.config.address);
        }
        if let (Some(found), Ok(mut keywords)) = (keywords, self.keywords.lock()) {
            *keywords = Some(found);
        }
    }
}

/// The keywords of `first` that every one of `rest` announces too, by
/// their first word; SIZE keeps the smallest limit (0, no limit, counts as
/// the largest).
fn common_keywords(first: &[String], rest: &[Vec<String>]) -> Vec<String> {
    let word = |keyword: &str| keyword_name(keyword);
    let size = |keyword: &str| {
        keyword
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(u64::MAX)
    };
    first
        .iter()
        .filter_map(|keyword| {
            let name = word(keyword);
            let mut smallest = size(keyword);
            for other in rest {
                let same = other.iter().find(|k| word(k) == name)?;
                smallest = smallest.min(size(same));
            }
            Some(match name.as_str() {
                "SIZE" if smallest == u64::MAX => "SIZE".to_string(),
                "SIZE" => format!("SIZE {smallest}"),
                _ => keyword.clone(),
            })
        })
        .collect()
}

async fn check_loop(pool: Weak<Pool>, index: usize, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.retired.is_cancelled() {
            return;
        }
        let backend = Arc::clone(&pool.backends[index]);
        // Passive health, as HAProxy's `observe layer4`: a backend that
        // greeted a client within the interval is up, and is spared a
        // probe (and the probe's lines in its log).
        let served = backend.served.lock().ok().and_then(|served| *served);
        if served.is_some_and(|at| at.elapsed() < interval) {
            pool.record(&backend, true);
            continue;
        }
        let result = probe(&backend.config, &pool.hostname).await;
        match &result {
            Ok(Some(found)) => backend.learn(Some(found.clone())),
            Ok(None) => {}
            Err(error) => log::backend_check_failed(backend.config.address, error),
        }
        pool.record(&backend, result.is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::common_keywords;
    use crate::config::BackendConfig;
    use crate::handoff::pool::BackendState;

    #[test]
    fn a_backend_once_seen_with_starttls_keeps_getting_it() {
        let config: BackendConfig = toml::from_str("address = \"127.0.0.1:25\"").expect("config");
        let backend = BackendState::new(config, &Default::default()).expect("backend");
        assert!(!backend.takes_starttls());
        backend.learn(Some(vec!["PIPELINING".into(), "STARTTLS".into()]));
        assert!(backend.takes_starttls());
        // A probe without it (a stripped EHLO), or without an EHLO at all.
        backend.learn(Some(vec!["PIPELINING".into()]));
        backend.learn(None);
        assert!(backend.takes_starttls(), "pinned");
    }

    #[test]
    fn a_cluster_is_promised_only_what_every_backend_offers() {
        let list = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let a = list(&["PIPELINING", "SIZE 10240000", "8BITMIME", "CHUNKING"]);
        let b = list(&["size 5000000", "8BITMIME", "PIPELINING"]);
        let c = list(&["PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8"]);
        assert_eq!(
            common_keywords(&a, &[b.clone(), c.clone()]),
            list(&["PIPELINING", "SIZE 5000000", "8BITMIME"])
        );
        assert_eq!(common_keywords(&c, &[]), c);
        assert_eq!(common_keywords(&c, &[list(&[])]), list(&[]));
    }
}
