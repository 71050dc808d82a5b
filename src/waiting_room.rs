//! The waiting room: clients in the greet wait with nothing left to learn
//! but whether they talk before the deadline, parked without a task.
//!
//! On a bad day most connections are exactly such clients: a botnet's, in
//! their 6 s greet wait, their DNSBL answers already in. As a task each
//! would hold a task cell, its future's state and tokio's registration of
//! its socket, about 2.5 KiB. Parked here it holds its socket in one
//! `epoll` set of this room's own thread, a slot, a deadline on a heap and
//! its session's state, boxed by the caller: a third of that.
//!
//! The room reads nothing and says nothing. The first readiness event of a
//! parked socket (bytes, a hang-up, an error), its deadline, or the room's
//! closing, hands the socket and its item back through the `wake` function
//! (or drops them, when closing), and the session goes on where it was.
//!
//! It knows parked sessions only as `Resumable`; it never imports the
//! session.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::locks::lock;

/// A client parked in the room that knows how to go on once woken (a
/// session's parked state), so the room and what holds it need not know
/// the session's type.
pub trait Resumable: Send + 'static {
    /// Goes on with `stream`, handed back by the room for `woken` (on the
    /// room's thread: it spawns what goes on where it belongs).
    fn resume(self: Box<Self>, stream: TcpStream, woken: Woken);
}

/// The room sessions park in.
pub type SessionRoom = WaitingRoom<Box<dyn Resumable>>;

/// The token of the room's own waker.
const WAKER: Token = Token(usize::MAX);
/// How many readiness events one round of the room handles.
const EVENTS_PER_ROUND: usize = 1024;
/// A slot table or deadline heap this many entries big, empty, is given
/// back (after a flood).
const SHRINK_ABOVE: usize = 1024;

/// Why a parked client was handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Woken {
    /// Its socket became readable (bytes, a hang-up or an error).
    Readable,
    /// Its deadline passed.
    Deadline,
}

/// A client that arrived in the room and is not yet registered.
struct Arrival<T> {
    stream: TcpStream,
    deadline: Instant,
    item: T,
}

/// What the parkers share with the room's thread.
struct Door<T> {
    arrivals: Mutex<Vec<Arrival<T>>>,
    /// Shared with the room's thread, which keeps it open: a waker closed
    /// right after its wake would take the wake-up with it.
    waker: Arc<Waker>,
    closed: AtomicBool,
}

impl<T> Drop for Door<T> {
    fn drop(&mut self) {
        // The last handle is gone: the room's thread wakes and ends.
        let _ = self.waker.wake();
    }
}

/// A handle on the room; clones share it. The room's thread ends when the
/// last handle is dropped.
pub struct WaitingRoom<T> {
    door: Arc<Door<T>>,
}

impl<T> Clone for WaitingRoom<T> {
    fn clone(&self) -> Self {
        Self {
            door: Arc::clone(&self.door),
        }
    }
}

impl<T> std::fmt::Debug for WaitingRoom<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitingRoom").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> WaitingRoom<T> {
    /// Opens the room on a thread of its own; `wake` gets each client back.
    pub fn open(wake: impl Fn(TcpStream, T, Woken) + Send + 'static) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let door = Arc::new(Door {
            arrivals: Mutex::new(Vec::new()),
            waker: Arc::clone(&waker),
            closed: AtomicBool::new(false),
        });
        let room = Room {
            poll,
            _waker: waker,
            door: Arc::downgrade(&door),
            parked: Slab::new(),
            deadlines: BinaryHeap::new(),
            next_id: 0,
            wake: Box::new(wake),
        };
        std::thread::Builder::new()
            .name("waiting-room".into())
            .spawn(move || room.run())?;
        Ok(Self { door })
    }

    /// Parks `stream` (non-blocking) until it is readable or `deadline`
    /// passes. After [`WaitingRoom::close`] the client is dropped at once.
    pub fn park(&self, stream: TcpStream, deadline: Instant, item: T) {
        if self.door.closed.load(Ordering::SeqCst) {
            return;
        }
        let first = {
            let mut arrivals = lock(&self.door.arrivals);
            arrivals.push(Arrival {
                stream,
                deadline,
                item,
            });
            arrivals.len() == 1
        };
        if first {
            let _ = self.door.waker.wake();
        }
    }

    /// Drops every parked client and every later one (the end of the
    /// shutdown grace period).
    pub fn close(&self) {
        self.door.closed.store(true, Ordering::SeqCst);
        let _ = self.door.waker.wake();
    }
}

/// A parked client.
struct Parked<T> {
    stream: TcpStream,
    id: u64,
    item: T,
}

/// The room's thread's state.
struct Room<T> {
    poll: Poll,
    _waker: Arc<Waker>,
    door: std::sync::Weak<Door<T>>,
    parked: Slab<Parked<T>>,
    /// (deadline, slot, id): an entry whose slot holds another id is stale.
    deadlines: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    next_id: u64,
    wake: Box<dyn Fn(TcpStream, T, Woken) + Send>,
}

impl<T> Room<T> {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_PER_ROUND);
        loop {
            let timeout = self.deadlines.peek().map(|Reverse((deadline, _, _))| {
                deadline.saturating_duration_since(Instant::now())
            });
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() != io::ErrorKind::Interrupted {
                    // Nothing is parked safely any more: hand everyone back.
                    crate::log::waiting_room_failed(&error);
                    self.hand_back_all();
                    return;
                }
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.hand_back(event.token().0, None, Woken::Readable);
                }
            }
            let Some(door) = self.door.upgrade() else {
                return;
            };
            if door.closed.load(Ordering::SeqCst) {
                lock(&door.arrivals).clear();
                self.parked.clear();
                self.deadlines.clear();
                continue;
            }
            let arrivals = std::mem::take(&mut *lock(&door.arrivals));
            drop(door);
            for arrival in arrivals {
                self.admit(arrival);
            }
            self.expire(Instant::now());
            self.shrink_when_empty();
        }
    }

    fn admit(&mut self, arrival: Arrival<T>) {
        let id = self.next_id;
        self.next_id += 1;
        let entry = self.parked.vacant_entry();
        let slot = entry.key();
        let fd = arrival.stream.as_raw_fd();
        if let Err(error) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(slot), Interest::READABLE)
        {
            // Not watched: the session goes on in a task instead.
            crate::log::waiting_room_failed(&error);
            (self.wake)(arrival.stream, arrival.item, Woken::Readable);
            return;
        }
        entry.insert(Parked {
            stream: arrival.stream,
            id,
            item: arrival.item,
        });
        self.deadlines.push(Reverse((arrival.deadline, slot, id)));
    }

    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((deadline, slot, id))) = self.deadlines.peek().copied() {
            if deadline > now {
                return;
            }
            self.deadlines.pop();
            self.hand_back(slot, Some(id), Woken::Deadline);
        }
    }

    /// Hands the client in `slot` back, if it is there (and is `id`).
    fn hand_back(&mut self, slot: usize, id: Option<u64>, woken: Woken) {
        let current = self.parked.get(slot).map(|parked| parked.id);
        if current.is_none() || id.is_some_and(|id| Some(id) != current) {
            return;
        }
        let parked = self.parked.remove(slot);
        let fd = parked.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        (self.wake)(parked.stream, parked.item, woken);
    }

    fn hand_back_all(&mut self) {
        for (_, parked) in std::mem::take(&mut self.parked) {
            (self.wake)(parked.stream, parked.item, Woken::Readable);
        }
    }

    /// After a flood, the slot table and the heap give their memory back.
    fn shrink_when_empty(&mut self) {
        if self.parked.is_empty() && self.parked.capacity() > SHRINK_ABOVE {
            self.parked = Slab::new();
        }
        if self.deadlines.len() < self.deadlines.capacity() / 4
            && self.deadlines.capacity() > SHRINK_ABOVE
        {
            self.deadlines.shrink_to(self.deadlines.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    fn room() -> (WaitingRoom<u32>, mpsc::Receiver<(u32, Woken, Instant)>) {
        let (sender, receiver) = mpsc::channel();
        let sender = Mutex::new(sender);
        let room = WaitingRoom::open(move |_stream, item, woken| {
            let _ = lock(&sender).send((item, woken, Instant::now()));
        })
        .unwrap();
        (room, receiver)
    }

    #[test]
    fn a_client_that_talks_is_handed_back_at_once() {
        let (room, woken) = room();
        let (mut client, server) = pair();
        room.park(server, Instant::now() + Duration::from_secs(30), 7);
        std::thread::sleep(Duration::from_millis(50));
        assert!(woken.try_recv().is_err(), "nothing happened yet");
        client.write_all(b"EHLO early\r\n").unwrap();
        let (item, why, _) = woken.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((item, why), (7, Woken::Readable));
    }

    #[test]
    fn a_hang_up_is_handed_back_as_readable() {
        let (room, woken) = room();
        let (client, server) = pair();
        room.park(server, Instant::now() + Duration::from_secs(30), 1);
        drop(client);
        let (_, why, _) = woken.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(why, Woken::Readable);
    }

    #[test]
    fn silent_clients_come_back_at_their_deadlines_in_order() {
        let (room, woken) = room();
        let start = Instant::now();
        let mut clients = Vec::new();
        for (item, millis) in [(2, 300), (1, 150)] {
            let (client, server) = pair();
            clients.push(client);
            room.park(server, start + Duration::from_millis(millis), item);
        }
        let (first, why, at) = woken.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((first, why), (1, Woken::Deadline));
        assert!(at >= start + Duration::from_millis(150));
        let (second, _, at) = woken.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(second, 2);
        assert!(at >= start + Duration::from_millis(300));
        assert!(
            at < start + Duration::from_millis(600),
            "late: {:?}",
            at - start
        );
    }

    #[test]
    fn the_thread_ends_with_the_last_handle() {
        let (room, woken) = room();
        drop(room);
        // The wake function (and its sender) goes with the thread.
        assert_eq!(
            woken.recv_timeout(Duration::from_secs(2)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn closing_drops_every_parked_client() {
        let (room, woken) = room();
        let (mut client, server) = pair();
        room.park(server, Instant::now() + Duration::from_millis(200), 1);
        std::thread::sleep(Duration::from_millis(50));
        room.close();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut client, &mut byte).unwrap(), 0);
        assert!(woken.recv_timeout(Duration::from_millis(400)).is_err());
    }
}
