//! `verify`: read a whole backup, check OpenPGP integrity and every manifest hash, and apply every
//! rule the restore applies (names, roles, types, links, hard links: [`rules::Restorable`]), so
//! "good" means "will restore"; write nothing.

use std::time::{Duration, Instant};

use crate::archive::rules::{self, Layout};
use crate::archive::{self, ArchiveError, Entry, Header, Visitor};
use crate::backup_id::BackupId;
use crate::error::Error;
use crate::progress::ProgressSink;
use crate::secret::Passphrase;
use crate::store::{ObjectStore, StoreError};
use crate::synapse::SynapseConfig;

pub struct Verify<'a> {
    pub id: &'a BackupId,
    pub passphrase: &'a Passphrase,
    pub store: &'a dyn ObjectStore,
    /// This server's config, when at hand: an archive without a manifest (the reference charm's)
    /// is read as a restore onto this server would read it (its signing key's and database's file
    /// names); without one, by the reference charm's names.
    pub synapse: Option<&'a SynapseConfig>,
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

/// Reads every entry, applies the restore's rules to it, and keeps nothing: the reader checks
/// the names and hashes.
struct Check(rules::Restorable);

impl Visitor for Check {
    fn header(&mut self, header: &Header) -> Result<(), ArchiveError> {
        self.0.header(header)
    }
    fn entry(&mut self, e: Entry<'_>) -> Result<(), ArchiveError> {
        self.0.entry(e.name, &e.kind)?;
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
        let layout = self.synapse.map_or_else(Layout::foreign_default, Layout::foreign_for);
        let mut check = Check(rules::Restorable::new(layout));
        let summary = archive::read(self.store.get(self.id)?, self.passphrase, &mut check, progress)?;
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
