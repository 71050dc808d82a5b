//! doorman: an SMTP front door.
//!
//! doorman sits on port 25 behind HAProxy. It learns the real client address
//! from the PROXY protocol, screens the client the way Postfix's postscreen
//! does, and hands the clients that pass to real smtpd backends, which learn
//! the real client from a PROXY header of their own.
//!
//! # Module map
//! - [`config`]: the TOML config, the `haproxy_hosts` list, validation with
//!   `FILE:LINE` errors; [`config::reference`]: the configuration reference
//!   (`doorman config keys`), generated from the section types' schemas.
//! - [`listener`]: accept loops, SIGHUP reload, graceful shutdown;
//!   [`threads`]: the serving threads, their runtimes and listening
//!   sockets (one per thread with `SO_REUSEPORT`, or one shared).
//! - [`session`]: the one place where a client connection does I/O and
//!   waits; its phases are an enum. The phases after the real client is
//!   known (the engine, the handoff) run over any [`session::ClientIo`]
//!   stream inside a [`tls::Channel`], plain or TLS, and are unit-tested
//!   over tokio's duplex streams. [`waiting_room`]: clients in the
//!   greet wait with nothing left to learn but whether they talk, parked
//!   without a task.
//! - [`proxy`]: the sans-IO PROXY v1/v2 reader (over `ppp`) and the writer
//!   for headers sent to backends.
//! - [`gates`]: the gate registry (names to constructors) and the
//!   pipeline the config's `gates` list orders.
//! - [`verdict`]: the sans-IO screening verdict (which tests failed, the
//!   gates' summed score against the thresholds, what that means).
//! - [`smtp`]: the sans-IO SMTP line reader, every client-visible reply, the
//!   health-check dialogue and the built-in engine.
//! - [`deep`]: postscreen's deep tests (sans-IO): one table that holds each
//!   test's names, default action, pass TTL and check of a line, the
//!   `[deep_tests]` section read from it, and a session's checks. Adding a
//!   deep test touches that table only.
//! - [`handoff`]: balancing, the backend pool with its health checks,
//!   XCLIENT, and the relay.
//! - [`cache`]: the pass cache (memory, redb file, Redis).
//! - [`migrate`]: a Postfix postscreen set-up as a doorman.toml (sans-IO).
//! - [`limits`]: per-client, screening and total connection limits, the
//!   connection rate at two network levels, and
//!   stress mode; [`memory`]: the heap given back after a flood (an
//!   `unsafe` call, `malloc_trim`; the others are [`listener`]'s, putting a
//!   listening socket it owns in the reactor, and [`threads`]'s, asking
//!   for `TCP_DEFER_ACCEPT`).
//! - [`shared`]: what the sessions of one config share, and what outlives a
//!   reload; [`director`]: the backends' runtime state (drain, weight,
//!   flush), shared by a fleet through Redis.
//! - [`admin`] and [`metrics`]: the HTTP admin listener (`/metrics`,
//!   `/healthz`, `POST /drain` and `/undrain`) and the Prometheus metrics;
//!   [`agent`]: HAProxy's agent check.
//! - [`log`]: the postscreen-compatible event lines; [`logfmt`]: where and
//!   how lines are written (syslog layout, JSON, the syslog socket);
//!   [`logbuffer`]: stderr lines written in batches by a thread of their
//!   own.
//! - [`explain`]: `doorman explain`, the gates' findings for one address.
//! - [`sink`]: `doorman sink`, a small SMTP sink for trials and benchmarks.
//! - [`tls`]: STARTTLS in the built-in engine (certificates by SNI, the
//!   channel that is plain or TLS) and STARTTLS to the backends.
//! - `fuzzing`: entry points of the fuzz targets and their replay tests,
//!   built only with the `fuzzing` feature (the fuzz crate and the
//!   integration tests turn it on).
//!
//! # The screening pipeline
//! A connection meets the gates in the order the config's `gates` lists
//! them (default `["access", "pregreet", "dnsbl", "deep"]`), at three
//! hooks of the `doorman-gate-api` crate's `Gate` trait:
//!
//! 1. **At connect** ([`gates::Pipeline::connect`]): each gate in turn, at
//!    once. A permit hands the client off; a refusal under `drop` ends it;
//!    other refusals are remembered for the verdict. Then the pass cache:
//!    a client whose every due gate still has a pass goes straight on.
//! 2. **During the greet wait** ([`gates::Waits`]): the teaser goes out,
//!    and every wait gate's lookups start at once, beside the pregreet
//!    watch. The wait ends at the deadline, or as soon as its verdict
//!    cannot change. [`verdict::Thresholds::judge`] adds every gate's
//!    weights into one score and judges it as postscreen judges its DNSBL
//!    score; a partial score never allowlists and is never remembered.
//! 3. **In the built-in engine's dialogue**: clients that failed a test,
//!    or have deep tests due, talk to the engine; each HELO/EHLO, MAIL and
//!    RCPT is put to the gates with the envelope so far, and a refusal is
//!    the reply to that command.
//!
//! [`session`] does the I/O, the deadlines and the replies, and names no
//! gate; `pregreet` and `deep` are the session's own tests (the teaser's
//! watch, the engine's line checks), listed and ordered like gates.
//!
//! # Writing a gate
//! A crate under `plugins/` that implements `doorman_gate_api::Gate` with
//! the hooks it needs and `doorman_gate_api::GateSection` for its own
//! config section (which derives `schemars::JsonSchema`, a doc comment on
//! every field: its rows of the configuration reference), and one line in [`config::Registry::standard`]; see the
//! [`gates`] module. The
//! gates doorman ships: the access list (`plugins/access`, at connect), the
//! DNSBL/DNSWL lookups (`plugins/dnsbl`, during the wait), reverse DNS
//! (`plugins/rdns`, during the wait), selective greylisting
//! (`plugins/greylist`, at RCPT, for doubtful clients) and Postfix policy
//! services (`plugins/policy`, at RCPT). An engine gate may ask for clients
//! in the engine (`Gate::needs_dialogue`); they are replayed into a backend
//! once a recipient is accepted, and the session reads their conversation
//! to its end, so every later MAIL and RCPT of every transaction still
//! meets the gates (`session::conversation`).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod agent;
pub mod cache;
pub mod config;
pub mod deep;
pub mod director;
pub mod explain;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gates;
pub mod handoff;
pub mod limits;
pub mod listener;
mod locks;
pub mod log;
pub mod logbuffer;
pub mod logfmt;
pub mod memory;
pub mod metrics;
pub mod migrate;
pub mod proxy;
pub mod session;
pub mod shared;
pub mod sink;
pub mod smtp;
pub mod threads;
pub mod tls;
pub mod verdict;
pub mod waiting_room;
