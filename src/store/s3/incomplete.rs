//! Incomplete multipart uploads: what a create killed mid-upload leaves on S3 (its process ended
//! before it could abort), which the provider keeps, and bills, until someone aborts it.
//!
//! Only uploads to `<prefix>/<backup-id>` are ours (ListMultipartUploads, every page, then the key
//! checked exactly as a listing checks backup keys); sizes come from ListParts, one request per
//! 1,000 parts of each such upload, at most [`LIST_PARTS_IN_FLIGHT`] at a time. A server without
//! ListMultipartUploads (s3s-fs) answers `NotImplemented`: that is [`StoreError::Unsupported`].

use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use tokio::sync::Semaphore;

use super::client::store_error;
use super::{S3Store, Target};
use crate::backup_id::BackupId;
use crate::store::{Leftover, StoreError};

const LIST_PARTS_IN_FLIGHT: usize = 16;

/// A server that does not implement the operation (501 `NotImplemented`).
fn not_implemented<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::ServiceError(s) => s.err().code() == Some("NotImplemented") || s.raw().status().as_u16() == 501,
        _ => false,
    }
}

/// An upload that is no longer there (completed or aborted since it was listed).
fn no_such_upload<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::ServiceError(s) => match s.err().code() {
            Some("NoSuchUpload") => true,
            Some("NoSuchBucket") => false,
            _ => s.raw().status().as_u16() == 404,
        },
        _ => false,
    }
}

impl S3Store {
    /// Every incomplete upload to one of our backup keys: `(id, key, upload id, initiated)`.
    async fn incomplete_uploads(&self) -> Result<Vec<(BackupId, String, String, Option<SystemTime>)>, StoreError> {
        let prefix = self.params.prefix();
        let (mut key_marker, mut upload_marker): (Option<String>, Option<String>) = (None, None);
        let mut found = Vec::new();
        loop {
            let page = self
                .target
                .client
                .list_multipart_uploads()
                .bucket(&self.target.bucket)
                .set_prefix(prefix.clone())
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await
                .map_err(|e| {
                    if not_implemented(&e) {
                        StoreError::Unsupported(format!(
                            "{} does not implement ListMultipartUploads, so the incomplete uploads of killed \
                             backups cannot be found there (an AbortIncompleteMultipartUpload lifecycle rule on \
                             the bucket removes them)",
                            self.target.endpoint
                        ))
                    } else {
                        store_error(self.cx("listing the incomplete uploads"), e)
                    }
                })?;
            for upload in page.uploads() {
                let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let name = match &prefix {
                    Some(p) => key.strip_prefix(p.as_str()),
                    None => Some(key),
                };
                let Some(id) = name.and_then(|n| n.parse::<BackupId>().ok()) else {
                    continue;
                };
                let initiated = upload.initiated().and_then(|t| SystemTime::try_from(*t).ok());
                found.push((id, key.to_string(), upload_id.to_string(), initiated));
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            let next = (
                page.next_key_marker().map(str::to_string),
                page.next_upload_id_marker().map(str::to_string),
            );
            if next.0.is_none() || next == (key_marker.clone(), upload_marker.clone()) {
                return Err(StoreError::Other(format!(
                    "listing the incomplete uploads: {} said there are more but gave no place to go on from",
                    self.target.endpoint
                )));
            }
            (key_marker, upload_marker) = next;
        }
        Ok(found)
    }

    pub(super) fn leftovers_blocking(&self) -> Result<Vec<Leftover>, StoreError> {
        self.rt.block_on(async {
            let uploads = self.incomplete_uploads().await?;
            let limit = Arc::new(Semaphore::new(LIST_PARTS_IN_FLIGHT));
            let mut tasks = tokio::task::JoinSet::new();
            for (id, key, upload_id, since) in uploads {
                let (target, limit) = (self.target.clone(), limit.clone());
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let size = upload_size(&target, &key, &upload_id).await;
                    size.map(|size| Leftover {
                        id,
                        since,
                        size,
                        handle: upload_id,
                    })
                });
            }
            let mut out = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                let leftover = joined.map_err(|e| StoreError::Other(format!("listing the incomplete uploads: {e}")))?;
                out.extend(leftover);
            }
            out.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.id.cmp(&b.id)));
            Ok(out)
        })
    }

    pub(super) fn remove_leftover_blocking(&self, leftover: &Leftover) -> Result<(), StoreError> {
        let id = &leftover.id;
        let result = self.rt.block_on(
            self.target
                .client
                .abort_multipart_upload()
                .bucket(&self.target.bucket)
                .key(self.params.key(id.as_str()))
                .upload_id(&leftover.handle)
                .send(),
        );
        match result {
            Ok(_) => Ok(()),
            // completed or aborted since it was listed
            Err(e) if no_such_upload(&e) => Ok(()),
            Err(e) => Err(store_error(
                self.cx(&format!("aborting the incomplete upload of {id}")),
                e,
            )),
        }
    }
}

/// The bytes an upload holds (ListParts, every page): `Some(None)` when the server cannot say,
/// `None` when the upload is gone (completed or aborted since it was listed).
async fn upload_size(target: &Target, key: &str, upload_id: &str) -> Option<Option<u64>> {
    let mut pages = target
        .client
        .list_parts()
        .bucket(&target.bucket)
        .key(key)
        .upload_id(upload_id)
        .into_paginator()
        .send();
    let mut total = 0u64;
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => {
                total += page
                    .parts()
                    .iter()
                    .filter_map(|p| p.size().and_then(|n| u64::try_from(n).ok()))
                    .sum::<u64>();
            }
            Err(e) if no_such_upload(&e) => return None,
            Err(e) => {
                tracing::debug!(
                    "the size of the incomplete upload of {key} is unknown: {}",
                    super::client::causes(&e)
                );
                return Some(None);
            }
        }
    }
    Some(Some(total))
}
