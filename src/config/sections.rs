//! The config file's sections, as serde reads them, and their defaults
//! (postscreen's, where a setting is postscreen's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use doorman_gate_api::SectionError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bounds::{at_most, HumanDuration, DAY, FIVE_MINUTES, HOUR};
use super::defaults::*;

/// Whether a listener takes PROXY headers, and from whom.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// Listed hosts must send a PROXY header; other hosts speak SMTP directly
    /// (Haraka's rule).
    #[default]
    Optional,
    /// Only listed hosts may connect at all; others are closed at once.
    Required,
}

/// What doorman sends a backend before the client's bytes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SendProxy {
    /// A PROXY protocol v2 (binary) header.
    #[default]
    V2,
    /// A PROXY protocol v1 (text) line.
    V1,
    /// Postfix's XCLIENT command after the backend's greeting.
    Xclient,
    /// Nothing: the backend sees doorman as the client.
    None,
    /// Relay mode: nothing before the greeting; doorman reads every
    /// client's conversation, speaks its own EHLO, and writes a
    /// `Received:` header naming the client at the top of each message.
    Received,
}

/// How the pool picks a backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Weighted rotation.
    #[default]
    Roundrobin,
    /// Fewest active connections per unit of weight.
    Leastconn,
    /// A rendezvous hash of the client address.
    Source,
    /// A rendezvous hash of each transaction's first recipient, remembered
    /// per user (only in a `[cluster.NAME]` section).
    Recipient,
}

/// The `[pool]` section: balancing and active health checks.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// How a backend is picked: `roundrobin`, `leastconn` or `source`
    /// (`recipient` is set per cluster, in `[cluster.NAME]`).
    #[serde(default)]
    pub balance: Balance,
    /// Time between two health checks of a backend; above 0.
    #[serde(with = "humantime_serde", default = "default_check_interval")]
    #[schemars(with = "HumanDuration", transform = at_most(HOUR))]
    pub check_interval: Duration,
    /// Successful health checks that bring a down backend up.
    #[serde(default = "default_rise")]
    #[schemars(range(min = 1))]
    pub rise: u32,
    /// Failed health checks (or connects) that take an up backend down.
    #[serde(default = "default_fall")]
    #[schemars(range(min = 1))]
    pub fall: u32,
    /// How long `doorman backend flush` lets a backend's live sessions go
    /// on before it ends them.
    #[serde(with = "humantime_serde", default = "default_flush_grace")]
    #[schemars(with = "HumanDuration", transform = at_most(DAY))]
    pub flush_grace: Duration,
}

impl PoolSection {
    /// Checks the health checks' timing.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.balance == Balance::Recipient {
            return Err(SectionError::key(
                "balance",
                "balance = \"recipient\" is set per cluster, in a [cluster.NAME] section",
            ));
        }
        if self.check_interval.is_zero() || self.rise == 0 || self.fall == 0 {
            return Err(SectionError::key(
                "",
                "check_interval, rise and fall must be above 0",
            ));
        }
        SectionError::within("check_interval", self.check_interval, HOUR)?;
        SectionError::within("flush_grace", self.flush_grace, DAY)
    }
}

impl Default for PoolSection {
    fn default() -> Self {
        Self {
            balance: Balance::default(),
            check_interval: default_check_interval(),
            rise: default_rise(),
            fall: default_fall(),
            flush_grace: default_flush_grace(),
        }
    }
}

/// The `[proxy]` section.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// The `haproxy_hosts` file, relative to the config file's folder: one
    /// IP or CIDR a line, `#` comments, IPv4 and IPv6 (bracketed IPv6
    /// allowed; a bare IPv6 address is a /128, not Haraka's /64; ports are
    /// errors).
    pub hosts_file: Option<PathBuf>,
    /// How long a listed host may take to send its whole PROXY header,
    /// from the moment doorman has its connection (a `defer_accept`
    /// listener has a silent one about a second after its connect);
    /// above 0.
    #[serde(with = "humantime_serde", default = "default_proxy_timeout")]
    #[schemars(with = "HumanDuration", transform = at_most(FIVE_MINUTES))]
    pub timeout: Duration,
}

impl ProxySection {
    /// Checks the header timeout.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.timeout.is_zero() {
            return Err(SectionError::key(
                "timeout",
                "proxy timeout must be above 0",
            ));
        }
        SectionError::within("timeout", self.timeout, FIVE_MINUTES)
    }
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            hosts_file: None,
            timeout: default_proxy_timeout(),
        }
    }
}

/// One `[[listener]]`.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Where to listen; IPv6 as `"[::1]:2525"`; port 0 picks a free port.
    pub address: SocketAddr,
    /// Who may (or must) send a PROXY header here: `optional`: listed
    /// hosts must send PROXY, others speak SMTP; `required`: only listed
    /// hosts may connect.
    #[serde(default)]
    pub proxy: ProxyMode,
    /// With `proxy = "required"` only, on Linux: the kernel hands doorman a
    /// connection once its first bytes (behind HAProxy, the PROXY header)
    /// are in, not at its handshake (`TCP_DEFER_ACCEPT`, HAProxy's
    /// `defer-accept`); a connection that stays silent comes about a
    /// second later, and its PROXY timeout starts then.
    #[serde(default)]
    pub defer_accept: bool,
}

/// One `[[backend]]`.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// An smtpd to hand clients to; several are tried in order.
    pub address: SocketAddr,
    /// How the backend learns the real client: `v2`, `v1`, `xclient`,
    /// `none` or `received` (relay mode: doorman writes a `Received:`
    /// header naming the client).
    #[serde(default)]
    pub send_proxy: SendProxy,
    /// How long one connection attempt may take; above 0.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    #[schemars(with = "HumanDuration", transform = at_most(FIVE_MINUTES))]
    pub connect_timeout: Duration,
    /// Its share of clients relative to the other backends.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The most clients it takes at once; 0: no limit.
    #[serde(default)]
    pub max_connections: usize,
    /// The cluster it belongs to (`""` is the default cluster); balancing,
    /// health, limits and drain work per cluster.
    #[serde(default)]
    pub cluster: String,
    /// How a client whose TLS doorman terminated reaches it: `starttls` or
    /// `none` (plain text; a PROXY v2 header carries the client's TLS
    /// version and cipher).
    #[serde(default)]
    #[schemars(extend("x-default" = "`\"starttls\"` if its EHLO announces STARTTLS, else `\"none\"`"))]
    pub tls: Option<super::BackendTls>,
    /// Whether the backend's certificate is verified (against
    /// `tls_ca_file`, which it needs, for `tls_server_name`); off, as
    /// Postfix's `may`.
    #[serde(default)]
    pub tls_verify: bool,
    /// The CA certificates (PEM) that verify the backend's certificate.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The name the backend's certificate must hold, and the SNI sent.
    #[serde(default)]
    #[schemars(extend("x-default" = "its IP"))]
    pub tls_server_name: Option<String>,
}

impl BackendConfig {
    /// Checks the connect timeout.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.connect_timeout.is_zero() {
            return Err(SectionError::key(
                "connect_timeout",
                format!("backend {}: connect_timeout must be above 0", self.address),
            ));
        }
        SectionError::within("connect_timeout", self.connect_timeout, FIVE_MINUTES)
    }
}

/// A `[[route]]` as written: which clients go to a cluster.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A route picks a client's cluster by the address it connected to
    /// (the PROXY header's destination): a CIDR (`198.51.100.0/24`), an
    /// address, or an address with a port (`198.51.100.7:25`,
    /// `[2001:db8::7]:25`). The first matching route wins; no match is the
    /// default cluster.
    pub destination: Option<String>,
    /// A route picks a client's cluster by the listener it came in on (a
    /// route needs a `destination`, a `listener` or both).
    pub listener: Option<SocketAddr>,
    /// The cluster the route's clients go to (it needs a `[[backend]]`).
    pub cluster: String,
}

/// A checked `[[route]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RouteConfig")]
pub struct Route {
    /// The destination network, if the route names one.
    pub network: Option<ipnet::IpNet>,
    /// The destination port, if the route names one.
    pub port: Option<u16>,
    /// The listener, if the route names one.
    pub listener: Option<SocketAddr>,
    /// The cluster.
    pub cluster: String,
}

impl TryFrom<RouteConfig> for Route {
    type Error = String;

    fn try_from(config: RouteConfig) -> Result<Self, String> {
        let (network, port) = match &config.destination {
            None => (None, None),
            Some(text) => {
                if let Ok(address) = text.parse::<SocketAddr>() {
                    let ip = address.ip().to_canonical();
                    (Some(ipnet::IpNet::from(ip)), Some(address.port()))
                } else if let Ok(network) = text.parse::<ipnet::IpNet>() {
                    (Some(network.trunc()), None)
                } else if let Ok(ip) = text.parse::<std::net::IpAddr>() {
                    (Some(ipnet::IpNet::from(ip.to_canonical())), None)
                } else {
                    return Err(format!(
                        "route destination {text:?} is no CIDR, address or address:port"
                    ));
                }
            }
        };
        if network.is_none() && config.listener.is_none() {
            return Err("a route needs a destination or a listener".into());
        }
        Ok(Self {
            network,
            port,
            listener: config.listener,
            cluster: config.cluster,
        })
    }
}

impl Route {
    /// Whether a client that connected to `destination` on `listener`
    /// takes this route.
    pub fn matches(&self, destination: SocketAddr, listener: SocketAddr) -> bool {
        self.network
            .is_none_or(|network| network.contains(&destination.ip().to_canonical()))
            && self.port.is_none_or(|port| port == destination.port())
            && self.listener.is_none_or(|wanted| wanted == listener)
    }
}

/// The layout of log lines.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Syslog mail-log lines, as postscreen's.
    #[default]
    Postscreen,
    /// One JSON object per event.
    Json,
}

/// The `[log]` section.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// The layout of log lines: `postscreen` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// Send log lines to the local syslog socket instead of stderr.
    #[serde(default)]
    pub syslog: bool,
    /// The program name in each syslog line.
    #[serde(default = "default_syslog_tag")]
    pub syslog_tag: String,
    /// The syslog socket.
    #[serde(default = "default_syslog_socket")]
    pub syslog_socket: PathBuf,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            syslog: false,
            syslog_tag: default_syslog_tag(),
            syslog_socket: default_syslog_socket(),
        }
    }
}
