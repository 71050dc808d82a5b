//! doorman: an SMTP front door.
//!
//! doorman sits on port 25 behind HAProxy. It learns the real client address
//! from the PROXY protocol, screens the client the way Postfix's postscreen
//! does, and hands the clients that pass to real smtpd backends, which learn
//! the real client from a PROXY header of their own.
//!
//! # Module map
//! - [`config`]: the TOML config, the `haproxy_hosts` list, validation with
//!   `FILE:LINE` errors.
//! - [`listener`]: accept loops, SIGHUP reload, graceful shutdown.
//! - [`session`]: the one place where a client connection does I/O and
//!   waits; its phases are an enum.
//! - [`proxy`]: the sans-IO PROXY v1/v2 reader (over `ppp`) and the writer
//!   for headers sent to backends.
//! - [`screen`]: the sans-IO screening verdict (which tests failed, what
//!   that means).
//! - [`smtp`]: the sans-IO SMTP line reader, every client-visible reply, the
//!   health-check dialogue, the deep tests and the built-in engine.
//! - [`handoff`]: balancing, the backend pool with its health checks,
//!   XCLIENT, and the relay.
//! - [`cache`]: the pass cache (memory, redb file, Redis).
//! - [`limits`]: per-client, screening and total connection limits, and
//!   stress mode; [`memory`]: the heap given back after a flood (the one
//!   `unsafe` call, `malloc_trim`).
//! - [`shared`]: what the sessions of one config share, and what outlives a
//!   reload.
//! - [`admin`] and [`metrics`]: the HTTP admin listener (`/metrics`,
//!   `/healthz`) and the Prometheus metrics.
//! - [`log`]: the postscreen-compatible event lines; [`logfmt`]: where and
//!   how lines are written (syslog layout, JSON, the syslog socket).
//! - [`explain`]: `doorman explain`, the gates' findings for one address.
//! - [`sink`]: `doorman sink`, a small SMTP sink for trials and benchmarks.
//! - [`fuzzing`]: entry points of the fuzz targets and their replay tests.
//!
//! Gates implement the API of the `doorman-gate-api` crate under
//! `plugins/api`: the access list (`plugins/access`) and the DNSBL/DNSWL
//! gate (`plugins/dnsbl`).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod cache;
pub mod config;
pub mod explain;
pub mod fuzzing;
pub mod gates;
pub mod handoff;
pub mod limits;
pub mod listener;
pub mod log;
pub mod logfmt;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod screen;
pub mod session;
pub mod shared;
pub mod sink;
pub mod smtp;
