//! A backup streamed into a multipart upload: the writer fills one part buffer at a time and hands
//! each full part to an UploadPart task on the store's runtime; a byte budget bounds the parts in
//! flight, and the writer waits when it is spent. Parts start at 8 MiB and double every 1,000 parts
//! (the size is not known in advance), so any object S3 can hold fits in its 10,000 parts.
//! Nothing is visible until CompleteMultipartUpload; an error, or dropping the upload unfinished,
//! aborts it, so no partial object is ever listed.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::client::{store_error, Context};
use super::Target;
use crate::store::{StoreError, Upload};

const FIRST_PART_SIZE: usize = 8 << 20;
/// Parts of one size before the size doubles: 1,000 × (8 MiB + 16 MiB + … + 4 GiB) ≈ 8 TiB.
const PARTS_PER_SIZE: usize = 1000;
const MAX_PART_SIZE: usize = 4 << 30;
/// Bytes of finished parts waiting for or in upload (the part being filled comes on top): one 8 MiB
/// part, which keeps a whole `create` under 64 MiB RSS; raise it for more parallel parts.
const IN_FLIGHT_BUDGET: usize = 8 << 20;
const MIB: usize = 1 << 20;

/// The size of the 1-based part `n`.
pub(super) fn part_size(n: usize) -> usize {
    let doublings = (n.saturating_sub(1) / PARTS_PER_SIZE).min(20) as u32;
    (FIRST_PART_SIZE << doublings).min(MAX_PART_SIZE)
}

pub(super) struct S3Upload {
    target: Arc<Target>,
    rt: Arc<Runtime>,
    key: String,
    upload_id: String,
    id: String,
    buf: BytesMut,
    /// Part buffers back from finished part uploads. Allocating each part afresh lets the allocator
    /// keep freed buffers around (RSS grows past the budget); reusing them bounds memory to the
    /// buffer being filled plus the in-flight budget.
    spare: Arc<Mutex<Vec<BytesMut>>>,
    /// Parts handed out so far.
    parts_sent: usize,
    in_flight: VecDeque<JoinHandle<Result<CompletedPart, StoreError>>>,
    done: Vec<CompletedPart>,
    budget: Arc<Semaphore>,
    written: u64,
    /// The first failure, kept so `finish` reports it and not a follow-up error.
    failed: Option<String>,
    finished: bool,
}

impl S3Upload {
    pub(super) fn new(target: Arc<Target>, rt: Arc<Runtime>, key: String, upload_id: String, id: String) -> Self {
        S3Upload {
            target,
            rt,
            key,
            upload_id,
            id,
            buf: BytesMut::with_capacity(FIRST_PART_SIZE),
            spare: Arc::new(Mutex::new(Vec::new())),
            parts_sent: 0,
            in_flight: VecDeque::new(),
            done: Vec::new(),
            budget: Arc::new(Semaphore::new(IN_FLIGHT_BUDGET / MIB)),
            written: 0,
            failed: None,
            finished: false,
        }
    }

    /// Hands the filled buffer to an upload task, waiting while the in-flight budget is spent.
    fn send_part(&mut self) -> Result<(), StoreError> {
        let number = self.parts_sent + 1;
        let body = std::mem::take(&mut self.buf).freeze();
        let permits = (body.len().div_ceil(MIB)).clamp(1, IN_FLIGHT_BUDGET / MIB) as u32;
        let budget = self.budget.clone();
        let permit = self
            .rt
            .block_on(budget.acquire_many_owned(permits))
            .map_err(|_| StoreError::Other("the upload was stopped".into()))?;
        self.collect_finished()?;
        let target = self.target.clone();
        let spare = self.spare.clone();
        let (key, upload_id, id) = (self.key.clone(), self.upload_id.clone(), self.id.clone());
        self.in_flight.push_back(self.rt.spawn(async move {
            let _permit = permit;
            let _reuse = ReturnToSpare(Some(body.clone()), spare);
            let part_number = number as i32;
            let cx = Context {
                what: &format!("uploading part {number} of {id}"),
                bucket: &target.bucket,
                endpoint: &target.endpoint,
            };
            let request = target
                .client
                .upload_part()
                .bucket(&target.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(part_number)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body))
                .customize();
            let request = if target.tls {
                request.disable_payload_signing()
            } else {
                request
            };
            let out = request.send().await.map_err(|e| store_error(cx, e))?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(out.e_tag)
                .build())
        }));
        self.parts_sent = number;
        let next = part_size(number + 1);
        let mut buf = self
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        buf.clear();
        buf.reserve(next);
        self.buf = buf;
        Ok(())
    }

    /// Takes the results of parts already uploaded, so a failure stops the writer early.
    fn collect_finished(&mut self) -> Result<(), StoreError> {
        while self.in_flight.front().is_some_and(|h| h.is_finished()) {
            if let Some(handle) = self.in_flight.pop_front() {
                let part = self.join(handle)?;
                self.done.push(part);
            }
        }
        Ok(())
    }

    fn join(&self, handle: JoinHandle<Result<CompletedPart, StoreError>>) -> Result<CompletedPart, StoreError> {
        self.rt
            .block_on(handle)
            .unwrap_or_else(|e| Err(StoreError::Other(format!("an upload task failed: {e}"))))
    }

    fn fail(&mut self, e: StoreError) -> StoreError {
        self.failed.get_or_insert_with(|| e.to_string());
        e
    }

    fn complete(&mut self) -> Result<u64, StoreError> {
        if self.parts_sent == 0 || !self.buf.is_empty() {
            // an empty backup still needs one (empty) part
            self.send_part()?;
        }
        while let Some(handle) = self.in_flight.pop_front() {
            let part = self.join(handle)?;
            self.done.push(part);
        }
        self.done.sort_by_key(|p| p.part_number);
        let target = self.target.clone();
        let cx = Context {
            what: &format!("completing the upload of {}", self.id),
            bucket: &target.bucket,
            endpoint: &target.endpoint,
        };
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(std::mem::take(&mut self.done)))
            .build();
        self.rt
            .block_on(
                target
                    .client
                    .complete_multipart_upload()
                    .bucket(&target.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .multipart_upload(parts)
                    .send(),
            )
            .map_err(|e| store_error(cx, e))?;
        Ok(self.written)
    }

    /// Stops the parts in flight and discards what the server holds of the upload.
    fn abort(&mut self) {
        for handle in self.in_flight.drain(..) {
            handle.abort();
        }
        let target = self.target.clone();
        let (key, upload_id) = (self.key.clone(), self.upload_id.clone());
        let abort = async move {
            let request = target
                .client
                .abort_multipart_upload()
                .bucket(&target.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .send();
            match tokio::time::timeout(Duration::from_secs(30), request).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "could not abort the multipart upload {upload_id} of {key} (a lifecycle rule for \
                     incomplete uploads cleans it up): {}",
                    super::client::causes(&e)
                ),
                Err(_) => tracing::warn!("aborting the multipart upload {upload_id} of {key} timed out"),
            }
        };
        if Handle::try_current().is_ok() {
            // dropped inside the runtime (not our threads' case): cannot wait here
            self.rt.spawn(abort);
        } else {
            self.rt.block_on(abort);
        }
    }
}

/// Hands a part's buffer back for reuse once its upload is over (the SDK has dropped its copies),
/// whatever the outcome. Dropped before the in-flight permit, so a writer that gets a permit finds
/// a spare buffer.
struct ReturnToSpare(Option<Bytes>, Arc<Mutex<Vec<BytesMut>>>);

impl Drop for ReturnToSpare {
    fn drop(&mut self) {
        if let Some(Ok(buf)) = self.0.take().map(Bytes::try_into_mut) {
            self.1.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
        }
    }
}

impl Write for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.clone()));
        }
        if self.finished {
            return Err(io::Error::other("the upload is already finished"));
        }
        let room = part_size(self.parts_sent + 1) - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == part_size(self.parts_sent + 1) {
            self.send_part().map_err(|e| io::Error::other(self.fail(e)))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for S3Upload {
    fn finish(mut self: Box<Self>) -> Result<u64, StoreError> {
        if let Some(e) = &self.failed {
            return Err(StoreError::Other(e.clone()));
        }
        let result = self.complete();
        self.finished = result.is_ok();
        result
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if !self.finished {
            self.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_object_s3_holds_fits_in_10000_parts() {
        let s3_max_object: u64 = 5 << 40;
        let total: u64 = (1..=10_000).map(|n| part_size(n) as u64).sum();
        assert!(total > s3_max_object, "{total}");
        assert_eq!(part_size(1), 8 << 20);
        assert_eq!(part_size(1000), 8 << 20);
        assert_eq!(part_size(1001), 16 << 20);
        assert!((1..=10_000).all(|n| part_size(n) <= 5 << 30));
    }
}
