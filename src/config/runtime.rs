//! The `[runtime]` section: how connections are spread over threads.

use doorman_gate_api::SectionError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most threads `[runtime] threads` may ask for.
pub const MAX_THREADS: usize = 256;

/// How the threads share the connections.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ThreadModel {
    /// One single-threaded runtime per thread, each with a listening socket
    /// of its own (`SO_REUSEPORT`): the kernel spreads new connections over
    /// the threads, and a connection stays on the thread that accepted it.
    #[default]
    PerCore,
    /// One runtime whose worker threads take each other's tasks (tokio's
    /// multi-threaded scheduler), with one listening socket.
    Shared,
}

/// The `[runtime]` section.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// How the threads share the connections: `per-core`: a listening
    /// socket per serving thread (`SO_REUSEPORT`), each thread its own
    /// runtime, a connection stays on the thread that accepted it;
    /// `shared`: one socket, worker threads that take each other's tasks
    /// (see `bench/RESULTS.md`).
    #[serde(default)]
    pub model: ThreadModel,
    /// How many threads serve connections; 0: one per core.
    #[serde(default)]
    #[schemars(range(max = MAX_THREADS))]
    pub threads: usize,
}

impl RuntimeSection {
    /// Checks the thread count.
    pub fn check(&self) -> Result<(), SectionError> {
        if self.threads > MAX_THREADS {
            return Err(SectionError::key(
                "threads",
                format!("threads = {}: at most {MAX_THREADS}", self.threads),
            ));
        }
        Ok(())
    }

    /// How many threads serve connections: `threads`, or one per core.
    pub fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        }
    }
}
