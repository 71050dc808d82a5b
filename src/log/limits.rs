//! The lines of the connection limits and of stress mode, postscreen's and
//! smtpd's where they have one.

use std::net::SocketAddr;

use tracing::warn;

use super::Endpoint;

/// Stress mode began or ended (postscreen's lines).
pub fn stress(entering: bool, connections: usize) {
    warn!(
        "{} STRESS mode with {connections} connections",
        if entering { "entering" } else { "leaving" }
    );
}

/// Too many connections from one client (postscreen's line).
pub fn too_many_connections(client: SocketAddr) {
    warn!(
        "NOQUEUE: reject: CONNECT from {}: too many connections",
        Endpoint(client)
    );
}

/// All screening places are taken (postscreen's line, as its code writes it).
pub fn screening_busy(client: SocketAddr) {
    warn!(
        "reject: connect from {}: all screening ports busy",
        Endpoint(client)
    );
}

/// The client's network holds all the screening places it may.
pub fn network_screening_busy(client: SocketAddr, network: ipnet::IpNet) {
    warn!(
        "reject: connect from {}: all screening ports busy for network {network}",
        Endpoint(client)
    );
}

/// The client's network opened too many connections this minute (the line
/// Postfix's smtpd writes for anvil's rate limit, in its `name[addr]` form).
pub fn connection_rate_exceeded(client: SocketAddr, count: usize) {
    warn!(
        "warning: Connection rate limit exceeded: {count} from unknown[{}] for service smtp",
        client.ip()
    );
}

/// The client's wider network (`[limits] ipv4_aggregate_prefix`,
/// `ipv6_aggregate_prefix`) opened too many connections this minute:
/// smtpd's line, naming the network that was counted.
pub fn aggregate_rate_exceeded(client: SocketAddr, network: ipnet::IpNet, count: usize) {
    warn!(
        "warning: Connection rate limit exceeded: {count} from unknown[{}] for service smtp (network {network})",
        client.ip()
    );
}

/// The total connection cap is reached.
pub fn total_busy(client: SocketAddr) {
    warn!(
        "NOQUEUE: reject: CONNECT from {}: too many connections in total",
        Endpoint(client)
    );
}
