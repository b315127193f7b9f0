//! `create`: snapshot the database, stream signing key + database + local media through
//! tar → gzip → OpenPGP into the store, and report what went in. Once the backup is made, what
//! earlier creates killed mid-upload left in the store is removed (see [`super::leftovers`]).
//!
//! A full backup carries every file and leaves an index beside it; a differential carries the key,
//! the database and only the media that changed since its base full, found by walking the tree
//! against that index (see [`crate::archive::index`]), so nothing of the full is downloaded.
//!
//! What a restore would refuse (links pointing out of their tree, fifos, sockets, devices, names
//! that are not UTF-8 or too long: see [`archive::rules`]) is left out and reported, never archived.

use std::time::{Duration, Instant};

use super::owner::{self, Owner};
use super::{leftovers, recover};
use crate::archive::index::{IndexHeader, IndexReader, IndexWriter};
use crate::archive::manifest::Skipped;
use crate::archive::writer::Delta;
use crate::archive::{self, Header, Kind, Plan, Source};
use crate::backup_id::BackupId;
use crate::error::Error;
use crate::progress::{Gauge, Measure, ProgressSink, WithGauge};
use crate::secret::Passphrase;
use crate::store::{Leftover, ObjectInfo, ObjectMeta, ObjectStore};
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
    pub kind: Choice,
}

/// Which kind of backup to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Full,
    /// A differential on the newest full of this server (a full when there is none to build on).
    Differential,
    /// A differential while the newest full is younger than this, else a full.
    Auto {
        full_every: Duration,
    },
}

impl std::str::FromStr for Choice {
    type Err = String;

    /// `full`, `differential` or `auto` (with [`DEFAULT_FULL_EVERY`]).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Choice::Full),
            "differential" => Ok(Choice::Differential),
            "auto" => Ok(Choice::Auto {
                full_every: DEFAULT_FULL_EVERY,
            }),
            other => Err(format!(
                "unknown backup type {other:?}: give full, differential or auto"
            )),
        }
    }
}

/// How old the newest full may be before `auto` makes a new one (the charm's
/// `backup_full_every_days` default).
pub const DEFAULT_FULL_EVERY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

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
    pub kind: Kind,
    /// A differential's full backup.
    pub base: Option<BackupId>,
    /// A differential's files left to its base, and their bytes.
    pub inherited: u64,
    pub inherited_bytes: u64,
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
        let id = BackupId::now();
        let now = std::time::SystemTime::now();
        let created_at = rfc3339(now);
        // the base's index is opened (an S2K, a download) while the database is snapshotted
        let (snapshot, (mut base, base_notes)) = std::thread::scope(|s| {
            let base = s.spawn(|| {
                let mut notes = Vec::new();
                (self.base(now, &mut notes), notes)
            });
            let snapshot = match &cfg.database {
                Database::Sqlite(path) => sqlite::snapshot(path).map(Some),
                Database::Postgres => Ok(None),
            };
            (
                snapshot,
                base.join()
                    .unwrap_or_else(|_| (None, vec!["made a full backup: looking for its base failed".into()])),
            )
        });
        let snapshot = snapshot?;
        if cfg.database == Database::Postgres {
            notes.push(POSTGRES_NOTE.to_string());
        }
        notes.extend(base_notes);
        let mut header = Header::new(cfg, &created_at);
        header.kind = if base.is_some() { Kind::Differential } else { Kind::Full };
        header.base = base.as_ref().map(|b| b.header.backup_id.clone());
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
            kind: Some(plan.header.kind.to_string()),
            base: plan.header.base.clone(),
        };
        let kind = plan.header.kind;
        let base_id = plan.header.base.as_ref().and_then(|b| b.parse::<BackupId>().ok());
        let mut upload = self.store.put(&id, &meta)?;
        let mut index = match kind {
            Kind::Full => self.index_writer(&id, now, &mut notes),
            Kind::Differential => None,
        };
        // how far along: the tree's size, summed on a thread of its own while the backup runs (a
        // second walk of the tree, on a media store of many small files a third of the work: only
        // when someone sees it)
        let gauge = Gauge::new();
        let written = std::thread::scope(|s| {
            if progress.shown() {
                s.spawn(|| gauge.set_total(plan.sources.iter().map(|src| size_of(&src.read_from)).sum()));
            }
            let progress = WithGauge::new(progress, gauge.clone(), Measure::ReportedBytes);
            let delta = match (&mut index, &mut base) {
                (Some(index), _) => Delta::Index(index),
                (None, Some(base)) => Delta::Base(base),
                (None, None) => Delta::None,
            };
            archive::write(&plan, self.passphrase, upload.as_mut(), delta, &progress)
        })?;
        drop(snapshot);
        let stored_bytes = upload.finish()?;
        if let Some(index) = index {
            if let Err(e) = index.store(self.store, &id) {
                notes.push(format!(
                    "the backup's index could not be stored ({e}): a differential cannot build on this backup"
                ));
            }
        }
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
            kind,
            base: base_id,
            inherited: written.inherited,
            inherited_bytes: written.inherited_bytes,
            notes,
            cleaned: cleaned.cleaned,
            skipped: written.skipped,
            skipped_count: written.skipped_count,
            elapsed: started.elapsed(),
        })
    }
}

impl Create<'_> {
    /// The base a differential builds on, opened, when one is asked for and can be had; otherwise
    /// `None` (a full), with a note saying why when a differential was asked for.
    fn base(&self, now: std::time::SystemTime, notes: &mut Vec<String>) -> Option<IndexReader> {
        let full_every = match self.kind {
            Choice::Full => return None,
            Choice::Differential => None,
            Choice::Auto { full_every } => Some(full_every),
        };
        let fallback = |notes: &mut Vec<String>, why: String| {
            notes.push(format!("made a full backup: {why}"));
            None
        };
        let list = match self.store.list() {
            Ok(list) => list,
            Err(e) => return fallback(notes, format!("the store's backups could not be listed ({e})")),
        };
        let Some(full) = newest_full(&list, &self.synapse.server_name) else {
            return fallback(
                notes,
                "this server has no full backup in the store to build a differential on".into(),
            );
        };
        if let Some(full_every) = full_every {
            let made = full.id.timestamp().map(std::time::SystemTime::from);
            let age = made.and_then(|t| now.duration_since(t).ok());
            if age.is_none_or(|age| age >= full_every) {
                let days = full_every.as_secs_f64() / 86400.0;
                notes.push(format!(
                    "made a full backup: the newest full ({}) is older than {days:.0} days",
                    full.id
                ));
                return None;
            }
        }
        let index = match self.store.get_index(&full.id) {
            Ok(Some(index)) => index,
            Ok(None) => {
                return fallback(
                    notes,
                    format!(
                        "the newest full backup ({}) has no index (it was made by an older tool)",
                        full.id
                    ),
                )
            }
            Err(e) => return fallback(notes, format!("the index of {} could not be read ({e})", full.id)),
        };
        match IndexReader::open(index, self.passphrase) {
            Ok(reader)
                if reader.header.backup_id == full.id.as_str()
                    && reader.header.server_name == self.synapse.server_name =>
            {
                Some(reader)
            }
            Ok(reader) => fallback(
                notes,
                format!(
                    "the index beside {} describes {} of {}, not this server's backup",
                    full.id, reader.header.backup_id, reader.header.server_name
                ),
            ),
            Err(e) => fallback(notes, format!("the index of {} could not be read ({e})", full.id)),
        }
    }

    /// The index a full leaves for later differentials; `None` (with a note) when it cannot be
    /// made: the backup itself is made anyway.
    fn index_writer(&self, id: &BackupId, now: std::time::SystemTime, notes: &mut Vec<String>) -> Option<IndexWriter> {
        let started_ns = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let header = IndexHeader {
            backup_id: id.to_string(),
            server_name: self.synapse.server_name.clone(),
            started_ns,
        };
        match IndexWriter::new(self.passphrase, &header) {
            Ok(w) => Some(w),
            Err(e) => {
                notes.push(format!(
                    "no index was kept ({e}): a differential cannot build on this backup"
                ));
                None
            }
        }
    }
}

/// This server's newest full backup (the one a differential builds on).
pub fn newest_full<'a>(list: &'a [ObjectInfo], server_name: &str) -> Option<&'a ObjectInfo> {
    list.iter()
        .filter(|b| owner::owner(b, server_name) == Owner::Ours && !b.meta.is_differential())
        .max_by(|a, b| a.id.cmp(&b.id))
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
