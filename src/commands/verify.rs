//! `verify`: read a whole backup, check OpenPGP integrity and every manifest hash; write nothing.

use std::time::{Duration, Instant};

use crate::archive::{self, ArchiveError, Entry, Header, Visitor};
use crate::backup_id::BackupId;
use crate::error::Error;
use crate::progress::ProgressSink;
use crate::secret::Passphrase;
use crate::store::{ObjectStore, StoreError};

pub struct Verify<'a> {
    pub id: &'a BackupId,
    pub passphrase: &'a Passphrase,
    pub store: &'a dyn ObjectStore,
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub id: BackupId,
    pub files: u64,
    pub bytes: u64,
    pub server_name: Option<String>,
    /// False for archives without a manifest (the reference charm's): only OpenPGP's check ran.
    pub manifest_checked: bool,
    pub elapsed: Duration,
}

/// Reads every entry and keeps nothing: the reader checks the hashes.
struct Discard;

impl Visitor for Discard {
    fn header(&mut self, _: &Header) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn entry(&mut self, e: Entry<'_>) -> Result<(), ArchiveError> {
        std::io::copy(e.data, &mut std::io::sink()).map_err(|err| ArchiveError::read(e.name, err))?;
        Ok(())
    }
}

impl Verify<'_> {
    pub fn run(&self, progress: &dyn ProgressSink) -> Result<VerifyReport, Error> {
        let started = Instant::now();
        if self.store.head(self.id)?.is_none() {
            return Err(StoreError::NotFound(self.id.clone()).into());
        }
        let summary = archive::read(self.store.get(self.id)?, self.passphrase, &mut Discard, progress)?;
        Ok(VerifyReport {
            id: self.id.clone(),
            files: summary.files,
            bytes: summary.bytes,
            server_name: summary.header.map(|h| h.server_name),
            manifest_checked: summary.manifest_checked,
            elapsed: started.elapsed(),
        })
    }
}
