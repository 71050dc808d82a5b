//! Log lines on their way to stderr, written in batches.
//!
//! On a flood every refused client is three lines (`CONNECT`,
//! `DENYLISTED`, `DISCONNECT`). Written one `write(2)` each, the lines
//! cost more than the refusal. Here a line is copied into one shared
//! buffer under a lock held only for that copy, with no allocation (the
//! buffer keeps its room), and the serving threads never write at all: a
//! writer thread of its own wakes when a line comes while it sleeps,
//! gathers for up to [`GATHER_FOR`] (or [`GATHER_AT_MOST`] bytes), and
//! writes the batch. While lines keep coming it writes every
//! [`GATHER_FOR`] without being woken (a wake-up is a system call for the
//! thread that logs, and a switch for the writer), and sleeps again after
//! a tick without a line. So a line reaches stderr at most [`GATHER_FOR`]
//! late, and a refusal costs a hundredth of a `write(2)` at a moderate rate
//! too, where a client's lines arrive alone (measured in
//! `bench/README.md`).
//! [`flush`] writes what is pending at once (before the process exits).
//!
//! Without the writer thread (it could not start), the thread that logs
//! writes what is pending unless another is writing, which then takes the
//! line with its next batch (group commit).
//!
//! Memory is bounded: past [`MAX_PENDING`] bytes (stderr blocked), lines
//! are counted and dropped, and the count is written once stderr takes
//! lines again.
//!
//! It touches nothing but the lock helper and stderr.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use crate::locks::lock;

/// Past this many pending bytes lines are dropped (and counted).
pub const MAX_PENDING: usize = 4 * 1024 * 1024;
/// A batch buffer this big is given back after use.
const KEEP_AT_MOST: usize = 1024 * 1024;
/// The writer thread writes once this many bytes are pending: at 2,000
/// refusals a second a tick gathers about 30 KiB of lines, so a batch goes
/// out on the tick, without waking the writer, below about 4,000 a second.
pub const GATHER_AT_MOST: usize = 64 * 1024;
/// The writer thread writes once the oldest pending line is this old (and,
/// while lines keep coming, this long after its last write). Each tick is
/// a wake-up and a `write(2)` for the writer: at 2,000 refusals a second
/// the writer took 0.0023 ms of CPU per refusal with 10 ms ticks and
/// 0.0007 ms with 50 ms (`bench/README.md`), while a log reader such as
/// fail2ban counts lines over windows of seconds.
pub const GATHER_FOR: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    dropped: u64,
    /// When the oldest pending line came.
    since: Option<Instant>,
    /// The writer thread waits for a line to wake it.
    asleep: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.dropped == 0
    }
}

/// Where batches go, and the batch being written.
struct Output<W> {
    out: W,
    batch: Vec<u8>,
}

/// The shared buffer in front of `W`.
pub struct LineBuffer<W> {
    pending: Mutex<Pending>,
    /// Signalled when a line comes while the writer sleeps, or the buffer
    /// comes to hold [`GATHER_AT_MOST`] bytes.
    arrived: Condvar,
    /// Whether a writer thread takes the lines.
    has_writer: AtomicBool,
    /// How long the writer gathers lines: [`GATHER_FOR`].
    gather_for: Duration,
    /// How many times a line woke the writer.
    #[cfg(test)]
    woken: std::sync::atomic::AtomicUsize,
    /// Whoever holds it writes.
    output: Mutex<Output<W>>,
}

static STDERR: OnceLock<Arc<LineBuffer<io::Stderr>>> = OnceLock::new();

/// The process's buffer in front of stderr, with its writer thread.
pub fn stderr() -> Arc<LineBuffer<io::Stderr>> {
    Arc::clone(STDERR.get_or_init(|| {
        let buffer = Arc::new(LineBuffer::new(io::stderr()));
        // Without the thread, lines are written by whoever logs them.
        let _ = LineBuffer::start_writer(&buffer);
        buffer
    }))
}

/// Writes what is pending for stderr now (before the process exits).
pub fn flush() {
    if let Some(buffer) = STDERR.get() {
        buffer.write_pending(true);
    }
}

impl<W: Write> LineBuffer<W> {
    /// A buffer in front of `out`, written by whoever logs until
    /// [`LineBuffer::start_writer`].
    pub fn new(out: W) -> Self {
        Self::gathering_for(out, GATHER_FOR)
    }

    /// A buffer whose writer gathers for `gather_for`.
    fn gathering_for(out: W, gather_for: Duration) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            arrived: Condvar::new(),
            has_writer: AtomicBool::new(false),
            gather_for,
            #[cfg(test)]
            woken: std::sync::atomic::AtomicUsize::new(0),
            output: Mutex::new(Output {
                out,
                batch: Vec::new(),
            }),
        }
    }

    /// Copies one line in. With a writer thread, wakes it if it sleeps
    /// (or the line fills a batch); without, writes what is pending unless
    /// another thread is writing.
    pub fn push(&self, line: &[u8]) {
        // Read before the lock: a writer starting meanwhile may be asleep
        // already, and the next line wakes it.
        let has_writer = self.has_writer.load(Ordering::Relaxed);
        let wake = {
            let mut pending = lock(&self.pending);
            let before = pending.lines.len();
            if before + line.len() > MAX_PENDING {
                pending.dropped += 1;
            } else {
                if before == 0 {
                    pending.since = Some(Instant::now());
                }
                pending.lines.extend_from_slice(line);
            }
            // A writer that is writing or ticking looks at the buffer again
            // anyway.
            has_writer
                && (std::mem::take(&mut pending.asleep)
                    || (before < GATHER_AT_MOST && pending.lines.len() >= GATHER_AT_MOST))
        };
        if !has_writer {
            self.write_pending(false);
        } else if wake {
            #[cfg(test)]
            self.woken.fetch_add(1, Ordering::Relaxed);
            self.arrived.notify_one();
        }
    }

    /// Writes batches while there are lines. Unless `wait`, it leaves at
    /// once when another thread is writing; a writer looks again after it
    /// lets go, so a line added while it wrote is never left behind.
    fn write_pending(&self, wait: bool) {
        loop {
            let mut output = match self.output.try_lock() {
                Ok(output) => output,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) if wait => lock(&self.output),
                Err(TryLockError::WouldBlock) => return,
            };
            let Output { out, batch } = &mut *output;
            let dropped = {
                let mut pending = lock(&self.pending);
                std::mem::swap(&mut pending.lines, batch);
                pending.since = None;
                std::mem::take(&mut pending.dropped)
            };
            if batch.is_empty() && dropped == 0 {
                return;
            }
            let _ = out.write_all(batch);
            if dropped > 0 {
                let _ = writeln!(
                    out,
                    "warning: {dropped} log lines dropped: stderr was blocked"
                );
            }
            let _ = out.flush();
            batch.clear();
            if batch.capacity() > KEEP_AT_MOST {
                *batch = Vec::new();
            }
            drop(output);
            if lock(&self.pending).is_empty() {
                return;
            }
        }
    }
}

impl<W: Write + Send + 'static> LineBuffer<W> {
    /// Starts the thread that writes `buffer`'s batches (it lives as long
    /// as the process).
    pub fn start_writer(buffer: &Arc<Self>) -> io::Result<()> {
        let writer = Arc::clone(buffer);
        std::thread::Builder::new()
            .name("log-writer".to_string())
            .spawn(move || writer.write_batches())?;
        buffer.has_writer.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The writer thread: sleeps until a first line, then writes a batch
    /// each tick until a tick passes without a line.
    fn write_batches(&self) {
        let mut pending = lock(&self.pending);
        // When the tick began; `None` while asleep.
        let mut tick: Option<Instant> = None;
        loop {
            while pending.is_empty() && tick.is_none() {
                pending.asleep = true;
                pending = wait(self.arrived.wait(pending));
            }
            pending.asleep = false;
            // A line that came just before the tick began is not kept
            // longer than one that woke the writer.
            let began = match (tick, pending.since) {
                (Some(tick), Some(since)) => tick.min(since),
                (tick, since) => tick.or(since).unwrap_or_else(Instant::now),
            };
            let deadline = began + self.gather_for;
            while pending.lines.len() < GATHER_AT_MOST && pending.dropped == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                pending = match self.arrived.wait_timeout(pending, left) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            if pending.is_empty() {
                tick = None;
                continue;
            }
            drop(pending);
            self.write_pending(true);
            pending = lock(&self.pending);
            tick = Some(Instant::now());
        }
    }
}

/// The guard back from a condition variable's wait, even if a thread
/// panicked holding the lock (the buffer holds bytes, never a broken
/// invariant).
fn wait<'a, T>(
    result: Result<MutexGuard<'a, T>, std::sync::PoisonError<MutexGuard<'a, T>>>,
) -> MutexGuard<'a, T> {
    result.unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<W: Write> io::Write for &LineBuffer<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.push(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hands `tracing_subscriber` the process's stderr buffer.
#[derive(Clone)]
pub struct BufferedStderr(pub Arc<LineBuffer<io::Stderr>>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = &'a LineBuffer<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output that counts its writes.
    #[derive(Default)]
    struct Counted {
        bytes: Vec<u8>,
        writes: usize,
        last_write: Option<Instant>,
    }

    impl Write for Counted {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.last_write = Some(Instant::now());
            self.bytes.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn written(buffer: &LineBuffer<Counted>) -> (String, usize) {
        let output = lock(&buffer.output);
        (
            String::from_utf8(output.out.bytes.clone()).unwrap(),
            output.out.writes,
        )
    }

    #[test]
    fn without_the_writer_a_line_alone_is_written_before_the_call_returns() {
        let buffer = LineBuffer::new(Counted::default());
        buffer.push(b"one\n");
        assert_eq!(written(&buffer), ("one\n".to_string(), 1));
        buffer.push(b"two\n");
        assert_eq!(written(&buffer), ("one\ntwo\n".to_string(), 2));
    }

    /// Waits until `buffer` has written `bytes` bytes; returns what and in
    /// how many writes.
    fn written_at_last(buffer: &LineBuffer<Counted>, bytes: usize) -> (String, usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (text, writes) = written(buffer);
            if text.len() >= bytes || Instant::now() > deadline {
                return (text, writes);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_writer_thread_writes_a_floods_lines_in_a_few_batches_in_order() {
        let buffer = Arc::new(LineBuffer::new(Counted::default()));
        LineBuffer::start_writer(&buffer).unwrap();
        let mut expected = String::new();
        for client in 0..200 {
            for event in ["CONNECT", "DENYLISTED", "DISCONNECT"] {
                let line = format!("{event} {client}\n");
                buffer.push(line.as_bytes());
                expected.push_str(&line);
            }
            if client % 20 == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let (text, writes) = written_at_last(&buffer, expected.len());
        assert_eq!(text, expected);
        assert!(writes <= 20, "600 lines in {writes} writes");
    }

    #[test]
    fn a_line_alone_goes_out_once_gathered_and_flush_writes_at_once() {
        let buffer = Arc::new(LineBuffer::new(Counted::default()));
        LineBuffer::start_writer(&buffer).unwrap();
        let pushed = Instant::now();
        buffer.push(b"one\n");
        assert_eq!(written_at_last(&buffer, 4), ("one\n".to_string(), 1));
        assert!(pushed.elapsed() < Duration::from_secs(1));
        // Whatever the writer does now, flush writes at once.
        {
            let mut pending = lock(&buffer.pending);
            pending.lines.extend_from_slice(b"two\n");
        }
        buffer.write_pending(true);
        assert_eq!(written(&buffer), ("one\ntwo\n".to_string(), 2));
    }

    /// Waits until `buffer`'s writer is asleep or not, as `asleep` says;
    /// returns whether it came to that within 5 s.
    fn writer_comes_to(buffer: &LineBuffer<Counted>, asleep: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if lock(&buffer.pending).asleep == asleep {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn while_lines_keep_coming_the_writer_writes_each_tick_unwoken() {
        let tick = Duration::from_millis(400);
        let buffer = Arc::new(LineBuffer::gathering_for(Counted::default(), tick));
        LineBuffer::start_writer(&buffer).unwrap();
        let woken = || buffer.woken.load(Ordering::Relaxed);
        let mut expected = String::new();
        // A loaded machine may stall this thread past a tick: an attempt
        // counts only if the line came within half a tick of the batch.
        let mut counted = 0;
        for attempt in 0..10 {
            assert!(writer_comes_to(&buffer, true), "attempt {attempt}");
            let first = format!("first {attempt}\n");
            let before = woken();
            buffer.push(first.as_bytes());
            expected.push_str(&first);
            assert_eq!(woken(), before + 1, "a sleeping writer is woken");
            assert_eq!(written_at_last(&buffer, expected.len()).0, expected);
            let batch = lock(&buffer.output).out.last_write;
            let second = format!("second {attempt}\n");
            buffer.push(second.as_bytes());
            let pushed = Instant::now();
            expected.push_str(&second);
            let ticking = batch.is_some_and(|at| pushed.duration_since(at) < tick / 2);
            assert_eq!(written_at_last(&buffer, expected.len()).0, expected);
            if ticking {
                assert_eq!(woken(), before + 1, "a line during a tick woke the writer");
                assert!(pushed.elapsed() < tick * 5, "{:?}", pushed.elapsed());
                counted += 1;
                if counted == 2 {
                    return;
                }
            }
        }
        panic!("only {counted} attempts came within half a tick");
    }

    #[test]
    fn lines_that_come_during_a_write_go_out_together_in_order() {
        let buffer = LineBuffer::new(Counted::default());
        {
            // Another thread is writing.
            let _writing = lock(&buffer.output);
            for n in 0..100 {
                buffer.push(format!("line {n}\n").as_bytes());
            }
        }
        buffer.push(b"last\n");
        let expected: String = (0..100)
            .map(|n| format!("line {n}\n"))
            .chain(["last\n".to_string()])
            .collect();
        assert_eq!(written(&buffer), (expected, 1));
    }

    #[test]
    fn many_threads_lose_no_line() {
        let buffer = Arc::new(LineBuffer::new(Counted::default()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let buffer = Arc::clone(&buffer);
                std::thread::spawn(move || {
                    for n in 0..1000 {
                        buffer.push(format!("{t} {n}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let (text, _) = written(&buffer);
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{t} ")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|n| format!("{t} {n}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines in order");
        }
    }

    #[test]
    fn a_blocked_stderr_costs_at_most_the_cap_and_the_loss_is_told() {
        let buffer = LineBuffer::new(Counted::default());
        let line = [&[b'x'; 1023][..], b"\n"].concat();
        {
            let _writing = lock(&buffer.output);
            for _ in 0..(MAX_PENDING / 1024 + 10) {
                buffer.push(&line);
            }
            assert!(lock(&buffer.pending).lines.len() <= MAX_PENDING);
        }
        buffer.push(b"");
        let (text, _) = written(&buffer);
        assert!(
            text.ends_with("warning: 10 log lines dropped: stderr was blocked\n"),
            "{}",
            &text[text.len() - 80..]
        );
    }
}
