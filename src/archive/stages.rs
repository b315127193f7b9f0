//! Running a pipeline's two stages on their own threads while the calling thread reports progress
//! (so progress sinks never need to be thread-safe), and telling which stage's error came first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::cause::{is_pipe_error, panic_text};
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

/// Runs both stages to their end and returns both results; a panic becomes an internal error.
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
        (
            a.join().unwrap_or_else(|p| panicked(phase, p)),
            b.join().unwrap_or_else(|p| panicked(phase, p)),
        )
    })
}

fn panicked<T>(phase: &str, payload: Box<dyn std::any::Any + Send>) -> Result<T, ArchiveError> {
    Err(ArchiveError::Internal(format!(
        "a pipeline thread panicked while {phase}: {}",
        panic_text(payload.as_ref())
    )))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Quiet;

    #[test]
    fn a_panicking_stage_is_an_internal_error_and_its_neighbours_pipe_error_is_not_told() {
        let counters = Counters::default();
        let (tx, mut rx) = super::super::pipe::pipe(16, 2);
        let (a, b) = run(
            "testing",
            &counters,
            &Quiet,
            move || -> Result<(), ArchiveError> {
                let _tx = tx;
                panic!("boom")
            },
            move || {
                let mut sink = Vec::new();
                std::io::Read::read_to_end(&mut rx, &mut sink)
                    .map(drop)
                    .map_err(|e| ArchiveError::io("reading", e))
            },
        );
        let e = first_cause(a, b).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Internal(t) if t.contains("testing") && t.contains("boom")),
            "{e}"
        );
    }
}
