//! Restoring without ever leaving a half-written data directory.
//!
//! [`Stager`] is the reader's visitor: it maps each entry by role (signing key, database, media)
//! onto the *current* config's locations — so a backup from `/data` restores onto a server laid
//! out differently — and writes it into a staging directory beside its target (same filesystem):
//! `<target's dir>/.synapse-backup-restore-<id>/`. It writes nowhere else: no entry can name a
//! path outside the roles, files are created fresh (`O_EXCL`, never through a link), and links
//! pointing out of their tree are refused.
//!
//! [`Staged::swap`] runs only after the whole stream was read and verified: each target is moved
//! aside into its staging directory and the staged copy renamed into place; if any rename fails,
//! every step is undone. The previous data is deleted only once every swap succeeded.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::file_writer::{FileMeta, FileWriter};
use super::manifest::Roots;
use super::{ArchiveError, Entry, EntryKind, Header, Visitor, FORMAT, MEDIA_DIRS};
use crate::backup_id::BackupId;
use crate::synapse::{sqlite, Database, SynapseConfig};

/// Set to make the swap fail after its first rename (tests prove the rollback with it).
pub const FAIL_SWAP_ENV: &str = "SYNAPSE_BACKUP_TEST_FAIL_SWAP";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    SigningKey,
    Database,
    DatabaseWal,
    Media(usize),
}

pub struct Stager {
    cfg: SynapseConfig,
    id: BackupId,
    force: bool,
    roots: Option<Roots>,
    entries: u64,
    /// staging directory for each target directory
    staging: BTreeMap<PathBuf, PathBuf>,
    /// role → (live target, staged path)
    staged: BTreeMap<Role, (PathBuf, PathBuf)>,
    /// directory metadata to apply once all files are in (mode, uid, gid, mtime)
    dirs: Vec<(PathBuf, u32, u64, u64, u64)>,
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
            roots: None,
            entries: 0,
            staging: BTreeMap::new(),
            staged: BTreeMap::new(),
            dirs: Vec::new(),
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

    /// The staging directory beside `target`, made on first use.
    fn staging_for(&mut self, target: &Path) -> Result<PathBuf, ArchiveError> {
        let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let Some(dir) = self.staging.get(&parent) {
            return Ok(dir.clone());
        }
        fs::create_dir_all(&parent).map_err(|e| ArchiveError::write(&parent, e))?;
        let dir = parent.join(format!(".synapse-backup-restore-{}", self.id));
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
        let name = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let staged = self.staging_for(&target)?.join(name);
        if let Role::Media(_) = role {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&staged)
                .map_err(|e| ArchiveError::write(&staged, e))?;
        }
        self.staged.insert(role, (target, staged.clone()));
        Ok(Some(staged))
    }

    /// Which role an entry belongs to, and its path below the role's root ("" for the root itself).
    fn classify<'n>(&self, name: &'n str) -> Option<(Role, &'n str)> {
        match &self.roots {
            Some(roots) => {
                if name == roots.signing_key {
                    return Some((Role::SigningKey, ""));
                }
                if let Some(db) = &roots.database {
                    if name == db {
                        return Some((Role::Database, ""));
                    }
                    if name.strip_prefix(db.as_str()) == Some("-wal") {
                        return Some((Role::DatabaseWal, ""));
                    }
                }
                let below = name.strip_prefix(roots.media_store.as_str())?.strip_prefix('/')?;
                media_role(below)
            }
            None => self.classify_foreign(name),
        }
    }

    /// Archives without a manifest (the reference charm's `tar -c /data/*.key /data/homeserver.db*
    /// /data/media/local_*`): roles by name.
    fn classify_foreign<'n>(&self, name: &'n str) -> Option<(Role, &'n str)> {
        let base = name.rsplit('/').next().unwrap_or(name);
        let key_base = self
            .cfg
            .signing_key_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if base == key_base || base.ends_with(".signing.key") {
            return Some((Role::SigningKey, ""));
        }
        let db_base = match &self.cfg.database {
            Database::Sqlite(p) => p.file_name().and_then(|n| n.to_str()).unwrap_or("homeserver.db"),
            Database::Postgres => "homeserver.db",
        };
        if base == db_base || base == "homeserver.db" {
            return Some((Role::Database, ""));
        }
        if base.strip_prefix(db_base) == Some("-wal") || base == "homeserver.db-wal" {
            return Some((Role::DatabaseWal, ""));
        }
        let mut rest = name;
        while let Some((_, tail)) = rest.split_once('/') {
            if let Some(found) = media_role(tail) {
                return Some(found);
            }
            rest = tail;
        }
        media_role(name)
    }

    pub fn finish(mut self) -> Result<Staged, ArchiveError> {
        self.writer.finish()?;
        if self.staged.is_empty() {
            return Err(ArchiveError::Refused(
                "the backup holds nothing this Synapse's config has a place for (no signing key, database or media)"
                    .into(),
            ));
        }
        if self.media_seen || self.roots.is_some() {
            // The media directories become exactly what the backup holds, empty ones included;
            // one the backup has no entry for keeps the live one's owner and mode.
            for (i, dir) in MEDIA_DIRS.iter().enumerate() {
                let fresh = !self.staged.contains_key(&Role::Media(i));
                let Some(staged) = self.staged_root(Role::Media(i))? else {
                    continue;
                };
                let live = self.cfg.media_store_path.join(dir);
                let model = [live.as_path(), self.cfg.media_store_path.as_path()]
                    .into_iter()
                    .find_map(|p| fs::metadata(p).ok());
                if let (true, Some(md)) = (fresh, model) {
                    use std::os::unix::fs::MetadataExt;
                    self.dirs.push((
                        staged,
                        md.mode(),
                        u64::from(md.uid()),
                        u64::from(md.gid()),
                        md.mtime().max(0) as u64,
                    ));
                }
            }
        }
        // deepest first: a directory's mtime changes when something is created in it
        self.dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
        for (path, mode, uid, gid, mtime) in std::mem::take(&mut self.dirs) {
            self.own(&path, uid, gid)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777 & !0o6000))
                .map_err(|e| ArchiveError::write(&path, e))?;
            if let Ok(dir) = File::open(&path) {
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

    fn own(&self, path: &Path, uid: u64, gid: u64) -> Result<(), ArchiveError> {
        if self.as_root {
            std::os::unix::fs::lchown(path, Some(uid as u32), Some(gid as u32))
                .map_err(|e| ArchiveError::write(path, e))?;
        }
        Ok(())
    }

    fn write_file(&mut self, path: &Path, e: Entry<'_>) -> Result<(), ArchiveError> {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|err| ArchiveError::write(path, err))?;
        let meta = FileMeta {
            mtime: e.mtime,
            owner: self.as_root.then_some((e.uid as u32, e.gid as u32)),
            mode: e.mode,
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
        self.roots = Some(h.roots.clone());
        Ok(())
    }

    fn entry(&mut self, e: Entry<'_>) -> Result<(), ArchiveError> {
        self.entries += 1;
        let Some((role, rest)) = self.classify(e.name) else {
            if self.roots.is_some() {
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
        if !is_media && e.kind != EntryKind::File {
            return Err(ArchiveError::hostile(
                e.name,
                "the signing key and database must be regular files",
            ));
        }
        let path = if rest.is_empty() { root.clone() } else { root.join(rest) };
        if !rest.is_empty() {
            if let Some(parent) = Path::new(rest).parent() {
                make_dirs(&root, parent, e.name)?;
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
                self.dirs.push((path, e.mode, e.uid, e.gid, e.mtime));
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
                self.write_file(&path, e)
            }
            EntryKind::Symlink(target) => {
                if rest.is_empty() || !link_stays_inside(rest, target) {
                    return Err(ArchiveError::hostile(
                        e.name,
                        format!("a link pointing out of the tree (to {target:?})"),
                    ));
                }
                std::os::unix::fs::symlink(target, &path).map_err(|err| ArchiveError::write(&path, err))?;
                self.own(&path, e.uid, e.gid)
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

enum Step {
    /// a live path moved aside
    Aside { live: PathBuf, aside: PathBuf },
    /// a staged path moved into place
    Installed { live: PathBuf, staged: PathBuf },
}

impl Staged {
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Moves every staged target into place; on failure, puts everything back as it was. The
    /// data that was replaced stays on disk until [`Previous::remove`] (after Synapse is started
    /// again: deleting gigabytes can take a while).
    pub fn swap(mut self) -> Result<Previous, ArchiveError> {
        let mut steps = Vec::new();
        let result = self.swap_all(&mut steps);
        if let Err(e) = result {
            let mut unrestored = Vec::new();
            for step in steps.into_iter().rev() {
                let (from, to) = match step {
                    Step::Installed { live, staged } => (live, staged),
                    Step::Aside { live, aside } => (aside, live),
                };
                if let Err(err) = fs::rename(&from, &to) {
                    unrestored.push(format!("{} (still at {}: {err})", to.display(), from.display()));
                }
            }
            if !unrestored.is_empty() {
                self.done = true; // keep the staging directories: they hold the previous data
                return Err(ArchiveError::Refused(format!(
                    "{e}; rolling back failed for {}",
                    unrestored.join(", ")
                )));
            }
            return Err(e);
        }
        self.done = true;
        Ok(Previous {
            dirs: std::mem::take(&mut self.staging),
        })
    }

    fn swap_all(&self, steps: &mut Vec<Step>) -> Result<(), ArchiveError> {
        let fail_after_first = std::env::var_os(FAIL_SWAP_ENV).is_some();
        for (role, (live, staged)) in &self.staged {
            let staging = staged.parent().unwrap_or(Path::new("/"));
            let aside_dir = staging.join("previous");
            fs::create_dir_all(&aside_dir).map_err(|e| ArchiveError::write(&aside_dir, e))?;
            let mut lives = vec![live.clone()];
            if *role == Role::Database {
                // stale WAL and shared-memory files would be replayed over the restored database
                lives.push(with_suffix(live, "-wal"));
                lives.push(with_suffix(live, "-shm"));
            }
            for l in lives {
                if l.symlink_metadata().is_ok() {
                    let aside = aside_dir.join(l.file_name().unwrap_or_default());
                    fs::rename(&l, &aside).map_err(|e| ArchiveError::write(&l, e))?;
                    steps.push(Step::Aside { live: l, aside });
                }
            }
            fs::rename(staged, live).map_err(|e| ArchiveError::write(live, e))?;
            steps.push(Step::Installed {
                live: live.clone(),
                staged: staged.clone(),
            });
            if fail_after_first {
                return Err(ArchiveError::io(
                    "swapping the restored data in",
                    io::Error::other("failure injected by the test hook"),
                ));
            }
        }
        Ok(())
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

/// A backup of another server would change this server's identity: refused unless forced.
pub fn check_server_name(id: &BackupId, backup: &str, current: &str, force: bool) -> Result<(), ArchiveError> {
    if backup != current && !force {
        return Err(ArchiveError::Refused(format!(
            "backup {id} is of server {backup:?} but this Synapse is {current:?}; restoring it would change the server's identity (force it if that is what you want)"
        )));
    }
    Ok(())
}

/// The data a restore replaced, waiting to be deleted.
#[must_use]
pub struct Previous {
    dirs: Vec<PathBuf>,
}

impl Previous {
    pub fn remove(self) {
        for dir in &self.dirs {
            if let Err(e) = fs::remove_dir_all(dir) {
                tracing::warn!(
                    "could not remove {} (the data the restore replaced): {e}",
                    dir.display()
                );
            }
        }
    }
}

fn media_role(below: &str) -> Option<(Role, &str)> {
    let (first, rest) = below.split_once('/').unwrap_or((below, ""));
    MEDIA_DIRS
        .iter()
        .position(|d| *d == first)
        .map(|i| (Role::Media(i), rest))
}

/// Creates the directories of `rel` below `root` one at a time, refusing to go through a link.
fn make_dirs(root: &Path, rel: &Path, entry: &str) -> Result<(), ArchiveError> {
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
            Err(_) => fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|e| ArchiveError::write(&path, e))?,
        }
    }
    Ok(())
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
