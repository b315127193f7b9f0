//! Restoring without ever leaving a half-written data directory.
//!
//! [`Stager`] is the reader's visitor: it maps each entry by role (signing key, database, media)
//! onto the *current* config's locations — so a backup from `/data` restores onto a server laid
//! out differently — and writes it into a staging directory beside its target (same filesystem):
//! `<target's dir>/.synapse-backup-restore-<id>/`. It writes nowhere else: no entry can name a
//! path outside the roles, files are created fresh (`O_EXCL`, never through a link), and links
//! pointing out of their tree are refused.
//!
//! Owners come from the *live layout*, not from the archive's numeric ids (a backup made in the
//! official image, uid 991, restores onto Debian's `matrix-synapse` user): each role's files and
//! directories get the owner of its live target, else of the nearest existing directory that will
//! hold it. Directories stay writable by that owner, so Synapse can add shards and caches.
//!
//! [`Staged::swap`] runs only after the whole stream was read and verified (see [`super::swap`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::file_writer::{FileMeta, FileWriter};
use super::rules::{Layout, Role};
use super::swap::{self, Companion, Swapped, Target, STAGING_PREFIX};
use super::{ArchiveError, Entry, EntryKind, Header, Visitor, FORMAT, MEDIA_DIRS};
use crate::backup_id::BackupId;
use crate::synapse::{sqlite, Database, SynapseConfig};

/// Owner (uid, gid) given to what is restored, when running as root.
type Owner = Option<(u32, u32)>;

/// Mode of a directory the backup has no entry for (Synapse's umask gives the same).
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Metadata to apply to a staged directory once every file is in.
struct DirMeta {
    path: PathBuf,
    mode: u32,
    mtime: Option<u64>,
    owner: Owner,
}

pub struct Stager {
    cfg: SynapseConfig,
    id: BackupId,
    force: bool,
    layout: Layout,
    entries: u64,
    /// staging directory for each target directory
    staging: BTreeMap<PathBuf, PathBuf>,
    /// role → (live target, staged path)
    staged: BTreeMap<Role, (PathBuf, PathBuf)>,
    dirs: Vec<DirMeta>,
    /// each role's owner in the live layout
    owners: BTreeMap<Role, Owner>,
    media_seen: bool,
    notes: Vec<String>,
    as_root: bool,
    cleanup: bool,
    /// writes the files' data on a thread of its own
    writer: FileWriter,
}

impl Stager {
    pub fn new(cfg: &SynapseConfig, id: &BackupId, force: bool) -> Result<Self, ArchiveError> {
        Ok(Stager {
            cfg: cfg.clone(),
            id: id.clone(),
            force,
            layout: foreign_layout(cfg),
            entries: 0,
            staging: BTreeMap::new(),
            staged: BTreeMap::new(),
            dirs: Vec::new(),
            owners: BTreeMap::new(),
            media_seen: false,
            notes: Vec::new(),
            as_root: rustix::process::geteuid().is_root(),
            cleanup: true,
            writer: FileWriter::start()?,
        })
    }

    fn target(&self, role: Role) -> Option<PathBuf> {
        match role {
            Role::SigningKey => Some(self.cfg.signing_key_path.clone()),
            Role::Database => match &self.cfg.database {
                Database::Sqlite(p) => Some(p.clone()),
                Database::Postgres => None,
            },
            Role::DatabaseWal => match &self.cfg.database {
                Database::Sqlite(p) => Some(with_suffix(p, "-wal")),
                Database::Postgres => None,
            },
            Role::Media(i) => Some(self.cfg.media_store_path.join(MEDIA_DIRS[i])),
        }
    }

    /// Who owns a role's files in the live layout: its live target's owner, else the owner of
    /// the nearest existing directory that will hold it (for media, the media store).
    fn owner(&mut self, role: Role) -> Owner {
        if !self.as_root {
            return None;
        }
        if let Some(owner) = self.owners.get(&role) {
            return *owner;
        }
        let target = self.target(role);
        let owner = target.and_then(|t| {
            use std::os::unix::fs::MetadataExt;
            let model = match role {
                Role::Media(_) => t.clone(),
                _ => t.parent().unwrap_or(Path::new("/")).to_path_buf(),
            };
            let md = fs::symlink_metadata(&t)
                .ok()
                .filter(|_| !matches!(role, Role::Media(_)))
                .or_else(|| fs::metadata(nearest_existing(&model)).ok())?;
            Some((md.uid(), md.gid()))
        });
        self.owners.insert(role, owner);
        owner
    }

    /// Makes the missing directories of `dir` with the role's owner, as Synapse would have them.
    fn make_parents(&mut self, dir: &Path, owner: Owner) -> Result<(), ArchiveError> {
        let missing: Vec<&Path> = dir.ancestors().take_while(|p| p.symlink_metadata().is_err()).collect();
        for p in missing.into_iter().rev() {
            fs::DirBuilder::new()
                .mode(IMPLICIT_DIR_MODE)
                .create(p)
                .map_err(|e| ArchiveError::write(p, e))?;
            self.own(p, owner)?;
            fs::set_permissions(p, fs::Permissions::from_mode(IMPLICIT_DIR_MODE))
                .map_err(|e| ArchiveError::write(p, e))?;
        }
        Ok(())
    }

    /// The staging directory beside `target`, made on first use.
    fn staging_for(&mut self, target: &Path, owner: Owner) -> Result<PathBuf, ArchiveError> {
        let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let Some(dir) = self.staging.get(&parent) {
            return Ok(dir.clone());
        }
        self.make_parents(&parent, owner)?;
        let dir = parent.join(format!("{STAGING_PREFIX}{}", self.id));
        if dir.exists() {
            // left by a crashed restore
            fs::remove_dir_all(&dir).map_err(|e| ArchiveError::write(&dir, e))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ArchiveError::write(&dir, e))?;
        self.staging.insert(parent, dir.clone());
        Ok(dir)
    }

    /// The staged path for a role's target (its root, for media).
    fn staged_root(&mut self, role: Role) -> Result<Option<PathBuf>, ArchiveError> {
        if let Some((_, staged)) = self.staged.get(&role) {
            return Ok(Some(staged.clone()));
        }
        let Some(target) = self.target(role) else {
            return Ok(None);
        };
        if target.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            // the swap would replace the link, and leave what it points to stale
            return Err(ArchiveError::Refused(format!(
                "{} is a symbolic link: a restore would replace the link, not what it points to; set Synapse's config to the real path (nothing was changed)",
                target.display()
            )));
        }
        let name = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let owner = self.owner(role);
        let staged = self.staging_for(&target, owner)?.join(name);
        if let Role::Media(_) = role {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&staged)
                .map_err(|e| ArchiveError::write(&staged, e))?;
            // mode and times from the backup's entry, if it has one (see `finish`)
            self.dirs.push(DirMeta {
                path: staged.clone(),
                mode: IMPLICIT_DIR_MODE,
                mtime: None,
                owner,
            });
        }
        self.staged.insert(role, (target, staged.clone()));
        Ok(Some(staged))
    }

    fn classify<'n>(&self, name: &'n str) -> Option<(Role, &'n str)> {
        self.layout.classify(name)
    }

    pub fn finish(mut self) -> Result<Staged, ArchiveError> {
        self.writer.finish()?;
        if self.staged.is_empty() {
            return Err(ArchiveError::Refused(
                "the backup holds nothing this Synapse's config has a place for (no signing key, database or media)"
                    .into(),
            ));
        }
        if self.media_seen || self.layout.strict() {
            // The media directories become exactly what the backup holds, empty ones included
            // (one the backup has no entry for is made as Synapse would make it).
            for i in 0..MEDIA_DIRS.len() {
                self.staged_root(Role::Media(i))?;
            }
        }
        // deepest first: a directory's mtime changes when something is created in it (the sort
        // is stable: an entry's own metadata, pushed after the defaults, is applied last)
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
        for d in std::mem::take(&mut self.dirs) {
            self.own(&d.path, d.owner)?;
            fs::set_permissions(&d.path, fs::Permissions::from_mode(dir_mode(d.mode)))
                .map_err(|e| ArchiveError::write(&d.path, e))?;
            if let (Some(mtime), Ok(dir)) = (d.mtime, File::open(&d.path)) {
                let _ = dir.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime));
            }
        }
        if let Some((_, db)) = self.staged.get(&Role::Database).cloned() {
            let removed = sqlite::prepare_restored(&db)?;
            if removed > 0 {
                self.notes.push(format!(
                    "emptied {removed} end-to-end one-time keys, as Synapse's backup guide asks"
                ));
            }
            if !sqlite::integrity_ok(&db)? {
                return Err(ArchiveError::Damaged(
                    "the restored SQLite database fails PRAGMA integrity_check".into(),
                ));
            }
            // the WAL was folded into the database
            self.staged.remove(&Role::DatabaseWal);
        }
        // Everything staged is on disk before anything live is moved (one syncfs per filesystem is
        // far cheaper than an fsync per file).
        for dir in self.staging.values() {
            let synced = File::open(dir).and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from));
            synced.map_err(|e| ArchiveError::write(dir, e))?;
        }
        self.cleanup = false;
        Ok(Staged {
            staged: std::mem::take(&mut self.staged),
            staging: std::mem::take(&mut self.staging).into_values().collect(),
            notes: std::mem::take(&mut self.notes),
            done: false,
        })
    }

    fn own(&self, path: &Path, owner: Owner) -> Result<(), ArchiveError> {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| ArchiveError::write(path, e))?;
        }
        Ok(())
    }

    fn write_file(&mut self, path: &Path, e: Entry<'_>, owner: Owner) -> Result<(), ArchiveError> {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|err| ArchiveError::write(path, err))?;
        let meta = FileMeta {
            mtime: e.mtime,
            owner,
            // its owner must be able to read and write it (Synapse opens its database read-write)
            mode: (e.mode & 0o777) | 0o600,
        };
        self.writer
            .write(file, path.to_path_buf(), e.data, e.size, e.name, meta)
    }
}

impl Visitor for Stager {
    fn header(&mut self, h: &Header) -> Result<(), ArchiveError> {
        if h.format > FORMAT {
            return Err(ArchiveError::Refused(format!(
                "the backup was made by a newer synapse-backup ({}, format {}); upgrade to restore it",
                h.tool, h.format
            )));
        }
        check_server_name(&self.id, &h.server_name, &self.cfg.server_name, self.force)?;
        if h.database == "sqlite3" && self.cfg.database == Database::Postgres {
            self.notes.push(
                "the backup holds a SQLite database but this Synapse uses PostgreSQL: the database was not restored"
                    .into(),
            );
        }
        if h.database != "sqlite3" {
            self.notes.push("the backup holds no database (it was made from a PostgreSQL server): restore PostgreSQL with its own tools".into());
        }
        self.layout = Layout::Manifest(h.roots.clone());
        Ok(())
    }

    fn entry(&mut self, e: Entry<'_>) -> Result<(), ArchiveError> {
        self.entries += 1;
        let Some((role, rest)) = self.classify(e.name) else {
            if self.layout.strict() {
                return Err(ArchiveError::hostile(e.name, "not a path this Synapse's config allows"));
            }
            tracing::warn!("skipped {}: not a signing key, database or local media", e.name);
            return Ok(());
        };
        if let Role::Media(_) = role {
            self.media_seen = true;
        }
        let Some(root) = self.staged_root(role)? else {
            return Ok(()); // a database for a server that now uses PostgreSQL
        };
        let is_media = matches!(role, Role::Media(_));
        let owner = self.owner(role);
        if !is_media && e.kind != EntryKind::File {
            return Err(ArchiveError::hostile(
                e.name,
                "the signing key and database must be regular files",
            ));
        }
        let path = if rest.is_empty() { root.clone() } else { root.join(rest) };
        if !rest.is_empty() {
            if let Some(parent) = Path::new(rest).parent() {
                for made in make_dirs(&root, parent, e.name)? {
                    self.dirs.push(DirMeta {
                        path: made,
                        mode: IMPLICIT_DIR_MODE,
                        mtime: None,
                        owner,
                    });
                }
            }
        }
        match &e.kind {
            EntryKind::Dir => {
                if !rest.is_empty() {
                    match fs::symlink_metadata(&path) {
                        Ok(md) if md.is_dir() => {}
                        Ok(_) => return Err(ArchiveError::hostile(e.name, "a directory over something else")),
                        Err(_) => fs::DirBuilder::new()
                            .mode(0o700)
                            .create(&path)
                            .map_err(|err| ArchiveError::write(&path, err))?,
                    }
                }
                self.dirs.push(DirMeta {
                    path,
                    mode: e.mode,
                    mtime: Some(e.mtime),
                    owner,
                });
                Ok(())
            }
            EntryKind::File => {
                if rest.is_empty() && is_media {
                    return Err(ArchiveError::hostile(e.name, "a file where a media directory belongs"));
                }
                if path.symlink_metadata().is_ok() {
                    // a later copy of the same name replaces the earlier one, as tar does
                    fs::remove_file(&path).map_err(|err| ArchiveError::write(&path, err))?;
                }
                self.write_file(&path, e, owner)
            }
            EntryKind::Symlink(target) => {
                if rest.is_empty() || !link_stays_inside(rest, target) {
                    return Err(ArchiveError::hostile(
                        e.name,
                        format!("a link pointing out of the tree (to {target:?})"),
                    ));
                }
                std::os::unix::fs::symlink(target, &path).map_err(|err| ArchiveError::write(&path, err))?;
                self.own(&path, owner)
            }
            EntryKind::HardLink(target) => {
                let Some((trole, trest)) = self.classify(target) else {
                    return Err(ArchiveError::hostile(
                        e.name,
                        format!("a hard link to {target:?}, outside the backup"),
                    ));
                };
                let Some(troot) = self.staged_root(trole)? else {
                    return Err(ArchiveError::hostile(e.name, "a hard link to nothing"));
                };
                let source = if trest.is_empty() { troot } else { troot.join(trest) };
                match fs::symlink_metadata(&source) {
                    Ok(md) if md.is_file() => {
                        fs::hard_link(&source, &path).map_err(|err| ArchiveError::write(&path, err))
                    }
                    _ => Err(ArchiveError::hostile(
                        e.name,
                        format!("a hard link to {target:?}, which is not a file restored before it"),
                    )),
                }
            }
        }
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        let _ = self.writer.finish(); // nothing may still be writing into what is removed below
        if self.cleanup {
            for dir in self.staging.values() {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

/// A fully staged, verified restore, ready to be swapped in.
pub struct Staged {
    staged: BTreeMap<Role, (PathBuf, PathBuf)>,
    staging: Vec<PathBuf>,
    notes: Vec<String>,
    done: bool,
}

impl Staged {
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Moves every staged target into place through the restore journal at `journal` (see
    /// [`swap`]); on failure, everything is as it was. The replaced data stays on disk until the
    /// returned [`Swapped`] is committed.
    pub fn swap(mut self, journal: &Path, backup_id: &str) -> Result<Swapped, ArchiveError> {
        let targets = self
            .staged
            .iter()
            .map(|(role, (live, staged))| {
                let aside = staged.parent().unwrap_or(Path::new("/")).join("previous");
                let aside_of = |p: &Path| aside.join(p.file_name().unwrap_or_default());
                // stale WAL and shared-memory files would be replayed over the restored database
                let companions = match role {
                    Role::Database => ["-wal", "-shm"]
                        .iter()
                        .map(|s| {
                            let live = with_suffix(live, s);
                            Companion {
                                aside: aside_of(&live),
                                live,
                            }
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Target {
                    live: live.clone(),
                    staged: staged.clone(),
                    staged_id: (0, 0), // both read by the swap
                    had_live: false,
                    aside: aside_of(live),
                    companions,
                }
            })
            .collect();
        self.done = true; // from here on the journal owns the staging directories
        swap::swap(journal, backup_id, targets, std::mem::take(&mut self.staging))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            for dir in &self.staging {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

/// The layout of an archive without a manifest, for this server's file names.
fn foreign_layout(cfg: &SynapseConfig) -> Layout {
    let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    let db = match &cfg.database {
        Database::Sqlite(p) => name(p),
        Database::Postgres => "homeserver.db".into(),
    };
    Layout::foreign(&name(&cfg.signing_key_path), &db)
}

/// A backup of another server would change this server's identity: refused unless forced.
pub fn check_server_name(id: &BackupId, backup: &str, current: &str, force: bool) -> Result<(), ArchiveError> {
    if backup != current && !force {
        return Err(ArchiveError::Refused(format!(
            "backup {id} is of server {backup:?} but this Synapse is {current:?}; restoring it would change the server's identity (force it if that is what you want)"
        )));
    }
    Ok(())
}

/// Creates the directories of `rel` below `root` one at a time, refusing to go through a link;
/// the ones it made.
fn make_dirs(root: &Path, rel: &Path, entry: &str) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut made = Vec::new();
    let mut path = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(part) = c else { continue };
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::hostile(
                    entry,
                    "it would be written through a link or over a file",
                ))
            }
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(|e| ArchiveError::write(&path, e))?;
                made.push(path.clone());
            }
        }
    }
    Ok(made)
}

/// A restored directory's mode: what the backup says, but always usable by its owner (Synapse
/// creates shards and caches in them), and never set-id.
fn dir_mode(mode: u32) -> u32 {
    (mode & 0o1777) | 0o700
}

/// `path`, or its nearest ancestor that exists (a lost server's directories are made again).
pub fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Does a symlink at `link` (relative to its tree's root) with this target stay inside the tree?
fn link_stays_inside(link: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: Vec<&str> = link.split('/').collect();
    depth.pop(); // the link itself
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            p => depth.push(p),
        }
    }
    true
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_stay_in_their_tree() {
        assert!(link_stays_inside("ab/cd/x", "y"));
        assert!(link_stays_inside("ab/cd/x", "../ef/y"));
        assert!(!link_stays_inside("ab/cd/x", "../../../etc/passwd"));
        assert!(!link_stays_inside("x", "/etc/passwd"));
    }
}
