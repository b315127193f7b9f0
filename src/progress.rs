//! Progress of a long run (files and bytes done, rate, and once the total is known, how far
//! along it is and the time left), reported to whoever started it: stderr for the CLI (a live bar
//! on a terminal), `action-log` for the charm. Commands report often; [`Throttled`] passes on at
//! most one report per interval. A [`Gauge`] is how a command that knows the total (the tree's
//! size for a create, the object's for a restore) adds it to the reports.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::units::{human_bytes, human_rate};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    pub phase: &'static str,
    pub files: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// How far along the run is (0..=1), once its total is known.
    pub fraction: Option<f64>,
    /// The total the fraction is of, in bytes, for the line (what the bytes above count).
    pub total_bytes: Option<u64>,
}

impl Progress {
    /// `backing up: 45%, 1095 files, 674.0 MiB of 1.5 GiB (316.8 MiB/s), about 2 min left`
    pub fn line(&self) -> String {
        let rate = human_rate(self.bytes, self.elapsed);
        let of = self
            .total_bytes
            .map(|t| format!(" of {}", human_bytes(t)))
            .unwrap_or_default();
        let done = format!("{} files, {}{of} ({rate})", self.files, human_bytes(self.bytes));
        match (self.percent(), self.time_left()) {
            (Some(pct), Some(left)) => format!("{}: {pct}%, {done}, {} left", self.phase, human_duration(left)),
            (Some(pct), None) => format!("{}: {pct}%, {done}", self.phase),
            _ => format!("{}: {done}", self.phase),
        }
    }

    /// Whole percent done, when the total is known.
    pub fn percent(&self) -> Option<u32> {
        self.fraction.map(|f| (f.clamp(0.0, 1.0) * 100.0).floor() as u32)
    }

    /// The time left at the pace so far (once there is a pace to go by).
    pub fn time_left(&self) -> Option<Duration> {
        let f = self.fraction?.clamp(0.0, 1.0);
        if f < 0.01 || self.elapsed < Duration::from_secs(1) {
            return None;
        }
        Some(self.elapsed.mul_f64((1.0 - f) / f))
    }
}

/// `45 s`, `3 min`, `1 h 20 min`: a rough time left.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("about {s} s"),
        60..=3599 => format!("about {} min", s.div_ceil(60)),
        _ => format!("about {} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// A shared measure of how far a run is: `done` of `total`, written by whatever knows them
/// (a thread summing the tree's size, a counting reader on the download). A total of 0 is
/// "not known yet".
#[derive(Debug, Default)]
pub struct Gauge {
    done: AtomicU64,
    total: AtomicU64,
}

impl Gauge {
    pub fn new() -> Arc<Gauge> {
        Arc::new(Gauge::default())
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    fn total(&self) -> Option<u64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }
}

/// What a gauge measures a run by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// The report's own bytes (files' bytes done) against the gauge's total.
    ReportedBytes,
    /// The gauge's own count (bytes of the object downloaded) against its total.
    GaugeCount,
}

/// Adds a gauge's fraction to every report passing through.
pub struct WithGauge<'a> {
    inner: &'a dyn ProgressSink,
    gauge: Arc<Gauge>,
    measure: Measure,
}

impl<'a> WithGauge<'a> {
    pub fn new(inner: &'a dyn ProgressSink, gauge: Arc<Gauge>, measure: Measure) -> Self {
        WithGauge { inner, gauge, measure }
    }
}

impl ProgressSink for WithGauge<'_> {
    fn report(&self, p: &Progress) {
        let mut p = *p;
        if let Some(total) = self.gauge.total() {
            let done = match self.measure {
                Measure::ReportedBytes => p.bytes,
                Measure::GaugeCount => self.gauge.done.load(Ordering::Relaxed),
            };
            p.fraction = Some((done as f64 / total as f64).min(1.0));
            if self.measure == Measure::ReportedBytes {
                p.total_bytes = Some(total);
            }
        }
        self.inner.report(&p);
    }

    fn shown(&self) -> bool {
        self.inner.shown()
    }
}

/// A reader that counts what passes through into a gauge (the download of a restore).
pub struct CountInto<R> {
    inner: R,
    gauge: Arc<Gauge>,
}

impl<R> CountInto<R> {
    pub fn new(inner: R, gauge: Arc<Gauge>) -> Self {
        CountInto { inner, gauge }
    }
}

impl<R: std::io::Read> std::io::Read for CountInto<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.gauge.add_done(n as u64);
        Ok(n)
    }
}

pub trait ProgressSink {
    fn report(&self, p: &Progress);

    /// Whether anything is shown: a sink that shows nothing spares the caller work done only for
    /// it (a second walk of the tree to learn its size).
    fn shown(&self) -> bool {
        true
    }
}

/// Reports nothing.
pub struct Quiet;

impl ProgressSink for Quiet {
    fn report(&self, _: &Progress) {}

    fn shown(&self) -> bool {
        false
    }
}

/// `SYNAPSE_BACKUP_PROGRESS_EVERY_MS` overrides how often progress is reported (the CLI's 2 s,
/// or 250 ms on a terminal; the charm's 5 s).
pub const EVERY_ENV: &str = "SYNAPSE_BACKUP_PROGRESS_EVERY_MS";

/// How often to report: `default`, unless [`EVERY_ENV`] says otherwise.
pub fn every(default: Duration) -> Duration {
    std::env::var(EVERY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(default)
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

    fn shown(&self) -> bool {
        self.inner.shown()
    }
}

impl<F: Fn(&Progress)> ProgressSink for F {
    fn report(&self, p: &Progress) {
        self(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_how_far_and_how_long_once_the_total_is_known() {
        let mut p = Progress {
            phase: "backing up",
            files: 1095,
            bytes: 674 << 20,
            elapsed: Duration::from_secs(2),
            ..Default::default()
        };
        assert_eq!(p.line(), "backing up: 1095 files, 674.0 MiB (337.0 MiB/s)");
        let gauge = Gauge::new();
        gauge.set_total(1348 << 20);
        let seen = std::cell::RefCell::new(Vec::new());
        let sink = |p: &Progress| seen.borrow_mut().push(p.line());
        WithGauge::new(&sink, gauge.clone(), Measure::ReportedBytes).report(&p);
        assert_eq!(
            seen.borrow()[0],
            "backing up: 50%, 1095 files, 674.0 MiB of 1.3 GiB (337.0 MiB/s), about 2 s left"
        );
        p.phase = "restoring";
        gauge.add_done(1348 << 19);
        WithGauge::new(&sink, gauge, Measure::GaugeCount).report(&p);
        assert!(
            seen.borrow()[1].starts_with("restoring: 50%, 1095 files, 674.0 MiB ("),
            "{}",
            seen.borrow()[1]
        );
    }
}
