//! Locking a mutex whose holder may have panicked.
//!
//! The data behind doorman's own short locks (a byte buffer, a list of
//! arrivals) stays valid whatever a panicking holder left half done, so a
//! poisoned lock is taken as it is rather than spreading the panic.
//!
//! It imports nothing from the crate.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
