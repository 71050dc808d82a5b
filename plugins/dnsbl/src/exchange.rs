//! One A query straight to a single name server, over UDP.
//!
//! hickory-resolver's lookup goes through its name server pool, its
//! caching client, its retry layer and its UDP client stream: a third of
//! doorman's CPU for a new client with one DNSBL site (perf, see
//! bench/README.md). With one name server, the usual setup (a local
//! rbldnsd or caching resolver), the pool has no server to choose and the
//! gates cache answers themselves. [`Direct`] builds and reads the messages
//! with hickory-proto and does the exchange itself, with the checks
//! hickory's UDP client makes (RFC 5452): an answer counts only if it comes
//! from the server's address and port, carries the query's random ID, and
//! asks the query's question; anything else is ignored and the wait goes
//! on. The query is sent again every [`RESEND`] until the caller's timeout.
//! A truncated answer, or several name servers, go to the full resolver.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, Query};
use hickory_resolver::proto::rr::{Name, RecordType};

use crate::socket_reuse::{same_endpoint, SocketReuse};

/// How long one datagram may go unanswered before the query is sent again.
pub const RESEND: Duration = Duration::from_secs(1);

/// The UDP payload size advertised (EDNS), and the receive buffer's size:
/// hickory's default (the DNS flag day's 1232 bytes).
const PAYLOAD: u16 = 1232;

/// What one direct query came to.
#[derive(Debug)]
pub enum Exchanged {
    /// The server's answer.
    Answer(Message),
    /// The answer did not fit a datagram: ask over TCP.
    Truncated,
    /// No answer: an unreachable server, a socket error, a malformed name.
    Failed(String),
}

/// Queries one name server directly.
#[derive(Clone)]
pub struct Direct {
    server: SocketAddr,
    provider: SocketReuse,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("server", &self.server)
            .finish()
    }
}

impl Direct {
    /// A direct path to `server`, over the sockets of `provider`.
    pub fn new(server: SocketAddr, provider: SocketReuse) -> Self {
        Self { server, provider }
    }

    /// Asks for the A records of `name` (fully qualified), until an answer
    /// comes; the caller bounds the time.
    pub async fn query_a(&self, name: &str) -> Exchanged {
        let name = match Name::from_ascii(name) {
            Ok(name) => name,
            Err(error) => return Exchanged::Failed(error.to_string()),
        };
        let query = Query::query(name, RecordType::A);
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.queries.push(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(PAYLOAD);
        message.edns = Some(edns);
        let datagram = match message.to_vec() {
            Ok(datagram) => datagram,
            Err(error) => return Exchanged::Failed(error.to_string()),
        };
        let socket = match self.provider.lend(self.server) {
            Ok(socket) => socket,
            Err(error) => return Exchanged::Failed(error.to_string()),
        };
        let mut buffer = [0u8; PAYLOAD as usize];
        loop {
            if let Err(error) = socket.send(&datagram, self.server).await {
                return Exchanged::Failed(error.to_string());
            }
            let resend = tokio::time::sleep(RESEND);
            tokio::pin!(resend);
            loop {
                let (length, from) = tokio::select! {
                    received = socket.receive(&mut buffer) => match received {
                        Ok(received) => received,
                        Err(error) => return Exchanged::Failed(error.to_string()),
                    },
                    () = &mut resend => break,
                };
                if !same_endpoint(from, self.server) {
                    continue;
                }
                let Some(answer) = answer_to(&buffer[..length], message.metadata.id, &query) else {
                    continue;
                };
                socket.answered();
                if answer.metadata.truncation {
                    return Exchanged::Truncated;
                }
                return Exchanged::Answer(answer);
            }
        }
    }
}

/// The message in `datagram`, if it is the answer to `query` sent with
/// `id`: the ID is checked before anything is parsed.
fn answer_to(datagram: &[u8], id: u16, query: &Query) -> Option<Message> {
    let got = u16::from_be_bytes(*datagram.first_chunk::<2>()?);
    if got != id {
        return None;
    }
    let message = Message::from_vec(datagram).ok()?;
    let asked = message.metadata.message_type == MessageType::Response
        && message.queries.len() == 1
        && message.queries[0] == *query;
    asked.then_some(message)
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

    /// An answer listing the queried address as 127.0.0.2, for 300 s.
    fn listed(query: &Message) -> Message {
        let mut reply = reply(query);
        let name = query.queries[0].name().clone();
        reply.answers.push(Record::from_rdata(
            name,
            300,
            RData::A(A::new(127, 0, 0, 2)),
        ));
        reply
    }

    async fn direct() -> (Direct, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = server.local_addr().unwrap();
        let direct = Direct::new(address, SocketReuse::default());
        (direct, server)
    }

    #[tokio::test]
    async fn an_answer_comes_back_whole() {
        let (direct, server) = direct().await;
        let served = tokio::spawn(serve_one(server, listed));
        let Exchanged::Answer(response) = direct.query_a("2.0.0.127.bl.test.").await else {
            panic!("no answer");
        };
        served.await.unwrap();
        assert_eq!(response.answers.len(), 1);
        assert_eq!(response.answers[0].ttl, 300);
    }

    #[tokio::test]
    async fn forged_answers_are_ignored_and_the_real_one_taken() {
        let (direct, server) = direct().await;
        let decoy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let served = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (len, from) = server.recv_from(&mut buf).await.unwrap();
            let query = Message::from_vec(&buf[..len]).unwrap();
            // From another port, and with another ID: both ignored.
            let forged = listed(&query).to_vec().unwrap();
            decoy.send_to(&forged, from).await.unwrap();
            let mut wrong_id = listed(&query);
            wrong_id.metadata.id = query.metadata.id.wrapping_add(1);
            server
                .send_to(&wrong_id.to_vec().unwrap(), from)
                .await
                .unwrap();
            // The real answer: not listed.
            server
                .send_to(&reply(&query).to_vec().unwrap(), from)
                .await
                .unwrap();
        });
        let Exchanged::Answer(response) = direct.query_a("2.0.0.127.bl.test.").await else {
            panic!("no answer");
        };
        served.await.unwrap();
        assert!(response.answers.is_empty(), "a forged answer was taken");
    }

    #[tokio::test]
    async fn answered_queries_share_a_socket_and_unanswered_ones_do_not() {
        let (direct, server) = direct().await;
        let served = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut ports = Vec::new();
            for answer in [true, true, false, true] {
                let (len, from) = server.recv_from(&mut buf).await.unwrap();
                ports.push(from.port());
                if answer {
                    let query = Message::from_vec(&buf[..len]).unwrap();
                    server
                        .send_to(&reply(&query).to_vec().unwrap(), from)
                        .await
                        .unwrap();
                }
            }
            ports
        });
        for answered in [true, true, false, true] {
            let asked = tokio::time::timeout(
                Duration::from_millis(300),
                direct.query_a("2.0.0.127.bl.test."),
            )
            .await;
            assert_eq!(asked.is_ok(), answered);
        }
        let ports = served.await.unwrap();
        assert_eq!(ports[0], ports[1], "an answered socket was not reused");
        assert_eq!(ports[1], ports[2]);
        assert_ne!(
            ports[2], ports[3],
            "a socket whose query went unanswered was reused"
        );
    }

    #[tokio::test]
    async fn a_lost_query_is_sent_again() {
        let (direct, server) = direct().await;
        let served = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            // The first datagram is "lost".
            server.recv_from(&mut buf).await.unwrap();
            serve_one(server, reply).await;
        });
        let exchanged = tokio::time::timeout(RESEND * 3, direct.query_a("2.0.0.127.bl.test."))
            .await
            .expect("no answer after a resend");
        served.await.unwrap();
        assert!(matches!(exchanged, Exchanged::Answer(_)), "{exchanged:?}");
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
        let exchanged = tokio::time::timeout(
            Duration::from_millis(300),
            direct.query_a("2.0.0.127.bl.test."),
        )
        .await;
        served.await.unwrap();
        assert!(exchanged.is_err(), "{exchanged:?}");
    }
}
