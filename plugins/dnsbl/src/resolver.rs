//! The resolver every DNS gate shares the settings of: the configured
//! name servers (or the system's), one attempt per query within the
//! timeout, no cache of its own (the gates cache answers with clamped
//! TTLs), no hosts file, and UDP sockets reused across queries
//! ([`SocketReuse`]).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};

use crate::socket_reuse::SocketReuse;

/// The resolver the DNS gates use.
pub type Resolver = hickory_resolver::Resolver<SocketReuse>;

/// Why the resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverError(String);

/// The name servers to ask, read once: the configured ones, or the
/// system's (`/etc/resolv.conf`, with its options).
#[derive(Debug)]
pub struct Servers {
    config: ResolverConfig,
    options: ResolverOpts,
}

impl Servers {
    /// `nameservers`, or the system's when it is empty.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, ResolverError> {
        if nameservers.is_empty() {
            let (config, options) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| ResolverError(e.to_string()))?;
            return Ok(Self { config, options });
        }
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
        Ok(Self {
            config: ResolverConfig::from_name_servers(servers),
            options: ResolverOpts::default(),
        })
    }

    /// The one server asked over UDP, if there is exactly one.
    pub fn single(&self) -> Option<SocketAddr> {
        let mut udp = self.config.name_servers().iter().flat_map(|server| {
            server
                .connections
                .iter()
                .filter(|connection| connection.protocol == ProtocolConfig::Udp)
                .map(|connection| SocketAddr::new(server.ip, connection.port))
        });
        let first = udp.next()?;
        udp.next().is_none().then_some(first)
    }

    /// A resolver asking these servers, each query within `timeout`, over
    /// the sockets of `provider` (which the caller keeps, to close its idle
    /// sockets after a flood).
    pub fn resolver(
        &self,
        timeout: Duration,
        provider: SocketReuse,
    ) -> Result<Resolver, ResolverError> {
        let mut builder = Resolver::builder_with_config(self.config.clone(), provider);
        let options = builder.options_mut();
        *options = self.options.clone();
        options.timeout = timeout;
        options.attempts = 1;
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.ndots = 0;
        builder.build().map_err(|e| ResolverError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_configured_server_is_single() {
        let one: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let two: SocketAddr = "127.0.0.2:53".parse().unwrap();
        assert_eq!(Servers::new(&[one]).unwrap().single(), Some(one));
        assert_eq!(Servers::new(&[one, two]).unwrap().single(), None);
    }
}
