//! The built-in SMTP engine that talks to clients under an `enforce`
//! action, as postscreen's dummy engine does (its replies are listed in
//! docs/postscreen.md, "Replies").
//!
//! It is sans-IO: [`Engine::command`] takes one command line and says what
//! to reply, what to log and whether to close. It never announces
//! PIPELINING, XCLIENT or XFORWARD, accepts MAIL, and at RCPT either refuses
//! with a failed test's 550 reply ([`RcptPolicy::Refuse`]) or reports that
//! the client reached RCPT with a clean record ([`RcptPolicy::Pass`]), so the
//! session can replay the dialogue into a backend. It closes after DATA,
//! BDAT, QUIT or a limit.

use crate::log::RefusedRcpt;
use doorman_gate_api::{ClientNames, Envelope, Stage as GateStage};

use super::address::{parse_path, Path, PathError};
use super::line::Line;
use super::reply;
use super::response::{announces, keyword_name, size_limit};

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

/// Whether the engine itself speaks STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Starttls {
    /// No `[tls]`: STARTTLS is the backend's, if it announces it (the
    /// client is then handed off at its STARTTLS).
    Backend,
    /// The engine announces STARTTLS and runs the handshake itself.
    Offered,
    /// TLS is on: STARTTLS is no longer announced, and a second one is
    /// refused.
    Active,
}

/// What a RCPT gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptPolicy {
    /// This reply (a 550 or 450 line with CRLF), logged as NOQUEUE.
    Refuse(String),
    /// Nothing yet: the engine reports [`EngineEvent::Passed`].
    Pass,
}

/// The dialogue so far, as the client sent it, for a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The HELO or EHLO line, with CRLF.
    pub helo_line: Option<Vec<u8>>,
    /// The MAIL line, with CRLF.
    pub mail_line: Vec<u8>,
    /// The RCPT line, with CRLF.
    pub rcpt_line: Vec<u8>,
    /// For log lines: sender, recipient, protocol and HELO name.
    pub refused: RefusedRcpt,
}

/// Something the engine wants logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// The client reached RCPT under [`RcptPolicy::Pass`].
    Passed(Box<Transaction>),
    /// The client sent STARTTLS or AUTH, which the backend announced and
    /// only the backend can answer: hand off now, with this line.
    HandOffAt(Vec<u8>),
    /// A RCPT was refused with the test's reply.
    Refused(RefusedRcpt),
    /// DATA or BDAT (the verb) came without a valid RCPT.
    NoValidRcpt(&'static str),
    /// A limit was reached; `after` is the last command (or `CONNECT`).
    Limit(Limit),
    /// The client sent STARTTLS and was told to start: the session runs
    /// the handshake, then calls [`Engine::tls_started`].
    StartTls,
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
    rcpt: RcptPolicy,
    keywords: Option<Vec<String>>,
    command_limit: usize,
    commands: usize,
    last: Option<String>,
    helo: Option<String>,
    helo_line: Option<Vec<u8>>,
    proto: Proto,
    from: Option<String>,
    mail_line: Vec<u8>,
    starttls: Starttls,
}

/// EHLO keywords the engine never announces: PIPELINING (the pipelining
/// test needs it withheld), and the ones that would let a client speak for
/// another address.
const WITHHELD: [&str; 3] = ["PIPELINING", "XCLIENT", "XFORWARD"];

impl Engine {
    /// An engine with the given RCPT policy that allows `command_limit`
    /// commands. `keywords` are the backend's EHLO keywords to announce (less
    /// the withheld ones); `None` announces postscreen's own list.
    pub fn new(
        hostname: &str,
        rcpt: RcptPolicy,
        command_limit: usize,
        keywords: Option<Vec<String>>,
    ) -> Self {
        Self {
            hostname: hostname.to_string(),
            rcpt,
            keywords,
            command_limit,
            commands: 0,
            last: None,
            helo: None,
            helo_line: None,
            proto: Proto::Smtp,
            from: None,
            mail_line: Vec::new(),
            starttls: Starttls::Backend,
        }
    }

    /// The engine announces STARTTLS and answers it itself.
    pub fn offer_starttls(&mut self) {
        self.starttls = Starttls::Offered;
    }

    /// TLS is on: the dialogue starts over (RFC 3207 4.2: the HELO name,
    /// the sender and everything else the client said is forgotten), and
    /// STARTTLS is no longer announced.
    pub fn tls_started(&mut self) {
        self.starttls = Starttls::Active;
        self.helo = None;
        self.helo_line = None;
        self.proto = Proto::Smtp;
        self.from = None;
        self.mail_line.clear();
    }

    /// Whether the client's dialogue runs inside TLS.
    pub fn starttls(&self) -> Starttls {
        self.starttls
    }

    /// From now on every RCPT gets `reply` (a failed deep test under
    /// `enforce`). As in postscreen, the most recent failure's reply
    /// replaces any refusal in force.
    pub fn refuse_with(&mut self, reply: String) {
        self.rcpt = RcptPolicy::Refuse(reply);
    }

    /// The client's HELO or EHLO line, with CRLF, if it sent one.
    pub fn helo_line(&self) -> Option<Vec<u8>> {
        self.helo_line.clone()
    }

    /// Whether `keyword` is announced in the EHLO reply.
    fn announces(&self, keyword: &str) -> bool {
        self.keywords
            .as_ref()
            .is_some_and(|keywords| announces(keywords, keyword))
    }

    /// Whether MAIL's `parameters` declare a SIZE past the one the engine
    /// announced (the backend's), as smtpd refuses it at MAIL.
    fn too_large(&self, from: &Path) -> bool {
        let Some(limit) = self.keywords.as_ref().and_then(|k| size_limit(k)) else {
            return false;
        };
        from.parameter("SIZE")
            .and_then(|size| size.parse::<u64>().ok())
            .is_some_and(|size| size > limit)
    }

    /// The EHLO reply the engine gives (the backend's keywords less the
    /// withheld ones, or postscreen's list).
    pub fn ehlo_reply(&self) -> String {
        match &self.keywords {
            None => reply::ehlo(&self.hostname, self.starttls == Starttls::Offered),
            Some(keywords) => {
                let word = |k: &String| keyword_name(k);
                let mut shown: Vec<String> = keywords
                    .iter()
                    .filter(|k| {
                        let word = word(k);
                        !WITHHELD.contains(&word.as_str())
                            && (word != "STARTTLS" || self.starttls == Starttls::Backend)
                    })
                    .cloned()
                    .collect();
                if self.starttls == Starttls::Offered {
                    // Where Postfix lists it: before ENHANCEDSTATUSCODES.
                    let at = shown
                        .iter()
                        .position(|k| word(k) == "ENHANCEDSTATUSCODES")
                        .unwrap_or(shown.len());
                    shown.insert(at, "STARTTLS".to_string());
                }
                let mut reply = format!(
                    "250{}{}\r\n",
                    if shown.is_empty() { ' ' } else { '-' },
                    self.hostname
                );
                for (index, keyword) in shown.iter().enumerate() {
                    let dash = if index + 1 == shown.len() { ' ' } else { '-' };
                    reply.push_str(&format!("250{dash}{keyword}\r\n"));
                }
                reply
            }
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
        self.step(line, |engine, verb, argument, raw| {
            engine.dispatch(verb, argument, raw)
        })
    }

    /// What the gates are asked about `line`: HELO/EHLO with its name,
    /// MAIL with its sender, RCPT with its recipient, when the engine would
    /// take the command in this state; `None` for anything else, and for
    /// everything once the engine refuses every RCPT (a failed test) or the
    /// command limit is spent (the 421): no gate may make a record for it.
    pub fn question(&self, line: &Line) -> Option<(GateStage, String)> {
        if matches!(self.rcpt, RcptPolicy::Refuse(_)) || self.commands >= self.command_limit {
            return None;
        }
        line.gate_question().filter(|(stage, _)| match stage {
            GateStage::Helo => true,
            GateStage::Mail => self.from.is_none(),
            GateStage::Rcpt => self.from.is_some(),
        })
    }

    /// The dialogue so far, for the gates.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            helo: self.helo.clone(),
            esmtp: self.proto == Proto::Esmtp,
            sender: self.from.clone(),
            recipients: Vec::new(),
            score: None,
            names: ClientNames::default(),
            encryption: None,
            transaction: 0,
        }
    }

    /// The step when a gate refused `line` with `reply` (a 4xx or 5xx line
    /// with CRLF): the command counts and changes nothing. The gate logs
    /// its own refusal, in the form its checks have in Postfix.
    pub fn refuse(&mut self, line: &Line, reply: String) -> Step {
        self.step(line, |_, _, _, _| Step::reply(reply))
    }

    /// Counts a command against the limit, runs `answer` on its verb,
    /// argument and raw line, and remembers the verb.
    fn step(
        &mut self,
        line: &Line,
        answer: impl FnOnce(&mut Self, &str, &str, Vec<u8>) -> Step,
    ) -> Step {
        let (verb, argument) = line.split();
        if verb != "QUIT" {
            self.commands += 1;
            if self.commands > self.command_limit {
                return Step::closing(
                    reply::service_unavailable(&self.hostname),
                    Some(EngineEvent::Limit(Limit::Count)),
                );
            }
        }
        let mut raw = line.text.clone();
        raw.extend_from_slice(b"\r\n");
        let step = answer(self, &verb, &argument, raw);
        self.last = Some(if verb.is_empty() {
            "UNKNOWN".into()
        } else {
            verb
        });
        step
    }

    fn dispatch(&mut self, verb: &str, argument: &str, raw: Vec<u8>) -> Step {
        match verb {
            "HELO" | "EHLO" if argument.is_empty() => Step::reply(reply::helo_syntax(verb)),
            "HELO" => {
                self.helo = Some(argument.to_string());
                self.helo_line = Some(raw);
                self.proto = Proto::Smtp;
                Step::reply(reply::helo(&self.hostname))
            }
            "EHLO" => {
                self.helo = Some(argument.to_string());
                self.helo_line = Some(raw);
                self.proto = Proto::Esmtp;
                Step::reply(self.ehlo_reply())
            }
            "STARTTLS" if self.starttls == Starttls::Offered && !argument.is_empty() => {
                Step::reply(reply::STARTTLS_SYNTAX)
            }
            "STARTTLS" if self.starttls == Starttls::Offered => Step {
                reply: reply::READY_TO_START_TLS.to_string(),
                event: Some(EngineEvent::StartTls),
                close: false,
            },
            "STARTTLS" if self.starttls == Starttls::Active => {
                Step::reply(reply::TLS_ALREADY_ACTIVE)
            }
            // The arms above took STARTTLS whenever the engine offers it.
            "STARTTLS" | "AUTH" if self.announces(verb) && self.helo_line.is_some() => Step {
                reply: String::new(),
                event: Some(EngineEvent::HandOffAt(raw)),
                close: false,
            },
            // A client that may be replayed is told what smtpd tells an
            // unauthorised client; one being refused gets postscreen's 502.
            "XCLIENT" | "XFORWARD" if self.rcpt == RcptPolicy::Pass => {
                Step::reply(reply::INSUFFICIENT_AUTHORIZATION)
            }
            "MAIL" if self.from.is_some() => Step::reply(reply::NESTED_MAIL),
            "MAIL" => match parse_path(argument, "FROM:") {
                Ok(from) if self.too_large(&from) => Step::reply(reply::SIZE_EXCEEDS_LIMIT),
                Ok(from) => {
                    self.from = Some(from.address);
                    self.mail_line = raw;
                    Step::reply(reply::MAIL_OK)
                }
                Err(PathError::Syntax) => Step::reply(reply::MAIL_SYNTAX),
                Err(PathError::Address) => Step::reply(reply::SENDER_SYNTAX),
            },
            "RCPT" => match (&self.from, parse_path(argument, "TO:")) {
                (None, _) => Step::reply(reply::NEED_MAIL),
                (Some(_), Err(PathError::Syntax)) => Step::reply(reply::RCPT_SYNTAX),
                (Some(_), Err(PathError::Address)) => Step::reply(reply::RECIPIENT_SYNTAX),
                (Some(_), Ok(to)) if to.address.is_empty() => Step::reply(reply::RECIPIENT_SYNTAX),
                (Some(from), Ok(to)) => {
                    let to = to.address;
                    let reply = match &self.rcpt {
                        RcptPolicy::Refuse(reply) => reply.clone(),
                        RcptPolicy::Pass => String::new(),
                    };
                    let refused = RefusedRcpt {
                        reply: reply.trim_end().to_string(),
                        from: from.clone(),
                        to,
                        proto: self.proto.as_str(),
                        helo: self.helo.clone().unwrap_or_default(),
                    };
                    let event = match self.rcpt {
                        RcptPolicy::Refuse(_) => EngineEvent::Refused(refused),
                        RcptPolicy::Pass => EngineEvent::Passed(Box::new(Transaction {
                            helo_line: self.helo_line.clone(),
                            mail_line: self.mail_line.clone(),
                            rcpt_line: raw,
                            refused,
                        })),
                    };
                    Step {
                        reply,
                        event: Some(event),
                        close: false,
                    }
                }
            },
            "DATA" if !argument.is_empty() => Step::reply(reply::DATA_SYNTAX),
            "DATA" | "BDAT" => {
                let verb = if verb == "DATA" { "DATA" } else { "BDAT" };
                let text = if self.from.is_some() {
                    reply::NO_VALID_RECIPIENTS
                } else if verb == "DATA" {
                    reply::NEED_RCPT
                } else {
                    reply::BDAT_NEED_MAIL
                };
                Step::closing(text, Some(EngineEvent::NoValidRcpt(verb)))
            }
            "RSET" => {
                self.from = None;
                Step::reply(reply::OK)
            }
            "NOOP" => Step::reply(reply::OK),
            "VRFY" if argument.is_empty() => Step::reply(reply::VRFY_SYNTAX),
            "VRFY" => Step::reply(match &self.rcpt {
                RcptPolicy::Refuse(reply) => reply.clone(),
                RcptPolicy::Pass => reply::VRFY_PASS.to_string(),
            }),
            "ETRN" if argument.is_empty() => Step::reply(reply::ETRN_SYNTAX),
            "ETRN" => Step::reply(reply::ETRN_REFUSED),
            "STARTTLS" => Step::reply(reply::NOT_IMPLEMENTED),
            "AUTH" => Step::reply(reply::NOT_RECOGNIZED),
            "QUIT" => Step::closing(reply::BYE, None),
            _ => Step::reply(reply::NOT_RECOGNIZED),
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
