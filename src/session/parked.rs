//! A session in the waiting room: everything but its socket, and how it
//! goes on when the room hands the socket back. It touches nothing but the
//! session and the waiting room's types.

use super::*;

/// A session in the waiting room: all of it but its socket.
pub struct Parked {
    pub(super) session: Session<()>,
    /// Inline: one allocation per parked client.
    pub(super) waiting: GreetWait,
    pub(super) cut: CancellationToken,
    pub(super) token: TaskTrackerToken,
    /// The runtime of the thread that accepted the client, where it goes
    /// on (with `[runtime] model = "per-core"`, a connection stays on its
    /// thread).
    pub(super) home: tokio::runtime::Handle,
}

impl Resumable for Parked {
    fn resume(self: Box<Self>, stream: std::net::TcpStream, woken: Woken) {
        let home = self.home.clone();
        home.spawn(self.go_on(stream, woken));
    }
}

impl Parked {
    /// Goes on with the greet wait on `stream`, handed back by the room
    /// for `woken`.
    async fn go_on(self: Box<Self>, stream: std::net::TcpStream, woken: Woken) {
        let Parked {
            session,
            mut waiting,
            cut,
            token,
            home: _,
        } = *self;
        session.process.metrics.resumed(woken == Woken::Readable);
        waiting.woken(woken == Woken::Readable);
        // Out of the reactor until its greet wait goes on (a phase that
        // talks), which registers it again.
        let ((), session) = session.with_stream(Channel::Plain(ClientSocket::accepted(stream)));
        session
            .run_from(Phase::Wait(Box::new(waiting)), cut, token)
            .await;
    }
}
