//! The resolver every DNS gate shares the settings of: the configured
//! name servers (or the system's), one attempt per query within the
//! timeout, no cache of its own (the gates cache answers with clamped
//! TTLs), no hosts file, and UDP sockets reused across queries
//! ([`SocketReuse`]).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig,
};

use crate::socket_reuse::SocketReuse;

/// The resolver the DNS gates use.
pub type Resolver = hickory_resolver::Resolver<SocketReuse>;

/// Why the resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverError(String);

/// A resolver asking `nameservers` (empty: the system's, from
/// `/etc/resolv.conf`), each query within `timeout`, over the sockets of
/// `provider` (which the caller keeps, to close its idle sockets after a
/// flood).
pub fn build(
    nameservers: &[SocketAddr],
    timeout: Duration,
    provider: SocketReuse,
) -> Result<Resolver, ResolverError> {
    let mut builder = if nameservers.is_empty() {
        Resolver::builder(provider).map_err(|e| ResolverError(e.to_string()))?
    } else {
        let servers = nameservers
            .iter()
            .map(|address| {
                let mut udp = ConnectionConfig::udp();
                udp.port = address.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = address.port();
                NameServerConfig::new(address.ip(), true, vec![udp, tcp])
            })
            .collect();
        Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let options = builder.options_mut();
    options.timeout = timeout;
    options.attempts = 1;
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.ndots = 0;
    builder.build().map_err(|e| ResolverError(e.to_string()))
}

/// The one name server a resolver built from `nameservers` would ask over
/// UDP, if it has exactly one: the configured one, or the system's only
/// one.
pub fn single_server(nameservers: &[SocketAddr]) -> Option<SocketAddr> {
    match nameservers {
        [one] => Some(*one),
        [] => {
            let (config, _) = hickory_resolver::system_conf::read_system_conf().ok()?;
            let mut udp = config.name_servers().iter().flat_map(|server| {
                server
                    .connections
                    .iter()
                    .filter(|connection| connection.protocol == ProtocolConfig::Udp)
                    .map(|connection| SocketAddr::new(server.ip, connection.port))
            });
            let first = udp.next()?;
            udp.next().is_none().then_some(first)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_configured_server_is_single() {
        let one: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let two: SocketAddr = "127.0.0.2:53".parse().unwrap();
        assert_eq!(single_server(&[one]), Some(one));
        assert_eq!(single_server(&[one, two]), None);
    }
}
