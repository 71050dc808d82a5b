//! Weighted DNSBL/DNSWL scoring, as postscreen's `postscreen_dnsbl_*`.
//!
//! - [`site`]: the `domain[=filter][*weight]` syntax and reply filters.
//! - [`query`]: query names (reversed octets, reversed nibbles for IPv6).
//! - [`score`]: answers, error codes, the sum of weights and the TTL.
//! - [`resolver`]: the resolver (name servers, timeout) DNS gates share.
//! - [`socket_reuse`]: its UDP sockets, reused across queries.
//! - [`exchange`]: one query straight to a single name server.
//! - [`lookup`]: the answer cache and concurrent queries.
//! - [`merge`]: lookups in flight, merged across clients and dropped with
//!   the last of them (the rdns gate's too).
//! - `dns_asker` (crate-private): one query name's A lookup, straight to the
//!   single name server or through the resolver, read as an answer.
//! - `pending` (crate-private; its [`Pending`] is re-exported): one address's
//!   answers as they arrive, the matching sites and the score.
//! - [`section`]: the `[dnsbl]` section, which builds the gate.
//! - [`gate`]: the gate: every site's lookup during the greet wait, its
//!   matches as weighted findings, which the core adds to the other gates'
//!   and judges against the thresholds.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod dns_asker;
pub mod exchange;
pub mod gate;
pub mod lookup;
pub mod merge;
mod pending;
pub mod query;
pub mod resolver;
pub mod score;
pub mod section;
pub mod site;
pub mod socket_reuse;

pub use gate::DnsblGate;
pub use lookup::{Dnsbl, Observer, Pending, ResolverError, Settings};
pub use score::{Answer, Score};
pub use section::DnsblSection;
pub use site::{Site, SiteError};
