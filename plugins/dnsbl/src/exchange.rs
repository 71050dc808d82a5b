//! One A query straight to a single name server, over hickory's own UDP
//! client stream.
//!
//! hickory-resolver's lookup goes through its name server pool, its
//! caching client and its retry layer before the UDP exchange: a third of
//! doorman's CPU for a new client with one DNSBL site (perf, see
//! bench/README.md). With one name server, the usual setup (a local
//! rbldnsd or caching resolver), none of that has work to do: there is no
//! server to choose, and the gates cache answers themselves. [`Direct`]
//! sends the query with hickory's `UdpClientStream`, which keeps hickory's
//! checks of each answer (source address and port, ID, question) and its
//! retransmission, over the reused sockets of [`SocketReuse`]. A truncated
//! answer, or several name servers, go to the full resolver.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::DnsRequestSender;
use hickory_resolver::proto::op::{DnsRequest, DnsRequestOptions, DnsResponse, Query};
use hickory_resolver::proto::rr::{Name, RecordType};

use crate::socket_reuse::SocketReuse;

/// What one direct query came to.
#[derive(Debug)]
pub enum Exchanged {
    /// The server's answer, whole.
    Answer(DnsResponse),
    /// The answer did not fit a datagram: ask over TCP.
    Truncated,
    /// No answer: a timeout, an unreachable server, a malformed name.
    Failed(String),
}

/// Queries one name server directly.
#[derive(Clone)]
pub struct Direct {
    server: SocketAddr,
    provider: SocketReuse,
    timeout: Duration,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("server", &self.server)
            .finish()
    }
}

impl Direct {
    /// A direct path to `server`, each query within `timeout`.
    pub fn new(server: SocketAddr, provider: SocketReuse, timeout: Duration) -> Self {
        Self {
            server,
            provider,
            timeout,
        }
    }

    /// Asks for the A records of `name` (fully qualified).
    pub async fn query_a(&self, name: &str) -> Exchanged {
        let name = match Name::from_ascii(name) {
            Ok(name) => name,
            Err(error) => return Exchanged::Failed(error.to_string()),
        };
        let request = DnsRequest::from_query(
            Query::query(name, RecordType::A),
            DnsRequestOptions::default(),
        );
        let mut stream = UdpClientStream::builder(self.server, self.provider.clone())
            .with_timeout(Some(self.timeout))
            .build();
        match stream.send_message(request).next().await {
            Some(Ok(response)) if response.metadata.truncation => Exchanged::Truncated,
            Some(Ok(response)) => Exchanged::Answer(response),
            Some(Err(error)) => Exchanged::Failed(error.to_string()),
            None => Exchanged::Failed("no answer".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::{Message, ResponseCode};
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::{RData, Record};
    use tokio::net::UdpSocket;

    /// A name server that answers one query with `answer(query)`.
    async fn serve_one(server: UdpSocket, answer: impl Fn(&Message) -> Message) {
        let mut buf = [0u8; 512];
        let (len, from) = server.recv_from(&mut buf).await.unwrap();
        let query = Message::from_vec(&buf[..len]).unwrap();
        let reply = answer(&query).to_vec().unwrap();
        server.send_to(&reply, from).await.unwrap();
    }

    fn reply(query: &Message) -> Message {
        let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
        reply.queries = query.queries.clone();
        reply
    }

    async fn direct() -> (Direct, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = server.local_addr().unwrap();
        let direct = Direct::new(address, SocketReuse::default(), Duration::from_secs(2));
        (direct, server)
    }

    #[tokio::test]
    async fn an_answer_comes_back_whole() {
        let (direct, server) = direct().await;
        let served = tokio::spawn(serve_one(server, |query| {
            let mut reply = reply(query);
            let name = query.queries[0].name().clone();
            reply.answers.push(Record::from_rdata(
                name,
                300,
                RData::A(A::new(127, 0, 0, 2)),
            ));
            reply
        }));
        let Exchanged::Answer(response) = direct.query_a("2.0.0.127.bl.test.").await else {
            panic!("no answer");
        };
        served.await.unwrap();
        assert_eq!(response.answers.len(), 1);
        assert_eq!(response.answers[0].ttl, 300);
    }

    #[tokio::test]
    async fn a_truncated_answer_is_told_apart() {
        let (direct, server) = direct().await;
        let served = tokio::spawn(serve_one(server, |query| {
            let mut reply = reply(query);
            reply.metadata.truncation = true;
            reply
        }));
        let exchanged = direct.query_a("2.0.0.127.bl.test.").await;
        served.await.unwrap();
        assert!(matches!(exchanged, Exchanged::Truncated), "{exchanged:?}");
    }

    #[tokio::test]
    async fn an_answer_to_another_question_is_ignored() {
        let (direct, server) = direct().await;
        let served = tokio::spawn(serve_one(server, |query| {
            let mut reply = reply(query);
            reply.queries[0].name = Name::from_ascii("9.9.9.9.bl.test.").unwrap();
            reply.metadata.response_code = ResponseCode::NoError;
            reply
        }));
        let direct = Direct {
            timeout: Duration::from_millis(300),
            ..direct
        };
        let exchanged = direct.query_a("2.0.0.127.bl.test.").await;
        served.await.unwrap();
        assert!(matches!(exchanged, Exchanged::Failed(_)), "{exchanged:?}");
    }
}
