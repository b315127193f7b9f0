//! `create`: snapshot the database, stream signing key + database + local media through
//! tar → gzip → OpenPGP into the store, and report what went in. Once the backup is made, what
//! earlier creates killed mid-upload left in the store is removed (see [`super::leftovers`]).
//!
//! What a restore would refuse (links pointing out of their tree, fifos, sockets, devices, names
//! that are not UTF-8 or too long: see [`archive::rules`]) is left out and reported, never archived.

use std::time::{Duration, Instant};

use super::{leftovers, recover};
use crate::archive::manifest::Skipped;
use crate::archive::{self, Header, Plan, Source};
use crate::backup_id::BackupId;
use crate::error::Error;
use crate::progress::{Gauge, Measure, ProgressSink, WithGauge};
use crate::secret::Passphrase;
use crate::store::{Leftover, ObjectMeta, ObjectStore};
use crate::synapse::lock::Lock;
use crate::synapse::{sqlite, Database, SynapseConfig};
use crate::units::rfc3339;

pub struct Create<'a> {
    pub synapse: &'a SynapseConfig,
    pub passphrase: &'a Passphrase,
    pub store: &'a dyn ObjectStore,
    /// Leftovers of killed creates older than this are removed once the backup is made
    /// ([`leftovers::DEFAULT_ABANDONED_AFTER`]; zero takes every one, a running upload included).
    pub abandoned_after: Duration,
}

#[derive(Debug, Clone)]
pub struct CreateReport {
    pub id: BackupId,
    /// Bytes in the store (compressed and encrypted).
    pub stored_bytes: u64,
    pub files: u64,
    /// Bytes of the files that went in.
    pub source_bytes: u64,
    pub server_name: String,
    pub database: &'static str,
    /// Things the operator should know (e.g. PostgreSQL needs its own backup, what was cleaned).
    pub notes: Vec<String>,
    /// What earlier killed creates left in the store, removed after this backup was made.
    pub cleaned: Vec<Leftover>,
    /// The first [`archive::manifest::SKIPPED_LISTED`] entries left out because a restore would
    /// refuse them (the manifest lists the same).
    pub skipped: Vec<Skipped>,
    /// How many entries were left out in all.
    pub skipped_count: u64,
    pub elapsed: Duration,
}

impl CreateReport {
    /// What was left out, a line each (the listed ones), and how many more: both front doors
    /// show these as notes.
    pub fn skipped_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .skipped
            .iter()
            .map(|s| format!("left out /{}: {}", s.name, s.reason))
            .collect();
        let more = self.skipped_count.saturating_sub(self.skipped.len() as u64);
        if more > 0 {
            lines.push(format!(
                "left out {more} more entries a restore would refuse ({} in all; the manifest lists the first {})",
                self.skipped_count,
                self.skipped.len()
            ));
        }
        lines
    }
}

pub const POSTGRES_NOTE: &str =
    "the database is PostgreSQL: back it up with PostgreSQL's own tools (pg_dump); this backup holds the signing key and media";

impl Create<'_> {
    pub fn run(&self, progress: &dyn ProgressSink) -> Result<CreateReport, Error> {
        let started = Instant::now();
        let cfg = self.synapse;
        if self.passphrase.is_empty() {
            return Err(Error::Usage("the backup passphrase is empty".into()));
        }
        let _lock = Lock::acquire(cfg, "create")?;
        let mut notes = recover::before(cfg, false)?;
        let snapshot = match &cfg.database {
            Database::Sqlite(path) => Some(sqlite::snapshot(path)?),
            Database::Postgres => {
                notes.push(POSTGRES_NOTE.to_string());
                None
            }
        };
        let id = BackupId::now();
        let created_at = rfc3339(std::time::SystemTime::now());
        let header = Header::new(cfg, &created_at);
        let mut sources = vec![Source::file(&cfg.signing_key_path)];
        if let (Some(snap), Database::Sqlite(db)) = (&snapshot, &cfg.database) {
            sources.push(Source::snapshot_of(snap.path(), db));
        }
        for dir in archive::MEDIA_DIRS {
            let root = cfg.media_store_path.join(dir);
            if root.is_dir() {
                if let Ok(target) = std::fs::read_link(&root) {
                    // the configured root is followed: what it points to is what Synapse serves
                    notes.push(format!(
                        "{} is a symbolic link to {}: backed up as the directory it points to (a restore will not replace a link: before restoring, put the directory in its place or point media_store_path at the real one)",
                        root.display(),
                        target.display()
                    ));
                }
                sources.push(Source::tree(&root));
            }
        }
        let plan = Plan { header, sources };
        let meta = ObjectMeta {
            format: Some(archive::FORMAT),
            server_name: Some(cfg.server_name.clone()),
            tool_version: Some(crate::TOOL_VERSION.to_string()),
            created_at: Some(created_at),
        };
        let mut upload = self.store.put(&id, &meta)?;
        // how far along: the tree's size, summed on a thread of its own while the backup runs
        let gauge = Gauge::new();
        let written = std::thread::scope(|s| {
            s.spawn(|| gauge.set_total(plan.sources.iter().map(|src| size_of(&src.read_from)).sum()));
            let progress = WithGauge::new(progress, gauge.clone(), Measure::ReportedBytes);
            archive::write(&plan, self.passphrase, upload.as_mut(), &progress)
        })?;
        drop(snapshot);
        let stored_bytes = upload.finish()?;
        notes.extend(recover::after_success(cfg));
        // housekeeping: the backup is made, so nothing here fails it
        let cleaned = leftovers::clean(self.store, self.abandoned_after, false);
        notes.extend(cleaned.lines());
        Ok(CreateReport {
            id,
            stored_bytes,
            files: written.files,
            source_bytes: written.bytes,
            server_name: cfg.server_name.clone(),
            database: cfg.database.kind(),
            notes,
            cleaned: cleaned.cleaned,
            skipped: written.skipped,
            skipped_count: written.skipped_count,
            elapsed: started.elapsed(),
        })
    }
}

/// The bytes of the regular files at `path` (a file, or a tree walked without following links
/// below its root, as the backup walks it).
fn size_of(path: &std::path::Path) -> u64 {
    let Ok(md) = std::fs::metadata(path) else {
        return 0;
    };
    if md.is_file() {
        return md.len();
    }
    if !md.is_dir() {
        return 0;
    }
    let mut total = 0;
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}
