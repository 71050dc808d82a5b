//! The relayed commands that carry more than a line: DATA and its body,
//! BDAT and its chunk, and the AUTH exchange.

use super::command::Incoming;
use super::conversation::{end_transaction, Conversation, Judged, Next, END_OF_DATA_TIMEOUT};
use super::*;
use crate::smtp::body::{DataFramer, Framed};

impl<S: ClientIo> Session<Channel<S>> {
    /// DATA: the backend's go-ahead, then the body through the framer, so
    /// the backend sees the message end where doorman does and nowhere
    /// else; the backend's reply to the end goes to the client, whatever it
    /// is, and the transaction is over.
    pub(super) async fn data<B>(&mut self, talk: &mut Conversation<B>, raw: &[u8]) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(go_ahead) = self.forward(talk, "DATA", raw, REPLY_TIMEOUT).await else {
            return Next::Close;
        };
        self.send_bytes(&go_ahead).await;
        if !go_ahead.starts_with(b"354") {
            return Next::Go;
        }
        end_transaction(&mut talk.envelope);
        let policy = self.shared.config.engine.bare_newline;
        let mut framer = DataFramer::new(policy);
        let mut out = BytesMut::new();
        let mut backend_error: Option<io::Error> = None;
        let framed = loop {
            let framed = framer.feed(&mut self.buffer, &mut out);
            if !out.is_empty() && backend_error.is_none() {
                if let Err(error) = talk.backend.write(&out).await {
                    // The body is still read to its end, so the client gets
                    // its reply at the end, as smtpd's proxy does.
                    backend_error = Some(error);
                }
            }
            out.clear();
            if framed != Framed::More {
                break framed;
            }
            match self.read_body().await {
                Ok(true) => {}
                Ok(false) => return Next::Close,
                Err(_) => {
                    log::command_limit(talk.client.address, "TIME", "DATA");
                    let hostname = self.shared.config.hostname.clone();
                    self.send(&reply::timeout_exceeded(&hostname)).await;
                    return Next::Close;
                }
            }
        };
        if let Some(error) = backend_error {
            self.backend_lost(talk, "END-OF-MESSAGE", &error).await;
            return Next::Close;
        }
        if framed == Framed::Rejected {
            // The backend's transaction cannot be taken back within SMTP:
            // its connection is dropped with the session.
            log::bare_newline(talk.client.address, "END-OF-MESSAGE");
            let config = &self.shared.config;
            let text =
                reply::bare_newline(config.engine.bare_newline_reject_code, &config.hostname);
            self.send(&text).await;
            return Next::Close;
        }
        self.finish_message(talk).await
    }

    /// The backend's reply to the end of a message (DATA's, or BDAT
    /// LAST's) goes to the client; a backend lost here gets Postfix's
    /// before-queue reply.
    async fn finish_message<B>(&mut self, talk: &mut Conversation<B>) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let backend = &mut talk.backend;
        match read_reply(
            &mut backend.stream,
            &mut backend.pending,
            END_OF_DATA_TIMEOUT,
        )
        .await
        {
            Ok(answer) => {
                self.send_bytes(&answer).await;
                Next::Go
            }
            Err(error) => {
                self.backend_lost(talk, "END-OF-MESSAGE", &error).await;
                Next::Close
            }
        }
    }

    /// BDAT: the command and exactly its chunk's bytes go to the backend,
    /// and its reply to the client; after LAST the transaction is over.
    pub(super) async fn bdat<B>(
        &mut self,
        talk: &mut Conversation<B>,
        argument: &str,
        raw: &[u8],
    ) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut words = argument.split_whitespace();
        let size = words.next().and_then(|size| size.parse::<u64>().ok());
        let last = match words.next() {
            None => false,
            Some(word) if word.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return self.answer(reply::BDAT_SYNTAX).await,
        };
        let Some(mut left) = size.filter(|_| words.next().is_none()) else {
            return self.answer(reply::BDAT_SYNTAX).await;
        };
        if let Err(error) = talk.backend.write(raw).await {
            self.backend_lost(talk, "BDAT", &error).await;
            return Next::Close;
        }
        while left > 0 {
            if self.buffer.is_empty() {
                match self.read_body().await {
                    Ok(true) => {}
                    Ok(false) => return Next::Close,
                    Err(_) => {
                        log::command_limit(talk.client.address, "TIME", "BDAT");
                        let hostname = self.shared.config.hostname.clone();
                        self.send(&reply::timeout_exceeded(&hostname)).await;
                        return Next::Close;
                    }
                }
            }
            let take = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.buffer.len());
            let chunk = self.buffer.split_to(take);
            if let Err(error) = talk.backend.write(&chunk).await {
                self.backend_lost(talk, "BDAT", &error).await;
                return Next::Close;
            }
            left -= take as u64;
        }
        if last {
            end_transaction(&mut talk.envelope);
            return self.finish_message(talk).await;
        }
        let backend = &mut talk.backend;
        match read_reply(&mut backend.stream, &mut backend.pending, REPLY_TIMEOUT).await {
            Ok(answer) => {
                self.send_bytes(&answer).await;
                Next::Go
            }
            Err(error) => {
                self.backend_lost(talk, "BDAT", &error).await;
                Next::Close
            }
        }
    }

    /// AUTH: the SASL exchange goes between the client and the backend,
    /// each client line bounded as a command is; the backend's final reply
    /// decides. `235`: the RCPT gates pass for the rest of the session.
    /// Anything else changes nothing.
    pub(super) async fn auth<B>(&mut self, talk: &mut Conversation<B>, raw: &[u8]) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut line = raw.to_vec();
        loop {
            let Some(answer) = self.forward(talk, "AUTH", &line, REPLY_TIMEOUT).await else {
                return Next::Close;
            };
            self.send_bytes(&answer).await;
            if !answer.starts_with(b"334") {
                if answer.starts_with(b"235") && talk.judged == Judged::ByGates {
                    talk.judged = Judged::Authenticated;
                    log::authenticated(talk.client.address, talk.backend.address);
                }
                return Next::Go;
            }
            line = match self.next_command().await {
                Incoming::Line(response) => {
                    let mut response = response.text;
                    response.extend_from_slice(b"\r\n");
                    response
                }
                Incoming::Closed => return Next::Close,
                Incoming::TimedOut => {
                    log::command_limit(talk.client.address, "TIME", "AUTH");
                    let hostname = self.shared.config.hostname.clone();
                    self.send(&reply::timeout_exceeded(&hostname)).await;
                    return Next::Close;
                }
                Incoming::TooLong => {
                    log::command_limit(talk.client.address, "LENGTH", "AUTH");
                    self.send(reply::AUTH_LINE_TOO_LONG).await;
                    return Next::Close;
                }
            };
        }
    }
}
