//! The relayed commands that carry more than a line: DATA and its body,
//! BDAT and its chunk, and the AUTH exchange.

use super::command::Incoming;
use super::conversation::{end_transaction, Conversation, Judged, Next, END_OF_DATA_TIMEOUT};
use super::*;
use crate::smtp::body::{DataFramer, Framed};

/// Where the backend's reply to a message's end goes wrong, for its log
/// line and the client's reply (Postfix's before-queue `451 4.3.0`).
pub(super) const END_OF_MESSAGE: &str = "END-OF-MESSAGE";

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
        if !go_ahead.starts_with(b"354") {
            // Only a refusal leaves the backend reading commands; a
            // backend that says anything else is not followed.
            if go_ahead.starts_with(b"4") || go_ahead.starts_with(b"5") {
                self.send_bytes(&go_ahead).await;
                return Next::Go;
            }
            let error = io::Error::new(io::ErrorKind::InvalidData, "DATA answered without 354");
            self.backend_lost(talk, "DATA", &error).await;
            return Next::Close;
        }
        self.send_bytes(&go_ahead).await;
        end_transaction(&mut talk.envelope);
        let mut framer = DataFramer::new(self.shared.config.engine.bare_newline);
        let mut out = BytesMut::new();
        let mut backend_error: Option<io::Error> = None;
        let framed = loop {
            let framed = framer.feed(&mut self.buffer, &mut out);
            if !out.is_empty() && backend_error.is_none() {
                // On a write error the body is still read to its end, so
                // the client gets its reply there, as smtpd's proxy does.
                backend_error = talk.backend.write(&out).await.err();
            }
            out.clear();
            if framed != Framed::More {
                break framed;
            }
            if let Some(next) = self.read_body(talk, "DATA").await {
                return next;
            }
        };
        if let Some(error) = backend_error {
            self.backend_lost(talk, END_OF_MESSAGE, &error).await;
            return Next::Close;
        }
        if framed == Framed::Rejected {
            // The backend's transaction cannot be taken back within SMTP:
            // its connection is dropped with the session.
            log::bare_newline(talk.client.address, END_OF_MESSAGE);
            let config = &self.shared.config;
            let text =
                reply::bare_newline(config.engine.bare_newline_reject_code, &config.hostname);
            self.send(&text).await;
            return Next::Close;
        }
        self.pass_reply(talk, END_OF_MESSAGE, END_OF_DATA_TIMEOUT)
            .await
            .map_or(Next::Close, |_| Next::Go)
    }

    /// BDAT: only to a backend that announced CHUNKING, with a size
    /// written as smtpd reads it (ASCII digits); the command and exactly
    /// its chunk go to the backend, and its reply to the client. A chunk
    /// the backend refused ends the session: a backend that would read it
    /// as commands must never get the chance. After LAST the transaction
    /// is over.
    pub(super) async fn bdat<B>(
        &mut self,
        talk: &mut Conversation<B>,
        argument: &str,
        raw: &[u8],
    ) -> Next
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if !talk.chunking {
            return self.answer(reply::NOT_IMPLEMENTED).await;
        }
        let Some((size, last)) = bdat_argument(argument) else {
            return self.answer(reply::BDAT_SYNTAX).await;
        };
        if let Err(error) = talk.backend.write(raw).await {
            self.backend_lost(talk, "BDAT", &error).await;
            return Next::Close;
        }
        let mut left = size;
        while left > 0 {
            if self.buffer.is_empty() {
                if let Some(next) = self.read_body(talk, "BDAT").await {
                    return next;
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
        let (stage, limit) = if last {
            end_transaction(&mut talk.envelope);
            (END_OF_MESSAGE, END_OF_DATA_TIMEOUT)
        } else {
            ("BDAT", REPLY_TIMEOUT)
        };
        match self.pass_reply(talk, stage, limit).await {
            Some(answer) if answer.starts_with(b"2") => Next::Go,
            _ => Next::Close,
        }
    }

    /// AUTH: the SASL exchange goes between the client and the backend,
    /// each client line bounded and checked as a command is; the backend's
    /// final reply decides. `235`: the gates let the session's MAIL and
    /// RCPT pass from now on. Anything else changes nothing.
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
            talk.last = "AUTH".to_string();
            line = match self.next_command().await {
                // An empty response is allowed in SASL (RFC 4954).
                Incoming::Line(response) if response.text.is_empty() => response.text,
                incoming => match self.take_line(talk, incoming).await {
                    Ok(response) if response.verb() != "PROXY" => response.text,
                    Ok(response) => {
                        self.refuse_header(&talk.client, &response.text).await;
                        return Next::Close;
                    }
                    // doorman refused the line and said so: the backend's
                    // exchange is cancelled (RFC 4954's `*`), and its reply
                    // to that is not passed on: the client has had one.
                    Err(Next::Go) => {
                        let cancelled = talk.backend.ask(b"*\r\n", REPLY_TIMEOUT).await;
                        return match cancelled {
                            Ok(_) => Next::Go,
                            Err(error) => {
                                self.backend_lost(talk, "AUTH", &error).await;
                                Next::Close
                            }
                        };
                    }
                    Err(next) => return next,
                },
            };
            line.extend_from_slice(b"\r\n");
        }
    }

    /// Reads more of a body within one command time; `Some` when the
    /// session ends (the client left, or paused too long: logged and
    /// told, as after a command).
    pub(super) async fn read_body<B>(
        &mut self,
        talk: &Conversation<B>,
        stage: &str,
    ) -> Option<Next> {
        self.buffer.reserve(16 * 1024);
        match timeout(self.command_time(), self.stream.read_buf(&mut self.buffer)).await {
            Ok(Ok(n)) if n > 0 => None,
            Ok(_) => Some(Next::Close),
            Err(_) => {
                log::command_limit(talk.client.address, "TIME", stage);
                let text = reply::timeout_exceeded(&self.shared.config.hostname);
                self.send(&text).await;
                Some(Next::Close)
            }
        }
    }

    /// Reads the backend's reply to what was sent at `stage` and passes it
    /// to the client; `None` when the backend was lost (the client told).
    async fn pass_reply<B>(
        &mut self,
        talk: &mut Conversation<B>,
        stage: &str,
        limit: Duration,
    ) -> Option<Vec<u8>>
    where
        B: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let backend = &mut talk.backend;
        match read_reply(&mut backend.stream, &mut backend.pending, limit).await {
            Ok(answer) => {
                self.send_bytes(&answer).await;
                Some(answer)
            }
            Err(error) => {
                self.backend_lost(talk, stage, &error).await;
                None
            }
        }
    }
}

/// A BDAT argument as smtpd reads it: a size of ASCII digits, then `LAST`
/// or nothing, separated by spaces.
fn bdat_argument(argument: &str) -> Option<(u64, bool)> {
    let mut words = argument.split([' ', '\t']).filter(|w| !w.is_empty());
    let size = words.next()?;
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // As smtpd's off_t: a size past i64 is a syntax error there too.
    let size = size.parse::<u64>().ok().filter(|&n| n <= i64::MAX as u64)?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

#[cfg(test)]
mod tests {
    use super::bdat_argument;

    #[test]
    fn bdat_sizes_are_read_as_smtpd_reads_them() {
        assert_eq!(bdat_argument("27 LAST"), Some((27, true)));
        assert_eq!(bdat_argument("0 last"), Some((0, true)));
        assert_eq!(bdat_argument("5"), Some((5, false)));
        for bad in [
            "+5",
            "5\u{a0}LAST",
            "x",
            "",
            "5 LAST more",
            "5 FIRST",
            "99999999999999999999999",
        ] {
            assert_eq!(bdat_argument(bad), None, "{bad:?}");
        }
    }
}
