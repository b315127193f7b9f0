//! S3-compatible object storage (AWS, Ceph RGW, MinIO, …) through aws-sdk-s3.
//! STUB: the S3 issue fills this in behind the same `ObjectStore` seam.

use std::collections::BTreeMap;

use super::StoreError;
use crate::secret::Secret;

/// Everything needed to reach the bucket, from s3-integrator's databag or from CLI flags.
#[derive(Debug, Clone)]
pub struct S3Params {
    pub access_key: String,
    pub secret_key: Secret,
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Key prefix with surrounding '/' trimmed ("" = bucket root).
    pub path: String,
    pub delete_older_than_days: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl S3Params {
    pub fn from_map(_map: &BTreeMap<String, String>) -> Result<Self, S3ConfigError> {
        Err(S3ConfigError::Invalid {
            key: "bucket",
            reason: "S3 is not implemented yet".into(),
        })
    }
}

pub struct S3Store;

impl S3Store {
    pub fn new(_params: S3Params) -> Result<Self, StoreError> {
        Err(StoreError::Other("S3 is not implemented yet".into()))
    }
}

// Placeholder so the charm compiles against the final seam; the S3 issue replaces this file.
impl super::ObjectStore for S3Store {
    fn location(&self) -> String {
        "s3://".into()
    }
    fn check(&self) -> Result<(), StoreError> {
        Err(StoreError::Other("S3 is not implemented yet".into()))
    }
    fn list(&self) -> Result<Vec<super::ObjectInfo>, StoreError> {
        Err(StoreError::Other("S3 is not implemented yet".into()))
    }
    fn head(&self, _: &crate::backup_id::BackupId) -> Result<Option<super::ObjectInfo>, StoreError> {
        Err(StoreError::Other("S3 is not implemented yet".into()))
    }
    fn put(&self, _: &crate::backup_id::BackupId, _: &super::ObjectMeta) -> Result<Box<dyn super::Upload>, StoreError> {
        Err(StoreError::Other("S3 is not implemented yet".into()))
    }
    fn get(&self, _: &crate::backup_id::BackupId) -> Result<Box<dyn std::io::Read + Send>, StoreError> {
        Err(StoreError::Other("S3 is not implemented yet".into()))
    }
    fn delete(&self, _: &crate::backup_id::BackupId) -> Result<(), StoreError> {
        Err(StoreError::Other("S3 is not implemented yet".into()))
    }
}
