//! A backup read as a stream of consecutive byte ranges, fetched by ranged GETs on the store's
//! runtime and handed to the restore pipeline's (blocking) reader strictly in order.
//!
//! The first GET asks for the first range and tells the object's size and ETag; an object no larger
//! than one range is that one GET. Past it, every range that starts within
//! `(ranges_in_flight - 1) × range_size` bytes beyond what the reader has taken has its GET sent by
//! its own task, and no task takes in a byte beyond `held_ahead`: a task that gets ahead waits with
//! the rest of its answer unread. What is taken in is copied out of hyper's frames into 256 KiB
//! chunks from a shared pool, so hyper's read buffers are reused at once and what is held is what
//! the window allows. Every later GET is pinned with `If-Match` and its answer checked (ETag,
//! Content-Range), so a replaced object is never spliced in. When a connection drops, or a stream
//! ends before its range does, the range is asked again from its first missing byte, with
//! back-off, before giving up. Dropping the reader aborts every range task.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::client::{causes, status, store_error, Context};
use super::Target;
use crate::store::StoreError;

/// Attempts to resume a range after a dropped connection without any progress in between.
const RESUME_ATTEMPTS: u32 = 5;
/// Bytes a range task gathers into one chunk before waking the reader (hyper's frames are often
/// a few KiB).
const CHUNK: usize = 256 << 10;

/// How a download is split into ranged GETs. One GET is limited by its connection's speed (on S3
/// as on s3s-fs, ~30–40 MB/s per connection here), so many are in flight; what bounds memory is
/// `held_ahead`, the bytes the range tasks may take in ahead of the reader. A GET beyond that waits
/// with its answer unread: the kernel's socket buffer holds what the server sent meanwhile (at most
/// its range), and the server's writes wait. The defaults, 20 GETs of 2 MiB with 16 MiB held, keep a
/// whole `restore` under 64 MiB RSS with a margin (55 MiB measured). Against s3s-fs on 2 cores the
/// download alone of 764 MB took 2.8–3.1 s, against 3.2–4.2 s for nine GETs with all of their
/// bytes held (docs/performance.md). Tests use small ranges to exercise many of them.
#[derive(Debug, Clone, Copy)]
pub struct DownloadTuning {
    /// Bytes per ranged GET; an object no larger is one GET.
    pub range_size: u64,
    /// Ranged GETs in flight at most (at least 2): every range that starts within
    /// `(ranges_in_flight - 1) × range_size` of the reader has its GET sent.
    pub ranges_in_flight: usize,
    /// Bytes the range tasks may take in beyond what the reader has taken (at least one range). A
    /// GET further ahead waits with its answer unread, which the kernel's socket buffer holds.
    pub held_ahead: u64,
    /// The pause before resuming a dropped range; it doubles with each attempt that brings nothing.
    pub resume_delay: Duration,
}

impl Default for DownloadTuning {
    fn default() -> Self {
        DownloadTuning {
            range_size: 2 << 20,
            ranges_in_flight: 20,
            held_ahead: 16 << 20,
            resume_delay: Duration::from_millis(500),
        }
    }
}

impl DownloadTuning {
    /// How far the reader gets before it tells the range tasks (it always tells before it waits).
    fn window_step(&self) -> u64 {
        (self.range_size / 4).clamp(1, 1 << 20)
    }

    /// Bytes past what the reader has taken within which ranges are asked for.
    fn lookahead(&self) -> u64 {
        self.range_size.max(1) * (self.ranges_in_flight.max(2) as u64 - 1)
    }

    /// Bytes past what the reader has taken that the range tasks may take in.
    fn window(&self) -> u64 {
        self.held_ahead.clamp(self.range_size.max(1), self.lookahead())
    }
}

/// What every range task needs to know about the object.
struct Object {
    target: Arc<Target>,
    key: String,
    size: u64,
    /// Pinned on every GET after the first (`None` if the server gave none).
    etag: Option<String>,
    tuning: DownloadTuning,
    chunks: ChunkPool,
    /// Time range tasks spent waiting at the window's edge, summed (µs): the reader was behind.
    stalled_us: std::sync::atomic::AtomicU64,
}

/// Chunk buffers, reused: a download allocates about a window's worth once.
#[derive(Default)]
struct ChunkPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl ChunkPool {
    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    fn give(&self, mut chunk: Vec<u8>) {
        if chunk.capacity() == CHUNK {
            chunk.clear();
            self.free.lock().unwrap_or_else(|p| p.into_inner()).push(chunk);
        }
    }
}

pub(super) struct S3Download {
    object: Arc<Object>,
    /// Ranges handed to tasks and not yet read to their end, in order.
    ranges: VecDeque<Fetch>,
    /// The chunk being read and how far.
    current: Vec<u8>,
    at: usize,
    /// Bytes taken from the ranges so far (`current` included): where the window starts.
    taken: u64,
    /// The `taken` last told to the range tasks: told every `WINDOW_STEP`, and before waiting.
    published: u64,
    /// The first byte not yet handed to a task.
    next: u64,
    window: watch::Sender<u64>,
    rt: Arc<Runtime>,
    /// Time the reader waited for the next chunk, and how often (for the debug log).
    waited: Duration,
    waits: u32,
}

struct Fetch {
    end: u64,
    rx: mpsc::UnboundedReceiver<io::Result<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl S3Download {
    /// Reads the object from `first`, the answer to a GET of its first range (or of all of it).
    pub(super) fn start(
        rt: Arc<Runtime>,
        target: Arc<Target>,
        key: String,
        tuning: DownloadTuning,
        first: GetObjectOutput,
    ) -> Result<Self, StoreError> {
        let length = first.content_length.and_then(|n| u64::try_from(n).ok());
        let (first_range, size) = match first.content_range.as_deref() {
            None => length.map(|n| (0..n, n)),
            Some(range) => parse_content_range(range).filter(|(r, _)| r.start == 0 && Some(r.end) == length),
        }
        .ok_or_else(|| {
            StoreError::Other(format!(
                "downloading {key} from {}: the server's answer does not say how large the object is",
                target.endpoint
            ))
        })?;
        let object = Arc::new(Object {
            target,
            key,
            size,
            etag: first.e_tag,
            tuning,
            chunks: ChunkPool::default(),
            stalled_us: Default::default(),
        });
        let mut download = S3Download {
            object,
            ranges: VecDeque::new(),
            current: Vec::new(),
            at: 0,
            taken: 0,
            published: 0,
            next: 0,
            window: watch::Sender::new(0),
            rt,
            waited: Duration::ZERO,
            waits: 0,
        };
        download.spawn(first_range, Some(first.body));
        download.spawn_ahead();
        Ok(download)
    }

    /// Hands every range that starts within the window to a task.
    fn spawn_ahead(&mut self) {
        let tuning = self.object.tuning;
        let limit = self.object.size.min(self.taken + tuning.lookahead());
        while self.next < limit {
            let end = (self.next + tuning.range_size.max(1)).min(self.object.size);
            self.spawn(self.next..end, None);
        }
    }

    fn spawn(&mut self, range: Range<u64>, body: Option<ByteStream>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let window = self.window.subscribe();
        let task = self
            .rt
            .spawn(fetch(self.object.clone(), range.clone(), body, tx, window));
        self.next = range.end;
        self.ranges.push_back(Fetch {
            end: range.end,
            rx,
            task,
        });
    }
}

impl S3Download {
    /// Moves the window to `taken`, waking the range tasks waiting at its edge.
    fn publish(&mut self) {
        if self.published != self.taken {
            self.published = self.taken;
            self.window.send_replace(self.taken);
        }
    }
}

impl Read for S3Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            if self.ranges.is_empty() {
                self.publish();
                self.spawn_ahead();
            }
            let Some(head) = self.ranges.front_mut() else {
                return Ok(0);
            };
            let next = match head.rx.try_recv() {
                Ok(next) => Some(next),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // about to wait: every task may take in up to what has really been read
                    self.publish();
                    self.spawn_ahead();
                    let since = Instant::now();
                    let next = match self.ranges.front_mut() {
                        Some(head) => head.rx.blocking_recv(),
                        None => return Ok(0),
                    };
                    self.waited += since.elapsed();
                    self.waits += 1;
                    next
                }
            };
            let end = self.ranges.front().map_or(0, |head| head.end);
            match next {
                Some(Ok(chunk)) => {
                    self.taken += chunk.len() as u64;
                    let done = std::mem::replace(&mut self.current, chunk);
                    self.object.chunks.give(done);
                    self.at = 0;
                    if self.taken >= self.published + self.object.tuning.window_step() {
                        self.publish();
                        self.spawn_ahead();
                    }
                }
                Some(Err(e)) => return Err(e),
                None if self.taken == end => {
                    self.ranges.pop_front();
                }
                // a task ends with its range's bytes or with an error: this one was stopped
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "downloading {}: the stream stopped after {} of {} bytes",
                            self.object.key, self.taken, self.object.size
                        ),
                    ))
                }
            }
        }
        let rest = &self.current[self.at..];
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

impl Drop for S3Download {
    fn drop(&mut self) {
        tracing::debug!(
            "downloading {}: {} of {} bytes; the reader waited {:.2} s for the store ({} times), range tasks \
             waited {:.2} s (summed) for the reader",
            self.object.key,
            self.taken,
            self.object.size,
            self.waited.as_secs_f64(),
            self.waits,
            self.object.stalled_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6,
        );
        for fetch in &self.ranges {
            fetch.task.abort();
        }
    }
}

/// Why a GET brought no body to read.
enum Failure {
    /// The server answered, but not with the bytes asked for: retrying cannot help.
    Final(io::Error),
    /// No answer (connection refused or dropped, timeout): worth resuming.
    Retry(String),
}

impl Object {
    /// A GET of `range`, pinned to the ETag, checked to be the bytes asked for.
    async fn get(&self, range: &Range<u64>) -> Result<ByteStream, Failure> {
        let asked = format!("bytes {}-{}", range.start, range.end - 1);
        let mut request = self
            .target
            .client
            .get_object()
            .bucket(&self.target.bucket)
            .key(&self.key)
            .range(format!("bytes={}-{}", range.start, range.end - 1));
        if let Some(etag) = &self.etag {
            request = request.if_match(etag);
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) if status(&e) == Some(412) => return Err(Failure::Final(self.replaced())),
            // an answer that is not the object (deleted, denied, server error after retries) is final
            Err(e) if status(&e).is_some() => {
                let cx = Context {
                    what: &format!("downloading {} ({asked})", self.key),
                    bucket: &self.target.bucket,
                    endpoint: &self.target.endpoint,
                };
                return Err(Failure::Final(io::Error::other(store_error(cx, e))));
            }
            Err(e) => return Err(Failure::Retry(causes(&e))),
        };
        // servers that ignore If-Match still tell the ETag of what they send
        if self.etag.is_some() && out.e_tag != self.etag {
            return Err(Failure::Final(self.replaced()));
        }
        match out.content_range.as_deref().and_then(parse_content_range) {
            Some((got, size)) if got == *range && size == self.size => Ok(out.body),
            _ => Err(Failure::Final(io::Error::other(format!(
                "downloading {} from {}: asked for {asked} of {}, the server answered with {}",
                self.key,
                self.target.endpoint,
                self.size,
                out.content_range.as_deref().unwrap_or("the whole object"),
            )))),
        }
    }

    fn replaced(&self) -> io::Error {
        io::Error::other(format!(
            "downloading {} from {}: the object was replaced during the download (its ETag is no longer \
             {}); nothing of the new one was used, run it again",
            self.key,
            self.target.endpoint,
            self.etag.as_deref().unwrap_or("")
        ))
    }
}

/// `bytes 0-99/1000` as (0..100, 1000).
fn parse_content_range(value: &str) -> Option<(Range<u64>, u64)> {
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((first..last + 1, size.parse().ok()?))
}

/// One range's task: sends its bytes in frames to the reader, resuming from the first missing byte
/// when a connection drops, until the range is complete, the reader is gone or it gives up.
async fn fetch(
    object: Arc<Object>,
    range: Range<u64>,
    mut body: Option<ByteStream>,
    tx: mpsc::UnboundedSender<io::Result<Vec<u8>>>,
    mut window: watch::Receiver<u64>,
) {
    let mut pos = range.start;
    let mut failures = 0;
    loop {
        let before = pos;
        let attempt = match body.take() {
            Some(body) => Ok(body),
            None => object.get(&(pos..range.end)).await,
        };
        let why = match attempt {
            Ok(mut body) => match pump(&object, &mut body, &mut pos, range.end, &tx, &mut window).await {
                Pumped::Done => return,
                Pumped::Broken(why) => why,
            },
            Err(Failure::Final(e)) => {
                let _ = tx.send(Err(e));
                return;
            }
            Err(Failure::Retry(why)) => why,
        };
        failures = if pos > before { 1 } else { failures + 1 };
        if failures > RESUME_ATTEMPTS {
            let _ = tx.send(Err(io::Error::other(format!(
                "downloading {} from {}: bytes {}-{}: {why} at byte {pos} (gave up after {RESUME_ATTEMPTS} \
                 attempts to resume)",
                object.key,
                object.target.endpoint,
                range.start,
                range.end - 1
            ))));
            return;
        }
        tracing::warn!("downloading {}: {why} at byte {pos}; resuming", object.key);
        tokio::time::sleep(object.tuning.resume_delay * (1u32 << (failures - 1).min(5))).await;
    }
}

enum Pumped {
    /// The range is complete, or the reader is gone.
    Done,
    Broken(String),
}

/// Copies the body's frames into chunks of `CHUNK` bytes and sends each full one to the reader
/// (one wake-up of the reader per chunk, not per frame), waiting while `pos` is beyond the window.
/// Every byte counted in `pos` is sent before this returns.
async fn pump(
    object: &Object,
    body: &mut ByteStream,
    pos: &mut u64,
    end: u64,
    tx: &mpsc::UnboundedSender<io::Result<Vec<u8>>>,
    window: &mut watch::Receiver<u64>,
) -> Pumped {
    let ahead = object.tuning.window();
    let mut chunk = Vec::new();
    let outcome = loop {
        if *pos < end && *pos >= *window.borrow() + ahead {
            if !send(tx, &mut chunk) {
                return Pumped::Done;
            }
            let since = Instant::now();
            let reader_gone = window.wait_for(|taken| *pos < taken + ahead).await.is_err();
            let waited = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
            object
                .stalled_us
                .fetch_add(waited, std::sync::atomic::Ordering::Relaxed);
            if reader_gone {
                return Pumped::Done;
            }
        }
        match body.next().await {
            None if *pos == end => break Pumped::Done,
            None => break Pumped::Broken("the stream ended early".into()),
            Some(Ok(frame)) if frame.len() as u64 > end - *pos => {
                break Pumped::Broken("the server sent more bytes than asked for".into())
            }
            Some(Ok(frame)) => {
                *pos += frame.len() as u64;
                if !gather(object, tx, &mut chunk, &frame) {
                    return Pumped::Done;
                }
                if *pos == end && !send(tx, &mut chunk) {
                    return Pumped::Done;
                }
            }
            Some(Err(e)) => break Pumped::Broken(format!("the connection dropped ({})", causes(&e))),
        }
    };
    if !send(tx, &mut chunk) {
        return Pumped::Done;
    }
    outcome
}

/// Copies `frame` into `chunk` (taken from the pool when empty), sending each chunk that fills;
/// false when the reader is gone.
fn gather(
    object: &Object,
    tx: &mpsc::UnboundedSender<io::Result<Vec<u8>>>,
    chunk: &mut Vec<u8>,
    frame: &Bytes,
) -> bool {
    let mut rest = &frame[..];
    while !rest.is_empty() {
        if chunk.capacity() == 0 {
            *chunk = object.chunks.take();
        }
        let n = rest.len().min(chunk.capacity() - chunk.len());
        chunk.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if chunk.len() == chunk.capacity() && !send(tx, chunk) {
            return false;
        }
    }
    true
}

/// Sends what `chunk` holds, if anything; false when the reader is gone.
fn send(tx: &mpsc::UnboundedSender<io::Result<Vec<u8>>>, chunk: &mut Vec<u8>) -> bool {
    let chunk = std::mem::take(chunk);
    chunk.is_empty() || tx.send(Ok(chunk)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_read_strictly() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0..100, 1000)));
        assert_eq!(parse_content_range("bytes 8-8/9"), Some((8..9, 9)));
        for bad in [
            "bytes */1000",
            "bytes 5-4/10",
            "0-99/1000",
            "bytes 0-99/*",
            "bytes 0-x/10",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_window_keeps_the_range_being_read_moving() {
        let t = DownloadTuning {
            range_size: 8,
            ranges_in_flight: 1,
            held_ahead: 8,
            resume_delay: Duration::ZERO,
        };
        assert_eq!(t.window(), 8);
        let t = DownloadTuning {
            ranges_in_flight: 4,
            held_ahead: u64::MAX,
            ..t
        };
        assert_eq!((t.lookahead(), t.window()), (24, 24));
        // fewer bytes held than asked for, but never less than a range
        let t = DownloadTuning { held_ahead: 10, ..t };
        assert_eq!((t.lookahead(), t.window()), (24, 10));
        let t = DownloadTuning { held_ahead: 3, ..t };
        assert_eq!((t.lookahead(), t.window()), (24, 8));
    }
}
