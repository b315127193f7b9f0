//! A backup read as a stream: one GET whose body a task on the store's runtime forwards through a
//! small bounded channel to the restore pipeline's (blocking) reader. When the connection drops
//! mid-way the task asks again from the first missing byte (a Range request pinned to the object's
//! ETag, so a replaced object is never spliced in), with back-off, before giving up.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Buf, Bytes};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::client::{store_error, Context};
use super::Target;

/// Body chunks buffered between the network and the reader (hyper's chunks are ≤ a few hundred KiB).
const CHANNEL_DEPTH: usize = 16;
/// Attempts to resume after a dropped connection without any progress in between.
const RESUME_ATTEMPTS: u32 = 5;

pub(super) struct S3Download {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// The object's size, to tell the end from a stream that stopped early.
    total: Option<u64>,
    read: u64,
    key: String,
    task: JoinHandle<()>,
    _rt: Arc<Runtime>,
}

impl S3Download {
    pub(super) fn start(rt: Arc<Runtime>, target: Arc<Target>, key: String, first: GetObjectOutput) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let total = first.content_length.and_then(|n| u64::try_from(n).ok());
        let task = rt.spawn(forward(target, key.clone(), first, tx));
        S3Download {
            rx,
            current: Bytes::new(),
            total,
            read: 0,
            key,
            task,
            _rt: rt,
        }
    }
}

impl Read for S3Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => match self.total {
                    Some(total) if self.read < total => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "downloading {}: the stream stopped after {} of {total} bytes",
                                self.key, self.read
                            ),
                        ))
                    }
                    _ => return Ok(0),
                },
            }
        }
        let n = buf.len().min(self.current.len());
        self.read += n as u64;
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

impl Drop for S3Download {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(target: Arc<Target>, key: String, first: GetObjectOutput, tx: mpsc::Sender<io::Result<Bytes>>) {
    let total = first.content_length.and_then(|n| u64::try_from(n).ok());
    let etag = first.e_tag.clone();
    let mut body = first.body;
    let mut received: u64 = 0;
    let mut failures = 0;
    loop {
        let why = match pump(&mut body, &tx, &mut received, &mut failures).await {
            Pumped::ReceiverGone => return,
            Pumped::Ended if total.is_none_or(|t| received >= t) => return,
            Pumped::Ended => format!("the connection closed after {received} of {} bytes", total.unwrap_or(0)),
            Pumped::Broken(e) => e,
        };
        failures += 1;
        if failures > RESUME_ATTEMPTS {
            let _ = tx
                .send(Err(io::Error::other(format!(
                    "downloading {key} from {}: {why} (gave up after {RESUME_ATTEMPTS} attempts to resume)",
                    target.endpoint
                ))))
                .await;
            return;
        }
        tracing::warn!("downloading {key}: {why}; resuming at byte {received}");
        tokio::time::sleep(Duration::from_millis(250 << failures.min(6))).await;
        let mut request = target
            .client
            .get_object()
            .bucket(&target.bucket)
            .key(&key)
            .range(format!("bytes={received}-"));
        if let Some(etag) = &etag {
            request = request.if_match(etag);
        }
        match request.send().await {
            Ok(out) => body = out.body,
            Err(e) => {
                let cx = Context {
                    what: &format!("resuming the download of {key}"),
                    bucket: &target.bucket,
                    endpoint: &target.endpoint,
                };
                // a GET that gets an answer but not the object (deleted, replaced, denied) is final
                if super::client::status(&e).is_some() {
                    let _ = tx.send(Err(io::Error::other(store_error(cx, e)))).await;
                    return;
                }
                body = ByteStream::from_static(b"");
            }
        }
    }
}

enum Pumped {
    Ended,
    ReceiverGone,
    Broken(String),
}

async fn pump(
    body: &mut ByteStream,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    received: &mut u64,
    failures: &mut u32,
) -> Pumped {
    loop {
        match body.next().await {
            None => return Pumped::Ended,
            Some(Ok(chunk)) => {
                if chunk.is_empty() {
                    continue;
                }
                *received += chunk.len() as u64;
                *failures = 0;
                if tx.send(Ok(chunk)).await.is_err() {
                    return Pumped::ReceiverGone;
                }
            }
            Some(Err(e)) => return Pumped::Broken(super::client::causes(&e)),
        }
    }
}
