//! SMTP, the parts doorman speaks itself.
//!
//! - [`line`]: the sans-IO command line reader, with its length cap.
//! - [`reply`]: every reply a client can get from doorman itself, in one
//!   place, worded as postscreen and Haraka word them.
//! - [`health`]: the sans-IO dialogue for HAProxy's health checks.

pub mod health;
pub mod line;
pub mod reply;
