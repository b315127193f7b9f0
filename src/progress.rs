//! Progress of a long run (bytes and files done, rate), reported to whoever started it: stderr
//! for the CLI, `action-log` for the charm. Commands report often; [`Throttled`] passes on at
//! most one report per interval, plus the last.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::units::{human_bytes, human_rate};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub phase: &'static str,
    pub files: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn line(&self) -> String {
        format!(
            "{}: {} files, {} ({})",
            self.phase,
            self.files,
            human_bytes(self.bytes),
            human_rate(self.bytes, self.elapsed)
        )
    }
}

pub trait ProgressSink {
    fn report(&self, p: &Progress);
}

/// Reports nothing.
pub struct Quiet;

impl ProgressSink for Quiet {
    fn report(&self, _: &Progress) {}
}

/// Passes on at most one report per `every`.
pub struct Throttled<S> {
    inner: S,
    every: Duration,
    last: Cell<Option<Instant>>,
}

impl<S: ProgressSink> Throttled<S> {
    pub fn new(inner: S, every: Duration) -> Self {
        Throttled {
            inner,
            every,
            last: Cell::new(None),
        }
    }
}

impl<S: ProgressSink> ProgressSink for Throttled<S> {
    fn report(&self, p: &Progress) {
        let now = Instant::now();
        match self.last.get() {
            Some(t) if now.duration_since(t) < self.every => {}
            Some(_) => {
                self.last.set(Some(now));
                self.inner.report(p);
            }
            // the first report only starts the clock: short runs stay silent
            None => self.last.set(Some(now)),
        }
    }
}

impl<F: Fn(&Progress)> ProgressSink for F {
    fn report(&self, p: &Progress) {
        self(p)
    }
}
