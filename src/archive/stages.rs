//! Running a pipeline's two stages on their own threads while the calling thread reports progress
//! (so progress sinks never need to be thread-safe), and telling which stage's error came first.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ArchiveError;
use crate::progress::{Progress, ProgressSink};

/// Files and bytes done, written by a stage, read by the progress reporter.
#[derive(Default)]
pub(super) struct Counters {
    files: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    pub fn set(&self, files: u64, bytes: u64) {
        self.files.store(files, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Runs both stages to their end and returns both results; a panic becomes an error.
pub(super) fn run<A: Send, B: Send>(
    phase: &'static str,
    counters: &Counters,
    progress: &dyn ProgressSink,
    first: impl FnOnce() -> Result<A, ArchiveError> + Send,
    second: impl FnOnce() -> Result<B, ArchiveError> + Send,
) -> (Result<A, ArchiveError>, Result<B, ArchiveError>) {
    let started = Instant::now();
    std::thread::scope(|s| {
        let a = s.spawn(first);
        let b = s.spawn(second);
        while !(a.is_finished() && b.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            progress.report(&Progress {
                phase,
                files: counters.files(),
                bytes: counters.bytes(),
                elapsed: started.elapsed(),
                ..Default::default()
            });
        }
        let panicked = || ArchiveError::Refused(format!("a pipeline thread panicked while {phase}"));
        (
            a.join().unwrap_or_else(|_| Err(panicked())),
            b.join().unwrap_or_else(|_| Err(panicked())),
        )
    })
}

/// Of two stages' errors, the one that caused the other: a stage that only saw its neighbour stop
/// reports a pipe error.
pub(super) fn first_cause(a: Result<(), ArchiveError>, b: Result<(), ArchiveError>) -> Result<(), ArchiveError> {
    match (a, b) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(if is_pipe_error(&a) { b } else { a }),
    }
}

fn is_pipe_error(e: &ArchiveError) -> bool {
    let io = match e {
        ArchiveError::Io { source, .. } => source,
        _ => return false,
    };
    matches!(io.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof)
        && io.to_string().contains("stage of the pipeline")
}
