//! Log lines on their way to stderr, written in batches.
//!
//! On a flood every refused client is three lines (`CONNECT`,
//! `DENYLISTED`, `DISCONNECT`). Written one `write(2)` each, the lines
//! cost more than the refusal. Here a line is copied into one shared
//! buffer under a lock held only for that copy, with no allocation (the
//! buffer keeps its room). Then, if no other thread is writing, this one
//! writes what is pending; if one is, it leaves at once, and that writer
//! takes the line with its next batch (group commit). A line alone goes out
//! before its logging call returns, as an unbuffered stderr would, and a
//! flood's lines take a write per batch, not per line. Memory is bounded:
//! past [`MAX_PENDING`] bytes (stderr blocked), lines are counted and
//! dropped, and the count is written once stderr takes lines again.
//!
//! It touches nothing but the lock helper and stderr.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

use crate::locks::lock;

/// Past this many pending bytes lines are dropped (and counted).
pub const MAX_PENDING: usize = 4 * 1024 * 1024;
/// A batch buffer this big is given back after use.
const KEEP_AT_MOST: usize = 1024 * 1024;

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    dropped: u64,
}

/// Where batches go, and the batch being written.
struct Output<W> {
    out: W,
    batch: Vec<u8>,
}

/// The shared buffer in front of `W`.
pub struct LineBuffer<W> {
    pending: Mutex<Pending>,
    /// Whoever holds it writes; nobody waits for it.
    output: Mutex<Output<W>>,
}

static STDERR: OnceLock<Arc<LineBuffer<io::Stderr>>> = OnceLock::new();

/// The process's buffer in front of stderr.
pub fn stderr() -> Arc<LineBuffer<io::Stderr>> {
    Arc::clone(STDERR.get_or_init(|| Arc::new(LineBuffer::new(io::stderr()))))
}

/// Writes what is pending for stderr (before the process exits), unless
/// another thread is writing it.
pub fn flush() {
    if let Some(buffer) = STDERR.get() {
        buffer.write_pending();
    }
}

impl<W: Write> LineBuffer<W> {
    /// A buffer in front of `out`.
    pub fn new(out: W) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            output: Mutex::new(Output {
                out,
                batch: Vec::new(),
            }),
        }
    }

    /// Copies one line in, and writes it unless another thread is writing.
    pub fn push(&self, line: &[u8]) {
        {
            let mut pending = lock(&self.pending);
            if pending.lines.len() + line.len() > MAX_PENDING {
                pending.dropped += 1;
            } else {
                pending.lines.extend_from_slice(line);
            }
        }
        self.write_pending();
    }

    /// Writes batches while there are lines and no other writer. A writer
    /// looks again after it lets go, so a line added while it wrote (whose
    /// thread found the output taken) is never left behind.
    fn write_pending(&self) {
        loop {
            let mut output = match self.output.try_lock() {
                Ok(output) => output,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            let Output { out, batch } = &mut *output;
            let dropped = {
                let mut pending = lock(&self.pending);
                std::mem::swap(&mut pending.lines, batch);
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
            let pending = lock(&self.pending);
            if pending.lines.is_empty() && pending.dropped == 0 {
                return;
            }
        }
    }
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
    }

    impl Write for Counted {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.writes += 1;
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
    fn a_line_alone_is_written_before_the_call_returns() {
        let buffer = LineBuffer::new(Counted::default());
        buffer.push(b"one\n");
        assert_eq!(written(&buffer), ("one\n".to_string(), 1));
        buffer.push(b"two\n");
        assert_eq!(written(&buffer), ("one\ntwo\n".to_string(), 2));
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
