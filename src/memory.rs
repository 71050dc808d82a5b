//! Gives the memory a flood used back to the system once the flood is over.
//!
//! glibc's malloc keeps what a burst of connections freed inside its arenas,
//! so without help doorman's RSS would stay at a flood's peak for good
//! (10,000 slowloris connections: about 30 MB that never goes back). Every
//! [`CHECK_INTERVAL`] a background task compares the live connection count
//! with the highest count since the last trim; once it has fallen to half
//! of that or less, by [`MIN_DROP`] connections or more, the caches that
//! grew during the flood are rebuilt in fresh memory (their entries were
//! scattered among the flood's connections and would keep those pages) and
//! glibc is asked to return its free pages (`malloc_trim(0)`, on the
//! blocking pool), and once more an interval later. A steady load never
//! triggers it. Elsewhere than glibc only the caches are rebuilt.
//!
//! It touches the gates' caches through the shared state only, and no
//! session.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::log;
use crate::shared::{ConfigState, ProcessState};

/// How often the connection count is looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The smallest fall in connections worth a trim.
pub const MIN_DROP: usize = 256;

/// Whether a fall from `peak` connections to `now` is worth a trim.
pub fn worth_trimming(peak: usize, now: usize) -> bool {
    peak >= now.saturating_add(MIN_DROP) && now <= peak / 2
}

/// Runs forever: compacts the caches and trims the heap after each flood.
pub async fn trim_after_floods(current: Arc<ArcSwap<ConfigState>>, process: ProcessState) {
    let mut peak = 0;
    let mut follow_up = false;
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        peak = peak.max(process.limits.take_peak());
        let now = process.limits.total();
        let flood_ended = worth_trimming(peak, now);
        if flood_ended || follow_up {
            let shared = current.load_full();
            let limits = Arc::clone(&process.limits);
            let compacted = tokio::task::spawn_blocking(move || {
                // A first trim merges the flood's free chunks, so the
                // rebuilt caches are laid out in few pages.
                release_free_pages();
                limits.compact();
                shared.cache.compact();
                shared.pipeline.compact();
                release_free_pages();
            });
            if compacted.await.is_ok() {
                log::memory_trimmed(peak, now);
            }
            // One more trim an interval later gives back what the sessions
            // still open at this one (and a reload's old state) freed since.
            follow_up = flood_ended;
            peak = now;
        }
    }
}

/// Asks glibc's malloc to give every free page back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_pages() {
    // SAFETY: malloc_trim takes no pointer, locks each arena itself and may
    // be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators give memory back by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_pages() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_that_ended_is_worth_a_trim() {
        assert!(worth_trimming(10_000, 0));
        assert!(worth_trimming(10_000, 5_000));
        assert!(worth_trimming(MIN_DROP, 0));
    }

    #[test]
    fn steady_load_and_small_falls_are_not() {
        assert!(!worth_trimming(10_000, 9_000), "still more than half");
        assert!(!worth_trimming(10_000, 5_001));
        assert!(!worth_trimming(MIN_DROP - 1, 0), "too small a fall");
        assert!(!worth_trimming(0, 0));
        assert!(!worth_trimming(0, usize::MAX));
    }
}
