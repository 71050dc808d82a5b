//! SMTP, the parts doorman speaks itself.
//!
//! - [`line`]: the sans-IO command line reader, with its length cap: the
//!   one reader of a client's commands, in the engine and after the
//!   handoff.
//! - [`address`]: MAIL and RCPT paths, parsed as Postfix's smtpd parses
//!   them by default.
//! - [`body`]: the DATA body framer: where a message ends, and what a bare
//!   CR or LF in it becomes (SMTP smuggling).
//! - [`received`]: the `Received:` header doorman writes in relay mode,
//!   in Postfix's form.
//! - [`header_block`]: a relay-mode message's header block, held back and
//!   checked (hops, size) before the backend sees the message.
//! - [`reply`]: every reply a client can get from doorman itself, in one
//!   place, worded as postscreen and Haraka word them.
//! - [`engine`]: the sans-IO built-in engine that refuses every RCPT of a
//!   client under an `enforce` action, as postscreen's dummy engine does.
//! - [`response`]: the sans-IO reader of a backend's (multi-line) reply.
//! - [`health`]: the sans-IO dialogue for HAProxy's health checks.
//!
//! It is sans-IO: no socket and no deadline; it never reads the config.

pub mod address;
pub mod body;
pub mod engine;
pub mod header_block;
pub mod health;
pub mod line;
pub mod received;
pub mod reply;
pub mod response;
