//! The phases before a client is known: a listed proxy's PROXY header,
//! read within `[proxy] timeout`, and the dialogue with HAProxy's health
//! checks. It answers with the replies of `smtp::reply` and logs through
//! `log`; it never touches the gates.

use super::*;

impl<S: ClientIo> Session<Channel<S>> {
    /// Reads the header of a listed proxy within `proxy.timeout`.
    pub(super) async fn read_proxy_header(&mut self) -> Phase {
        let deadline = Instant::now() + self.shared.config.proxy.timeout;
        loop {
            match proxy::parse(&self.buffer) {
                Ok(Parsed::Complete { header, length }) => {
                    let _ = self.buffer.split_to(length);
                    if self.buffer.is_empty() {
                        // A waiting client holds no buffer until it talks.
                        self.buffer = BytesMut::new();
                    }
                    return self.after_header(header);
                }
                Ok(Parsed::Incomplete) => {}
                Err(error) => {
                    self.count(Counted::ProxyRefused);
                    log::proxy_invalid(self.peer, &error, &self.buffer);
                    self.send(reply::INVALID_PROXY_HEADER).await;
                    return Phase::Closed;
                }
            }
            self.buffer.reserve(256);
            match timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Err(_) => {
                    self.count(Counted::ProxyRefused);
                    log::proxy_timeout(self.peer);
                    self.send(reply::PROXY_TIMED_OUT).await;
                    return Phase::Closed;
                }
                Ok(Ok(0)) => {
                    log::proxy_eof(self.peer, &self.buffer);
                    return Phase::Closed;
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    log::proxy_read_error(self.peer, &error);
                    return Phase::Closed;
                }
            }
        }
    }

    /// A v2 LOCAL header, or a header whose source is itself a listed proxy,
    /// is a health check; any other header names the real client.
    pub(super) fn after_header(&self, header: Header) -> Phase {
        match header {
            Header::Local => Phase::HealthCheck(None),
            Header::Proxied {
                source,
                destination,
                ..
            } if self.shared.config.proxy_hosts.contains(source.ip()) => {
                Phase::HealthCheck(Some(destination))
            }
            Header::Proxied {
                source,
                destination,
                tlvs,
            } => Phase::Screen(Client {
                address: source,
                destination,
                tlvs,
            }),
        }
    }

    /// Answers a health check: a single-line 220 when a backend is alive
    /// (421 when none is), then HELO/EHLO/NOOP/RSET/QUIT. Logged at debug
    /// level only.
    pub(super) async fn health_check(&mut self, checked: Option<SocketAddr>) -> Phase {
        self.count(Counted::HealthCheck);
        // A check of an address that routes to a cluster answers for that
        // cluster; any other for all of them.
        let config = &self.shared.config;
        let cluster = checked
            .filter(|destination| {
                config
                    .routes
                    .iter()
                    .any(|route| route.matches(*destination, self.listening))
            })
            .map(|destination| config.cluster_for(destination, self.listening).to_string());
        // Drained backends take no client: a node whose backends are all
        // drained answers as one with none up, so HAProxy sends nobody.
        let alive = self.shared.pool.availability(cluster.as_deref()) == Availability::Ready;
        log::health_check(self.peer, alive);
        if !alive {
            self.send(reply::SERVER_PORTS_BUSY).await;
            return Phase::Closed;
        }
        let hostname = self.shared.config.hostname.clone();
        self.send(&reply::plain_banner(&hostname)).await;
        for _ in 0..health::MAX_COMMANDS {
            let line = loop {
                match next_line(&mut self.buffer, HEALTH_LINE_LIMIT) {
                    Ok(Some(line)) => break line,
                    Ok(None) => {}
                    Err(_) => {
                        self.send(&reply::service_unavailable(&hostname)).await;
                        log::health_check_ended(self.peer, "line too long");
                        return Phase::Closed;
                    }
                }
                match self.read_within(HEALTH_COMMAND_TIMEOUT).await {
                    Read::TimedOut => {
                        self.send(&reply::timeout_exceeded(&hostname)).await;
                        log::health_check_ended(self.peer, "timeout");
                        return Phase::Closed;
                    }
                    Read::Closed => {
                        log::health_check_ended(self.peer, "hang-up");
                        return Phase::Closed;
                    }
                    Read::Data => {}
                }
            };
            match health::answer(&line, &hostname) {
                CheckReply::Reply(text) => self.send(&text).await,
                CheckReply::ReplyAndClose(text) => {
                    self.send(&text).await;
                    return Phase::Closed;
                }
            }
        }
        self.send(&reply::service_unavailable(&hostname)).await;
        log::health_check_ended(self.peer, "too many commands");
        Phase::Closed
    }
}
