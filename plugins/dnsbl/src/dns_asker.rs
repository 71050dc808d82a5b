//! Asking DNS for one query name's A records, within the timeout: the
//! single name server directly when there is one ([`Direct`]), else, or
//! for a truncated answer, the full resolver; the response read as an
//! [`Answer`] (its A records, or none with the negative-caching TTL of its
//! SOA, or its error code).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::{RData, Record};

use crate::exchange::{Direct, Exchanged};
use crate::resolver::{Resolver, ResolverError, Servers};
use crate::score::Answer;
use crate::socket_reuse::SocketReuse;

/// The DNS paths of a [`Dnsbl`](crate::Dnsbl): the resolver, and the
/// direct path when there is one name server.
pub(crate) struct DnsAsker {
    resolver: Resolver,
    /// The direct path, when there is one name server.
    direct: Option<Direct>,
    /// How long one query may take.
    timeout: Duration,
}

impl DnsAsker {
    /// Asks `nameservers` (empty: the system's) over `sockets`, each query
    /// within `timeout`.
    pub(crate) fn new(
        nameservers: &[SocketAddr],
        timeout: Duration,
        sockets: SocketReuse,
    ) -> Result<Self, ResolverError> {
        let servers = Servers::new(nameservers)?;
        let resolver = servers.resolver(timeout, sockets.clone())?;
        let direct = servers.single().map(|server| Direct::new(server, sockets));
        Ok(Self {
            resolver,
            direct,
            timeout,
        })
    }

    /// Asks DNS within the timeout: the single name server directly when
    /// there is one (the full resolver for a truncated answer), else the
    /// full resolver.
    pub(crate) async fn resolve(&self, name: &str) -> Answer {
        let lookup = async {
            if let Some(direct) = &self.direct {
                match direct.query_a(name).await {
                    Exchanged::Answer(response) => return answer_of(&response),
                    Exchanged::Failed(error) => return Answer::Failed { error },
                    Exchanged::Truncated => {}
                }
            }
            self.resolve_fully(name).await
        };
        tokio::time::timeout(self.timeout, lookup)
            .await
            .unwrap_or_else(|_| Answer::Failed {
                error: format!("timeout after {:?}", self.timeout),
            })
    }

    /// Asks hickory-resolver.
    async fn resolve_fully(&self, name: &str) -> Answer {
        match self.resolver.ipv4_lookup(name).await {
            Ok(lookup) => {
                let (addresses, ttl) = a_records(lookup.answers());
                Answer::from_addresses(addresses, ttl)
            }
            Err(error) if error.is_nx_domain() || error.is_no_records_found() => {
                let ttl = error
                    .into_soa()
                    .map_or(0, |soa| soa.ttl.min(soa.data.minimum));
                Answer::NotListed {
                    ttl: Duration::from_secs(u64::from(ttl)),
                }
            }
            Err(error) => Answer::Failed {
                error: error.to_string(),
            },
        }
    }
}

/// The answer a name server's response gives: its A records, or none (with
/// the negative-caching TTL of its SOA), or its error code.
fn answer_of(response: &Message) -> Answer {
    match response.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => {
            return Answer::Failed {
                error: format!("server answered {code}"),
            }
        }
    }
    let (addresses, ttl) = a_records(&response.answers);
    if addresses.is_empty() {
        let ttl = negative_ttl(response).unwrap_or(0);
        return Answer::NotListed {
            ttl: Duration::from_secs(u64::from(ttl)),
        };
    }
    Answer::from_addresses(addresses, ttl)
}

/// The A values among `records`, and their smallest TTL.
fn a_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> (Vec<Ipv4Addr>, Duration) {
    let mut ttl = u32::MAX;
    let mut addresses = Vec::new();
    for record in records {
        if let RData::A(a) = &record.data {
            addresses.push(a.0);
            ttl = ttl.min(record.ttl);
        }
    }
    (addresses, Duration::from_secs(u64::from(ttl)))
}

/// The negative-caching TTL of a response (RFC 2308): the smaller of its
/// SOA record's TTL and the SOA's minimum.
fn negative_ttl(response: &Message) -> Option<u32> {
    response
        .authorities
        .iter()
        .find_map(|record| match &record.data {
            RData::SOA(soa) => Some(record.ttl.min(soa.minimum)),
            _ => None,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::query::query_name;
    use hickory_resolver::proto::rr::rdata::A;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UdpSocket};

    /// A reply to `query`: truncated, or with the A record 127.0.0.2.
    pub(crate) fn reply(query: &[u8], truncated: bool) -> Vec<u8> {
        let query = Message::from_vec(query).unwrap();
        let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
        reply.queries = query.queries.clone();
        reply.metadata.truncation = truncated;
        if !truncated {
            let name = query.queries[0].name().clone();
            reply
                .answers
                .push(Record::from_rdata(name, 60, RData::A(A::new(127, 0, 0, 2))));
        }
        reply.to_vec().unwrap()
    }

    /// A name server whose UDP answers are all truncated and whose TCP
    /// answers are whole, on one port.
    async fn truncating_server() -> SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(address).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&reply(&buf[..len], true), from).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let mut length = [0u8; 2];
                stream.read_exact(&mut length).await.unwrap();
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                stream.read_exact(&mut query).await.unwrap();
                let answer = reply(&query, false);
                let length = u16::try_from(answer.len()).unwrap().to_be_bytes();
                stream.write_all(&length).await.unwrap();
                stream.write_all(&answer).await.unwrap();
            }
        });
        address
    }

    #[tokio::test]
    async fn a_truncated_answer_is_asked_again_over_tcp() {
        let server = truncating_server().await;
        let asker =
            DnsAsker::new(&[server], Duration::from_secs(5), SocketReuse::default()).unwrap();
        let name = query_name("192.0.2.7".parse().unwrap(), "bl.test");
        match asker.resolve(&name).await {
            Answer::Listed { addresses, .. } => {
                assert_eq!(addresses, ["127.0.0.2".parse::<Ipv4Addr>().unwrap()]);
            }
            other => panic!("not listed over TCP: {other:?}"),
        }
    }
}
