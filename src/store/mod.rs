//! Where backups live. Every store keeps one object per backup, named by its [`BackupId`], under an
//! optional prefix, so a bucket written by the reference charm (`<path>/backup-…`) lists here too.
//! The archive pipeline only sees [`ObjectStore`]: a streaming writer for uploads and a streaming
//! reader for downloads, never a whole object in memory.

pub mod dir;
pub mod s3;

use std::fmt;
use std::io::{Read, Write};
use std::time::SystemTime;

use crate::backup_id::BackupId;

/// Small facts about a backup kept beside the object (S3 `x-amz-meta-*`, a sidecar file in a
/// directory store), so a listing can say what each backup is without downloading it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    pub format: Option<u32>,
    pub server_name: Option<String>,
    pub tool_version: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: Option<String>,
    /// `full` or `differential` (none: a full, as every backup before differentials was).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A differential's full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

impl ObjectMeta {
    /// Is this backup a differential (which needs its base to restore)?
    pub fn is_differential(&self) -> bool {
        self.kind.as_deref() == Some("differential")
    }
}

/// A full backup's index sits beside it as `<backup-id>.index` (see [`crate::archive::index`]);
/// the name is not a backup id, so no listing takes it for a backup.
pub const INDEX_SUFFIX: &str = ".index";

/// One backup as a listing or a `head` sees it.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    pub id: BackupId,
    /// Bytes stored (the encrypted object).
    pub size: u64,
    pub last_modified: SystemTime,
    pub meta: ObjectMeta,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("backup-id {0} does not exist")]
    NotFound(BackupId),
    #[error("the bucket {0} does not exist")]
    BucketMissing(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("the object store cannot be reached: {0}")]
    Unreachable(String),
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The store cannot do what was asked (an S3 server without ListMultipartUploads).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// An upload in progress. Bytes written are not visible under the backup's id until
/// [`Upload::finish`] succeeds; dropping an unfinished upload discards it (no partial object is
/// ever listed).
pub trait Upload: Write + Send + Sync {
    /// Make the object visible; returns the bytes stored.
    fn finish(self: Box<Self>) -> Result<u64, StoreError>;
}

/// What a create that never finished (killed with SIGKILL, by the OOM killer, by Juju past an
/// action's timeout) left in the store: the directory store's hidden `.<backup-id>.partial` file,
/// or an S3 multipart upload to `<prefix>/<backup-id>` that was neither completed nor aborted.
/// It is never listed as a backup and cannot be restored; it only takes space (on S3, billed).
/// A create running right now looks the same, only younger: callers decide by [`Leftover::since`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// The backup the create was making.
    pub id: BackupId,
    /// The partial file's last write (its mtime), or when the S3 upload was initiated; `None` when
    /// the server did not say (never old enough to remove).
    pub since: Option<SystemTime>,
    /// Bytes it holds (on S3 the sum of its parts), `None` when the store could not tell.
    pub size: Option<u64>,
    /// The store's own name for it: the file name, or the S3 upload id.
    pub handle: String,
}

pub trait ObjectStore: Send + Sync {
    /// Where the backups are, for messages: `s3://bucket/path` or a directory.
    fn location(&self) -> String;
    /// Is the store usable (the bucket exists and the credentials open it)?
    fn check(&self) -> Result<(), StoreError>;
    /// Every backup under the prefix (other objects are not backups and are left out), oldest first.
    fn list(&self) -> Result<Vec<ObjectInfo>, StoreError>;
    fn head(&self, id: &BackupId) -> Result<Option<ObjectInfo>, StoreError>;
    fn put(&self, id: &BackupId, meta: &ObjectMeta) -> Result<Box<dyn Upload>, StoreError>;
    fn get(&self, id: &BackupId) -> Result<Box<dyn Read + Send>, StoreError>;
    /// Deletes a backup, and its index if it has one.
    fn delete(&self, id: &BackupId) -> Result<(), StoreError>;

    /// Stores a full backup's index (visible once the upload finishes, like a backup).
    fn put_index(&self, id: &BackupId) -> Result<Box<dyn Upload>, StoreError> {
        Err(StoreError::Unsupported(format!(
            "{} keeps no index of {id}",
            self.location()
        )))
    }

    /// A full backup's index; `None` when it has none.
    fn get_index(&self, _id: &BackupId) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        Ok(None)
    }

    /// Every [`Leftover`] under the prefix, whatever its age (an upload running now included),
    /// oldest first. [`StoreError::Unsupported`] when the store cannot find them. A store that
    /// never leaves any says so with an empty list.
    fn leftovers(&self) -> Result<Vec<Leftover>, StoreError> {
        Ok(Vec::new())
    }

    /// Removes one leftover (deletes the file, aborts the upload). One already gone is not an error.
    fn remove_leftover(&self, leftover: &Leftover) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(format!(
            "{} keeps no incomplete uploads, so there is nothing of {} to remove",
            self.location(),
            leftover.id
        )))
    }
}

impl fmt::Debug for dyn ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStore({})", self.location())
    }
}
