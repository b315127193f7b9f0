//! S3-compatible object storage (AWS, Ceph RGW, MinIO, …) through aws-sdk-s3, behind the same
//! synchronous [`ObjectStore`] seam as the directory store: the archive pipeline is plain threads,
//! so the store owns a small tokio runtime and bridges to it.
//!
//! Layout: one object per backup at `<path>/<backup-id>` (`<backup-id>` when the path is empty), so
//! buckets written by the reference charm list here too; the backup's facts ride along as
//! `x-amz-meta-*` so a listing says what each backup is without downloading it.

mod client;
mod download;
mod incomplete;
mod params;
mod upload;

use std::io::Read;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::StorageClass;
use aws_sdk_s3::Client;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use self::client::{status, store_error, Context};
pub use self::download::DownloadTuning;
use self::download::S3Download;
pub use self::params::{S3ConfigError, S3Params, SignatureVersion, UriStyle, DEFAULT_REGION, KEYS};
use self::upload::S3Upload;
use super::{Leftover, ObjectInfo, ObjectMeta, ObjectStore, StoreError, Upload, INDEX_SUFFIX};
use crate::backup_id::BackupId;

/// HEAD requests in flight while a listing gathers each backup's metadata.
const LIST_HEADS_IN_FLIGHT: usize = 16;

/// `x-amz-meta-*` names (the SDK adds the prefix).
const META_FORMAT: &str = "format";
const META_SERVER_NAME: &str = "server-name";
const META_TOOL_VERSION: &str = "tool-version";
const META_CREATED_AT: &str = "created-at";
const META_TYPE: &str = "backup-type";
const META_BASE: &str = "base";

/// What every request needs: the client and where it points.
pub(crate) struct Target {
    client: Client,
    bucket: String,
    endpoint: String,
    /// HTTPS: TLS protects part bodies in transit, so they are sent with an unsigned payload (as
    /// botocore does) rather than hashed with SHA-256 on both ends; over plain HTTP they are signed.
    tls: bool,
}

pub struct S3Store {
    params: S3Params,
    target: Arc<Target>,
    /// Shared with uploads and downloads, which may outlive the store.
    rt: Arc<Runtime>,
    download: DownloadTuning,
}

impl S3Store {
    pub fn new(params: S3Params) -> Result<S3Store, StoreError> {
        if params.signature_version == Some(SignatureVersion::V2) {
            tracing::warn!(
                "s3-api-version 2 was asked for; requests are signed with version 4, which S3 servers accept"
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("cannot start the S3 client's runtime", e))?;
        let client = {
            let _guard = rt.enter();
            client::build(&params)?
        };
        let endpoint = params
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({})", params.region.as_deref().unwrap_or(DEFAULT_REGION)));
        let target = Arc::new(Target {
            client,
            bucket: params.bucket.clone(),
            endpoint,
            tls: params.is_https(),
        });
        Ok(S3Store {
            params,
            target,
            rt: Arc::new(rt),
            download: DownloadTuning::default(),
        })
    }

    /// Splits downloads into ranged GETs as `tuning` says instead of the defaults (tests use small
    /// ranges to exercise many).
    pub fn with_download_tuning(self, tuning: DownloadTuning) -> Self {
        S3Store {
            download: tuning,
            ..self
        }
    }

    pub fn params(&self) -> &S3Params {
        &self.params
    }

    fn cx<'a>(&'a self, what: &'a str) -> Context<'a> {
        Context {
            what,
            bucket: &self.target.bucket,
            endpoint: &self.target.endpoint,
        }
    }

    /// Every backup id under the prefix with its size and time (ListObjectsV2, all pages; the
    /// delimiter keeps deeper keys out, the exact prefix keeps sibling prefixes out).
    async fn list_keys(&self) -> Result<Vec<(BackupId, u64, SystemTime)>, StoreError> {
        let prefix = self.params.prefix();
        let mut pages = self
            .target
            .client
            .list_objects_v2()
            .bucket(&self.target.bucket)
            .set_prefix(prefix.clone())
            .delimiter("/")
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| store_error(self.cx("listing the backups"), e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let name = match &prefix {
                    Some(p) => key.strip_prefix(p.as_str()),
                    None => Some(key),
                };
                let Some(id) = name.and_then(|n| n.parse::<BackupId>().ok()) else {
                    continue;
                };
                let size = object.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                let modified = object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((id, size, modified));
            }
        }
        Ok(found)
    }

    async fn head_async(&self, id: &BackupId) -> Result<Option<ObjectInfo>, StoreError> {
        let result = self
            .target
            .client
            .head_object()
            .bucket(&self.target.bucket)
            .key(self.params.key(id.as_str()))
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(info(id.clone(), &out))),
            Err(e) if status(&e) == Some(404) && !is_no_such_bucket(&e) => Ok(None),
            Err(e) => Err(store_error(self.cx(&format!("reading {id}")), e)),
        }
    }
}

impl S3Store {
    /// Starts a multipart upload of `key` (`name`, for messages) with these `x-amz-meta-*`.
    fn start_upload(
        &self,
        key: String,
        name: String,
        meta: &[(&str, Option<String>)],
    ) -> Result<Box<dyn Upload>, StoreError> {
        let mut request = self
            .target
            .client
            .create_multipart_upload()
            .bucket(&self.target.bucket)
            .key(&key)
            .content_type("application/pgp-encrypted")
            .set_storage_class(self.params.storage_class.as_deref().map(StorageClass::from));
        for (meta_name, value) in meta {
            if let Some(value) = value {
                request = request.metadata(*meta_name, value);
            }
        }
        let attributes = self.params.attributes.clone();
        let out = self
            .rt
            .block_on(
                request
                    .customize()
                    .mutate_request(move |req| {
                        for (name, value) in &attributes {
                            req.headers_mut().insert(name.clone(), value.clone());
                        }
                    })
                    .send(),
            )
            .map_err(|e| store_error(self.cx(&format!("starting the upload of {name}")), e))?;
        let upload_id = out
            .upload_id
            .ok_or_else(|| StoreError::Other(format!("starting the upload of {name}: the server gave no upload id")))?;
        Ok(Box::new(S3Upload::new(
            self.target.clone(),
            self.rt.clone(),
            key,
            upload_id,
            name,
        )))
    }

    /// Deletes the object `name` under the prefix.
    fn delete_key(&self, name: &str) -> Result<(), StoreError> {
        let request = self
            .target
            .client
            .delete_object()
            .bucket(&self.target.bucket)
            .key(self.params.key(name));
        self.rt
            .block_on(request.send())
            .map(drop)
            .map_err(|e| store_error(self.cx(&format!("deleting {name}")), e))
    }

    /// A streaming download of `key` (`name`, for messages); `None` when there is no such object.
    fn download(&self, key: String, name: &str) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        let request = |range: Option<String>| {
            let request = self.target.client.get_object().bucket(&self.target.bucket).key(&key);
            request.set_range(range).send()
        };
        // the first range tells the object's size and ETag; an empty object has no range to give
        let last = self.download.range_size.max(1) - 1;
        let first = match self.rt.block_on(request(Some(format!("bytes=0-{last}")))) {
            Err(e) if status(&e) == Some(416) => self.rt.block_on(request(None)),
            first => first,
        };
        match first {
            Ok(out) => Ok(Some(Box::new(S3Download::start(
                self.rt.clone(),
                self.target.clone(),
                key.clone(),
                self.download,
                out,
            )?))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(store_error(self.cx(&format!("downloading {name}")), e)),
        }
    }
}

fn is_no_such_bucket<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> bool {
    matches!(e, aws_sdk_s3::error::SdkError::ServiceError(s) if s.err().code() == Some("NoSuchBucket"))
}

fn info(id: BackupId, out: &HeadObjectOutput) -> ObjectInfo {
    let meta = out.metadata();
    let get = |k: &str| meta.and_then(|m| m.get(k)).cloned();
    ObjectInfo {
        id,
        size: out.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        last_modified: out
            .last_modified()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        meta: ObjectMeta {
            format: get(META_FORMAT).and_then(|f| f.parse().ok()),
            server_name: get(META_SERVER_NAME),
            tool_version: get(META_TOOL_VERSION),
            created_at: get(META_CREATED_AT),
            kind: get(META_TYPE),
            base: get(META_BASE),
        },
    }
}

impl ObjectStore for S3Store {
    fn location(&self) -> String {
        self.params.location()
    }

    fn check(&self) -> Result<(), StoreError> {
        let result = self
            .rt
            .block_on(self.target.client.head_bucket().bucket(&self.target.bucket).send());
        match result {
            Ok(_) => Ok(()),
            // HEAD answers carry no error code: 404 is the bucket itself
            Err(e) if status(&e) == Some(404) => Err(StoreError::BucketMissing(self.target.bucket.clone())),
            Err(e) => Err(store_error(self.cx("opening the bucket"), e)),
        }
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        self.rt.block_on(async {
            let keys = self.list_keys().await?;
            let limit = Arc::new(Semaphore::new(LIST_HEADS_IN_FLIGHT));
            let mut tasks = tokio::task::JoinSet::new();
            for (id, size, modified) in keys {
                let (target, key, limit) = (self.target.clone(), self.params.key(id.as_str()), limit.clone());
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let result = target
                        .client
                        .head_object()
                        .bucket(&target.bucket)
                        .key(&key)
                        .send()
                        .await;
                    (id, size, modified, result)
                });
            }
            let mut list = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                let (id, size, modified, result) =
                    joined.map_err(|e| StoreError::Other(format!("listing the backups: {e}")))?;
                match result {
                    Ok(out) => list.push(ObjectInfo {
                        size,
                        last_modified: modified,
                        ..info(id, &out)
                    }),
                    // deleted between the listing and now
                    Err(e) if status(&e) == Some(404) => {}
                    Err(e) => return Err(store_error(self.cx(&format!("reading {id}")), e)),
                }
            }
            list.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(list)
        })
    }

    fn head(&self, id: &BackupId) -> Result<Option<ObjectInfo>, StoreError> {
        self.rt.block_on(self.head_async(id))
    }

    fn put(&self, id: &BackupId, meta: &ObjectMeta) -> Result<Box<dyn Upload>, StoreError> {
        let entries = [
            (META_FORMAT, meta.format.map(|f| f.to_string())),
            (META_SERVER_NAME, meta.server_name.clone()),
            (META_TOOL_VERSION, meta.tool_version.clone()),
            (META_CREATED_AT, meta.created_at.clone()),
            (META_TYPE, meta.kind.clone()),
            (META_BASE, meta.base.clone()),
        ];
        self.start_upload(self.params.key(id.as_str()), id.to_string(), &entries)
    }

    fn get(&self, id: &BackupId) -> Result<Box<dyn Read + Send>, StoreError> {
        self.download(self.params.key(id.as_str()), &id.to_string())?
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    fn put_index(&self, id: &BackupId) -> Result<Box<dyn Upload>, StoreError> {
        let name = format!("{id}{INDEX_SUFFIX}");
        self.start_upload(self.params.key(&name), name, &[])
    }

    fn get_index(&self, id: &BackupId) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        let name = format!("{id}{INDEX_SUFFIX}");
        self.download(self.params.key(&name), &name)
    }

    fn delete(&self, id: &BackupId) -> Result<(), StoreError> {
        // S3's DELETE succeeds whether or not the object exists: look first, to say so
        if self.head(id)?.is_none() {
            return Err(StoreError::NotFound(id.clone()));
        }
        self.delete_key(id.as_str())?;
        // its index, if it has one (S3 deletes a missing key without complaint)
        self.delete_key(&format!("{id}{INDEX_SUFFIX}"))?;
        Ok(())
    }

    fn leftovers(&self) -> Result<Vec<Leftover>, StoreError> {
        self.leftovers_blocking()
    }

    fn remove_leftover(&self, leftover: &Leftover) -> Result<(), StoreError> {
        self.remove_leftover_blocking(leftover)
    }
}
