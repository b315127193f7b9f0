//! `verify`: read a whole backup, check OpenPGP integrity and every manifest hash, and apply every
//! rule the restore applies (names, roles, types, links, hard links: [`rules::Restorable`]), so
//! "good" means "will restore"; write nothing. A differential is checked with its full: every
//! file it leaves to the full is in the full's index with the same size and SHA-256, the index
//! reads to its end, and the full itself verifies.

use std::time::{Duration, Instant};

use crate::archive::index::IndexReader;
use crate::archive::manifest::FileRecord;
use crate::archive::rules::{self, Layout, Role};
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
    /// A differential's full backup, verified too, and the files the differential takes from it.
    pub base: Option<BackupId>,
    pub inherited: u64,
    pub elapsed: Duration,
}

/// Reads every entry, applies the restore's rules to it, and keeps nothing: the reader checks
/// the names and hashes. A differential's inherited files are looked up in its full's index as
/// they come (both are in tree order).
struct Check<'a> {
    rules: rules::Restorable,
    store: &'a dyn ObjectStore,
    passphrase: &'a Passphrase,
    layout: Option<Layout>,
    base_index: Option<IndexReader>,
}

impl Visitor for Check<'_> {
    fn header(&mut self, h: &Header) -> Result<(), ArchiveError> {
        self.rules.header(h)?;
        self.layout = Some(Layout::Manifest(h.roots.clone()));
        if let Some(base) = &h.base {
            let missing = || ArchiveError::Damaged(format!("its full backup {base} has no index in the store"));
            let id: BackupId = base.parse().map_err(|_| missing())?;
            let index = self
                .store
                .get_index(&id)
                .map_err(|e| ArchiveError::Damaged(format!("the index of its full backup {base}: {e}")))?
                .ok_or_else(missing)?;
            self.base_index = Some(IndexReader::open(index, self.passphrase)?);
        }
        Ok(())
    }

    fn entry(&mut self, e: Entry<'_>) -> Result<(), ArchiveError> {
        self.rules.entry(e.name, &e.kind)?;
        std::io::copy(e.data, &mut std::io::sink()).map_err(|err| ArchiveError::read(e.name, err))?;
        Ok(())
    }

    fn inherited(&mut self, file: &FileRecord) -> Result<(), ArchiveError> {
        let (Some(layout), Some(index)) = (&self.layout, &mut self.base_index) else {
            return Err(ArchiveError::Manifest(format!(
                "{} is listed as a full backup's, but the backup names no full",
                file.path
            )));
        };
        let found = match layout.classify(&file.path) {
            Some((Role::Media(m), rest)) => index.find((m, rest))?,
            _ => None,
        };
        match found {
            Some(rec) if rec.size == file.size && rec.sha256 == file.sha256 => Ok(()),
            Some(_) => Err(ArchiveError::Damaged(format!(
                "{} differs from the full backup's copy",
                file.path
            ))),
            None => Err(ArchiveError::Damaged(format!(
                "{} is not in the full backup it is left to",
                file.path
            ))),
        }
    }
}

impl Verify<'_> {
    pub fn run(&self, progress: &dyn ProgressSink) -> Result<VerifyReport, Error> {
        let started = Instant::now();
        if self.store.head(self.id)?.is_none() {
            return Err(StoreError::NotFound(self.id.clone()).into());
        }
        let mut check = self.check();
        let summary = archive::read(self.store.get(self.id)?, self.passphrase, &mut check, progress)?;
        let base = match summary.header.as_ref().and_then(|h| h.base.clone()) {
            Some(base) => {
                let id: BackupId = base
                    .parse()
                    .map_err(|_| ArchiveError::Manifest(format!("its base {base:?} is not a backup id")))?;
                if let Some(index) = check.base_index.take() {
                    index.check_to_end()?;
                }
                archive::read(self.store.get(&id)?, self.passphrase, &mut self.check(), progress)
                    .map_err(|e| Error::Refused(format!("its full backup {id} does not verify: {e}")))?;
                Some(id)
            }
            None => None,
        };
        Ok(VerifyReport {
            id: self.id.clone(),
            files: summary.files,
            bytes: summary.bytes,
            server_name: summary.header.map(|h| h.server_name),
            manifest_checked: summary.manifest_checked,
            base,
            inherited: summary.inherited,
            elapsed: started.elapsed(),
        })
    }

    fn check(&self) -> Check<'_> {
        let layout = self.synapse.map_or_else(Layout::foreign_default, Layout::foreign_for);
        Check {
            rules: rules::Restorable::new(layout),
            store: self.store,
            passphrase: self.passphrase,
            layout: None,
            base_index: None,
        }
    }
}
