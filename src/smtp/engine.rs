//! The built-in SMTP engine that talks to clients under an `enforce`
//! action, as postscreen's dummy engine does (REFERENCE.md 1.6).
//!
//! It is sans-IO: [`Engine::command`] takes one command line and says what
//! to reply, what to log and whether to close. It announces neither
//! PIPELINING nor AUTH, accepts MAIL, answers every RCPT (and VRFY) with the
//! failed test's 550 reply, and closes after DATA, BDAT, QUIT or a limit.

use super::line::Line;
use super::reply;

/// The protocol the client used, as logged (`proto=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HELO, or no greeting yet.
    Smtp,
    /// EHLO.
    Esmtp,
}

impl Proto {
    /// The name in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Smtp => "SMTP",
            Proto::Esmtp => "ESMTP",
        }
    }
}

/// A refused RCPT, for the `NOQUEUE: reject: RCPT` log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRcpt {
    /// The reply sent, without CRLF.
    pub reply: String,
    /// The MAIL FROM address.
    pub from: String,
    /// The RCPT TO address.
    pub to: String,
    /// SMTP or ESMTP.
    pub proto: Proto,
    /// The HELO/EHLO argument.
    pub helo: String,
}

/// Which engine limit a client reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Too many commands.
    Count,
    /// A command line too long.
    Length,
    /// A command line too slow.
    Time,
}

impl Limit {
    /// The word in `COMMAND <word> LIMIT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Count => "COUNT",
            Limit::Length => "LENGTH",
            Limit::Time => "TIME",
        }
    }
}

/// Something the engine wants logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// A RCPT was refused with the test's reply.
    Refused(RefusedRcpt),
    /// DATA or BDAT (the verb) came without a valid RCPT.
    NoValidRcpt(&'static str),
    /// A limit was reached; `after` is the last command (or `CONNECT`).
    Limit(Limit),
}

/// What to do after a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The reply, with CRLF.
    pub reply: String,
    /// What to log, if anything.
    pub event: Option<EngineEvent>,
    /// Whether to close after the reply.
    pub close: bool,
}

impl Step {
    fn reply(reply: impl Into<String>) -> Self {
        Self {
            reply: reply.into(),
            event: None,
            close: false,
        }
    }

    fn closing(reply: impl Into<String>, event: Option<EngineEvent>) -> Self {
        Self {
            reply: reply.into(),
            event,
            close: true,
        }
    }
}

/// One client's dialogue with the engine.
#[derive(Clone, Debug)]
pub struct Engine {
    hostname: String,
    rcpt_reply: String,
    command_limit: usize,
    commands: usize,
    last: Option<String>,
    helo: Option<String>,
    proto: Proto,
    from: Option<String>,
}

impl Engine {
    /// An engine that refuses each RCPT with `rcpt_reply` (a 550 line with
    /// CRLF) and allows `command_limit` commands.
    pub fn new(hostname: &str, rcpt_reply: String, command_limit: usize) -> Self {
        Self {
            hostname: hostname.to_string(),
            rcpt_reply,
            command_limit,
            commands: 0,
            last: None,
            helo: None,
            proto: Proto::Smtp,
            from: None,
        }
    }

    /// The last command verb, or `CONNECT` before any (for limit lines).
    pub fn after(&self) -> &str {
        self.last.as_deref().unwrap_or("CONNECT")
    }

    /// The step when a command line was too long.
    pub fn line_too_long(&self) -> Step {
        Step::closing(
            reply::service_unavailable(&self.hostname),
            Some(EngineEvent::Limit(Limit::Length)),
        )
    }

    /// The step when a command line did not arrive in time.
    pub fn timed_out(&self) -> Step {
        Step::closing(
            reply::timeout_exceeded(&self.hostname),
            Some(EngineEvent::Limit(Limit::Time)),
        )
    }

    /// The step for one command line.
    pub fn command(&mut self, line: &Line) -> Step {
        let verb = line.verb();
        let text = String::from_utf8_lossy(&line.text).into_owned();
        let argument = text
            .get(verb.len()..)
            .unwrap_or_default()
            .trim()
            .to_string();
        if verb != "QUIT" {
            self.commands += 1;
            if self.commands > self.command_limit {
                return Step::closing(
                    reply::service_unavailable(&self.hostname),
                    Some(EngineEvent::Limit(Limit::Count)),
                );
            }
        }
        let step = self.dispatch(&verb, &argument);
        self.last = Some(if verb.is_empty() {
            "UNKNOWN".into()
        } else {
            verb
        });
        step
    }

    fn dispatch(&mut self, verb: &str, argument: &str) -> Step {
        match verb {
            "HELO" | "EHLO" if argument.is_empty() => {
                Step::reply(format!("501 Syntax: {verb} hostname\r\n"))
            }
            "HELO" => {
                self.helo = Some(argument.to_string());
                self.proto = Proto::Smtp;
                Step::reply(format!("250 {}\r\n", self.hostname))
            }
            "EHLO" => {
                self.helo = Some(argument.to_string());
                self.proto = Proto::Esmtp;
                Step::reply(format!(
                    "250-{}\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 CHUNKING\r\n",
                    self.hostname
                ))
            }
            "MAIL" if self.from.is_some() => {
                Step::reply("503 5.5.1 Error: nested MAIL command\r\n")
            }
            "MAIL" => match address(argument, "FROM:") {
                Some(from) => {
                    self.from = Some(from);
                    Step::reply("250 2.1.0 Ok\r\n")
                }
                None => Step::reply("501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
            },
            "RCPT" => match (&self.from, address(argument, "TO:")) {
                (None, _) => Step::reply("503 5.5.1 Error: need MAIL command\r\n"),
                (Some(_), None) => Step::reply("501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
                (Some(from), Some(to)) => Step {
                    reply: self.rcpt_reply.clone(),
                    event: Some(EngineEvent::Refused(RefusedRcpt {
                        reply: self.rcpt_reply.trim_end().to_string(),
                        from: from.clone(),
                        to,
                        proto: self.proto,
                        helo: self.helo.clone().unwrap_or_default(),
                    })),
                    close: false,
                },
            },
            "DATA" if !argument.is_empty() => Step::reply("501 5.5.4 Syntax: DATA\r\n"),
            "DATA" | "BDAT" => {
                let verb = if verb == "DATA" { "DATA" } else { "BDAT" };
                let text = if self.from.is_some() {
                    "554 5.5.1 Error: no valid recipients\r\n"
                } else if verb == "DATA" {
                    "503 5.5.1 Error: need RCPT command\r\n"
                } else {
                    "554 5.5.1 Error: need MAIL command\r\n"
                };
                Step::closing(text, Some(EngineEvent::NoValidRcpt(verb)))
            }
            "RSET" => {
                self.from = None;
                Step::reply(reply::OK)
            }
            "NOOP" => Step::reply(reply::OK),
            "VRFY" if argument.is_empty() => Step::reply("501 5.5.4 Syntax: VRFY address\r\n"),
            "VRFY" => Step::reply(self.rcpt_reply.clone()),
            "ETRN" if argument.is_empty() => Step::reply("500 Syntax: ETRN domain\r\n"),
            "ETRN" => Step::reply("458 Unable to queue messages\r\n"),
            "STARTTLS" => Step::reply("502 5.5.1 Error: command not implemented\r\n"),
            "QUIT" => Step::closing(reply::BYE, None),
            _ => Step::reply(reply::NOT_RECOGNIZED),
        }
    }
}

/// The address in `FROM:<addr> params` or `TO:<addr>`, without brackets.
fn address(argument: &str, keyword: &str) -> Option<String> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: &str =
        "550 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.test\r\n";

    fn line(text: &str) -> Line {
        Line {
            text: text.as_bytes().to_vec(),
            bare_newline: false,
        }
    }

    #[test]
    fn dialogue() {
        let mut engine = Engine::new("mx.test", REPLY.into(), 20);
        assert_eq!(engine.after(), "CONNECT");
        assert_eq!(
            engine
                .command(&line("EHLO bad.example"))
                .reply
                .lines()
                .count(),
            8
        );
        assert!(!engine
            .command(&line("EHLO bad.example"))
            .reply
            .contains("PIPELINING"));
        assert_eq!(
            engine.command(&line("RCPT TO:<a@b>")).reply,
            "503 5.5.1 Error: need MAIL command\r\n"
        );
        assert_eq!(
            engine.command(&line("MAIL FROM:<s@x> SIZE=5")).reply,
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(
            engine.command(&line("MAIL FROM:<s@x>")).reply,
            "503 5.5.1 Error: nested MAIL command\r\n"
        );
        let step = engine.command(&line("RCPT TO:<good@y>"));
        assert_eq!(step.reply, REPLY);
        assert_eq!(
            step.event,
            Some(EngineEvent::Refused(RefusedRcpt {
                reply: REPLY.trim_end().into(),
                from: "s@x".into(),
                to: "good@y".into(),
                proto: Proto::Esmtp,
                helo: "bad.example".into(),
            }))
        );
        assert_eq!(
            engine.command(&line("XCLIENT ADDR=1.2.3.4")).reply,
            reply::NOT_RECOGNIZED
        );
        assert_eq!(
            engine.command(&line("AUTH PLAIN x")).reply,
            reply::NOT_RECOGNIZED
        );
        assert_eq!(
            engine
                .command(&line("PROXY TCP4 1.2.3.4 5.6.7.8 1 2"))
                .reply,
            reply::NOT_RECOGNIZED
        );
        let data = engine.command(&line("DATA"));
        assert_eq!(data.reply, "554 5.5.1 Error: no valid recipients\r\n");
        assert!(data.close);
        assert_eq!(data.event, Some(EngineEvent::NoValidRcpt("DATA")));
    }

    #[test]
    fn limits() {
        let mut engine = Engine::new("mx.test", REPLY.into(), 2);
        assert!(!engine.command(&line("NOOP")).close);
        assert!(!engine.command(&line("HELO x")).close);
        let third = engine.command(&line("NOOP"));
        assert_eq!(
            third.reply,
            "421 mx.test Service unavailable - try again later\r\n"
        );
        assert!(third.close);
        assert_eq!(third.event, Some(EngineEvent::Limit(Limit::Count)));
        assert_eq!(engine.after(), "HELO", "the last command before the limit");
        let mut quitter = Engine::new("mx.test", REPLY.into(), 1);
        quitter.command(&line("NOOP"));
        assert_eq!(quitter.command(&line("QUIT")).reply, "221 2.0.0 Bye\r\n");
        assert_eq!(
            engine.timed_out().reply,
            "421 4.4.2 mx.test Error: timeout exceeded\r\n"
        );
    }
}
