//! doorman's integration tests, one binary: each module is one area, and
//! every test talks to doorman over real sockets on loopback, with the real
//! programs operators use (HAProxy, Postfix, rbldnsd, Redis, swaks, ...).
//! `support` holds the helpers every area shares.

mod support;

mod agent;
mod cache;
mod cli;
mod clusters;
mod conversation;
mod deep;
mod director;
mod dns_bounds;
mod dnsbl_rbldnsd;
mod doc_paths;
mod e2e_haproxy;
mod fail2ban;
mod front_door;
mod fuzz_inputs;
mod gate_api;
mod gating;
mod greylist;
mod log_sources;
mod lost_backend;
mod migrate;
mod network_limits;
mod operations;
mod operator;
mod parity;
mod policy;
mod pool;
mod proptests;
mod quickstart;
mod rdns;
mod recipients;
mod redis_link;
mod reference;
mod relay;
mod reload_flood;
mod rolling;
mod sentinel;
mod slow_store;
mod tls;
