//! Log lines on their way to stderr, written in batches.
//!
//! On a flood every refused client is three lines (`CONNECT`,
//! `DENYLISTED`, `DISCONNECT`). Written one `write(2)` each, the lines
//! cost more than the refusal. Here a line is copied into one shared
//! buffer under a lock held only for that copy, with no allocation (the
//! buffer keeps its room), and one thread writes it at once: a line alone
//! goes out alone, and lines that come while a write is under way go out
//! together in the next (group commit), so a flood's lines take a write
//! per batch, not per line. Memory is bounded: past [`MAX_PENDING`]
//! bytes (stderr blocked), lines are counted and dropped, and the count is
//! written once stderr takes lines again.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

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

/// The shared buffer; a `MakeWriter` for `tracing_subscriber`.
#[derive(Default)]
pub struct LineBuffer {
    pending: Mutex<Pending>,
    /// Held while a batch is taken and written, so batches keep their order.
    writing: Mutex<Vec<u8>>,
    wake: Condvar,
}

static STDERR: OnceLock<Arc<LineBuffer>> = OnceLock::new();

/// The process's buffer for stderr, its writer thread started on first use.
pub fn stderr() -> Arc<LineBuffer> {
    Arc::clone(STDERR.get_or_init(|| {
        let buffer = Arc::new(LineBuffer::default());
        let writer = Arc::clone(&buffer);
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.write_forever(&mut io::stderr()));
        if started.is_err() {
            // No thread: lines wait (up to the cap) for `flush` at exit;
            // say so where it can still be seen.
            let _ = writeln!(io::stderr(), "warning: log writer thread did not start");
        }
        buffer
    }))
}

/// Writes every pending line to stderr now (before the process exits).
pub fn flush() {
    if let Some(buffer) = STDERR.get() {
        buffer.write_batch(&mut io::stderr());
    }
}

impl LineBuffer {
    /// Copies one line in.
    pub fn push(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        let was_empty = pending.lines.is_empty();
        if pending.lines.len() + line.len() > MAX_PENDING {
            pending.dropped += 1;
            return;
        }
        pending.lines.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.wake.notify_one();
        }
    }

    fn write_forever(&self, out: &mut impl Write) {
        loop {
            {
                let mut pending = lock(&self.pending);
                while pending.lines.is_empty() && pending.dropped == 0 {
                    pending = self
                        .wake
                        .wait(pending)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
            self.write_batch(out);
        }
    }

    /// Takes what is pending and writes it to `out`, in order.
    fn write_batch(&self, out: &mut impl Write) {
        let mut batch = lock(&self.writing);
        let dropped = {
            let mut pending = lock(&self.pending);
            std::mem::swap(&mut pending.lines, &mut *batch);
            std::mem::take(&mut pending.dropped)
        };
        let _ = out.write_all(&batch);
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
    }
}

impl io::Write for &LineBuffer {
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
pub struct BufferedStderr(pub Arc<LineBuffer>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = &'a LineBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_come_out_whole_and_in_order() {
        let buffer = LineBuffer::default();
        for n in 0..1000 {
            buffer.push(format!("line {n}\n").as_bytes());
        }
        let mut out = Vec::new();
        buffer.write_batch(&mut out);
        let text = String::from_utf8(out).unwrap();
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_blocked_stderr_costs_at_most_the_cap_and_the_loss_is_told() {
        let buffer = LineBuffer::default();
        let line = [b'x'; 1023];
        for _ in 0..(MAX_PENDING / 1024 + 10) {
            buffer.push(&[&line[..], b"\n"].concat());
        }
        assert!(lock(&buffer.pending).lines.len() <= MAX_PENDING);
        let mut out = Vec::new();
        buffer.write_batch(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("warning: 10 log lines dropped: stderr was blocked\n"),
            "{}",
            &text[text.len() - 80..]
        );
    }

    #[test]
    fn the_writer_thread_writes_at_once() {
        let buffer = stderr();
        buffer.push(b"doorman logbuffer test line\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !lock(&buffer.pending).lines.is_empty() {
            assert!(std::time::Instant::now() < deadline, "not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
