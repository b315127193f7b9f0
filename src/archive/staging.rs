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
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::FileType;

use super::file_writer::{FileMeta, FileWriter};
use super::from_base::{FromBase, Spill};
use super::handle::DirHandle;
use super::manifest::FileRecord;
use super::media_lanes::{self, DirMeta, Lanes, Owner, Place, IMPLICIT_DIR_MODE};
use super::rules::{self, HardLinks, Layout, Role};
use super::swap::{self, Companion, Dirs, Swapped, Target, STAGING_PREFIX};
use super::{mtime_of, ArchiveError, Entry, EntryKind, Header, Visitor, MEDIA_DIRS};
use crate::backup_id::BackupId;
use crate::synapse::{sqlite, Database, SynapseConfig};

/// A staging directory beside some targets: both opened once, used through their handles.
struct Staging {
    /// the targets' directory
    live: DirHandle,
    /// `<live>/.synapse-backup-restore-<id>`, made by us and checked to be ours
    dir: DirHandle,
}

/// A role's target and where its staged copy is.
struct StagedRole {
    live: PathBuf,
    /// the target's file name, in its directory and in the staging directory
    name: OsString,
    /// key of its [`Staging`] (the target's directory)
    parent: PathBuf,
    /// media: the staged root directory
    root: Option<Arc<DirHandle>>,
}

pub struct Stager {
    cfg: SynapseConfig,
    id: BackupId,
    force: bool,
    layout: Layout,
    entries: u64,
    /// staging directory for each target directory
    staging: BTreeMap<PathBuf, Staging>,
    staged: BTreeMap<Role, StagedRole>,
    /// each media role's root's metadata, applied at the end
    roots: BTreeMap<Role, DirMeta>,
    /// each role's owner in the live layout
    owners: BTreeMap<Role, Owner>,
    links: HardLinks,
    media_seen: bool,
    notes: Vec<String>,
    as_root: bool,
    /// the process's umask, when it could be read (files are then made with their mode)
    umask: Option<u32>,
    cleanup: bool,
    /// writes the signing key's and database's data (large ones on a thread of its own)
    writer: FileWriter,
    /// make and write the media
    lanes: Lanes,
    /// a differential's files to take from its base
    inherited: Option<Spill>,
}

/// A failure writing what is staged (nothing live is touched while staging; a full disk says so).
fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |e| ArchiveError::stage(path, e)
}

impl Stager {
    pub fn new(cfg: &SynapseConfig, id: &BackupId, force: bool) -> Result<Self, ArchiveError> {
        Ok(Stager {
            cfg: cfg.clone(),
            id: id.clone(),
            force,
            layout: Layout::foreign_for(cfg),
            entries: 0,
            staging: BTreeMap::new(),
            staged: BTreeMap::new(),
            roots: BTreeMap::new(),
            owners: BTreeMap::new(),
            links: HardLinks::default(),
            media_seen: false,
            notes: Vec::new(),
            as_root: rustix::process::geteuid().is_root(),
            umask: umask(),
            cleanup: true,
            writer: FileWriter::start()?,
            lanes: Lanes::start(umask())?,
            inherited: None,
        })
    }

    /// How many files of the backup just read are its base's (a differential's; 0 for a full).
    pub fn inherited(&self) -> u64 {
        self.inherited.as_ref().map_or(0, Spill::count)
    }

    /// After a differential's own archive: the visitor for its base's, which takes from it only
    /// the files the differential listed as the base's.
    pub fn from_base(&mut self, base: BackupId) -> Result<FromBase<'_>, ArchiveError> {
        let spill = match self.inherited.take() {
            Some(spill) => spill,
            None => Spill::new()?,
        };
        FromBase::new(self, base, spill)
    }

    /// The current server_name, and whether another server's backup may be restored.
    pub(super) fn server(&self) -> (String, bool) {
        (self.cfg.server_name.clone(), self.force)
    }

    pub(super) fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
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
                .filter(|_| !role.is_media())
                .or_else(|| fs::metadata(nearest_existing(&model)).ok())?;
            Some((md.uid(), md.gid()))
        });
        self.owners.insert(role, owner);
        owner
    }

    /// Opens `dir`, first making its missing directories with the role's owner, as Synapse
    /// would have them.
    fn open_making_parents(&self, dir: &Path, owner: Owner) -> Result<DirHandle, ArchiveError> {
        let existing = nearest_existing(dir);
        let mut at = DirHandle::open(&existing).map_err(write_err(&existing))?;
        let rest = dir.strip_prefix(&existing).unwrap_or(Path::new(""));
        for part in rest.iter() {
            let path = at.join(part);
            let (next, made) = at.make_child(part, IMPLICIT_DIR_MODE).map_err(write_err(&path))?;
            if made {
                next.set_owner_and_mode(owner, IMPLICIT_DIR_MODE)
                    .map_err(write_err(&path))?;
            }
            at = next;
        }
        Ok(at)
    }

    /// The staging directory beside `target`, made on first use; the key of its [`Staging`].
    fn staging_for(&mut self, target: &Path, owner: Owner) -> Result<PathBuf, ArchiveError> {
        let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        if self.staging.contains_key(&parent) {
            return Ok(parent);
        }
        let live = self.open_making_parents(&parent, owner)?;
        let name = OsString::from(format!("{STAGING_PREFIX}{}", self.id));
        let path = live.join(&name);
        // left by a crashed restore (one a journal still needs was kept by `recover::before`)
        live.remove_tree(&name).map_err(write_err(&path))?;
        rustix::fs::mkdirat(live.fd(), &name, rustix::fs::Mode::from_raw_mode(0o700))
            .map_err(|e| ArchiveError::stage(&path, e.into()))?;
        let dir = live.child(&name).map_err(write_err(&path))?;
        check_ours(&dir)?;
        self.staging.insert(parent.clone(), Staging { live, dir });
        Ok(parent)
    }

    /// The role's staged target, made ready on first use; None for a database this server no
    /// longer keeps in SQLite.
    fn staged_root(&mut self, role: Role) -> Result<Option<&StagedRole>, ArchiveError> {
        if !self.staged.contains_key(&role) {
            let Some(target) = self.target(role) else {
                return Ok(None);
            };
            let name = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            let owner = self.owner(role);
            let parent = self.staging_for(&target, owner)?;
            let staging = &self.staging[&parent];
            let live_kind = staging.live.stat(&name).map_err(write_err(&target))?;
            if live_kind.is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink) {
                // the swap would replace the link, and leave what it points to stale
                return Err(ArchiveError::Refused(format!(
                    "{} is a symbolic link: a restore would replace the link, not what it points to; set Synapse's config to the real path (nothing was changed)",
                    target.display()
                )));
            }
            let root = if role.is_media() {
                let path = staging.dir.join(&name);
                rustix::fs::mkdirat(staging.dir.fd(), &name, rustix::fs::Mode::from_raw_mode(0o700))
                    .map_err(|e| ArchiveError::stage(&path, e.into()))?;
                let root = staging.dir.child(&name).map_err(write_err(&path))?;
                // the lanes make what is below as its owner, and nothing in it set-group-ID (a
                // directory inherits the bit from a set-group-ID parent)
                root.set_owner_and_mode(owner, 0o700).map_err(write_err(&path))?;
                // mode and times from the backup's entry, if it has one (see `finish`)
                self.roots.insert(role, DirMeta::implicit(owner));
                Some(Arc::new(root))
            } else {
                None
            };
            self.staged.insert(
                role,
                StagedRole {
                    live: target,
                    name,
                    parent,
                    root,
                },
            );
        }
        Ok(self.staged.get(&role))
    }

    /// The directory a non-media role's file goes into: its staging directory.
    fn staging_dir(&self, role: Role) -> Option<&DirHandle> {
        let s = self.staged.get(&role)?;
        self.staging.get(&s.parent).map(|st| &st.dir)
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
        // every media directory but the roots has its metadata once this returns
        self.lanes.finish()?;
        for (role, meta) in std::mem::take(&mut self.roots) {
            let Some(root) = self.staged.get(&role).and_then(|s| s.root.as_ref()) else {
                continue;
            };
            meta.apply(root).map_err(write_err(root.path()))?;
        }
        let db = self.staged.get(&Role::Database).map(|db| PathBuf::from(&db.name));
        let db_dir = self.staging_dir(Role::Database).map(DirHandle::try_clone).transpose();
        let db_dir = db_dir.map_err(|e| ArchiveError::io("checking the restored database", e))?;
        if let (Some(name), Some(dir)) = (db, &db_dir) {
            // SQLite opens by path (and makes its journal beside the file): confined to the
            // staging directory, no rename in the directories above can redirect it
            let removed = on_staged_db(dir, &name, sqlite::prepare_restored)?;
            if removed > 0 {
                self.notes.push(format!(
                    "emptied {removed} end-to-end one-time keys, as Synapse's backup guide asks"
                ));
            }
            let integrity_ok = on_staged_db(dir, &name, sqlite::integrity_ok)?;
            if !integrity_ok {
                return Err(ArchiveError::Damaged(
                    "the restored SQLite database fails PRAGMA integrity_check".into(),
                ));
            }
            // the WAL was folded into the database
            self.staged.remove(&Role::DatabaseWal);
        }
        // Everything staged is on disk before anything live is moved (one syncfs per filesystem is
        // far cheaper than an fsync per file).
        for s in self.staging.values() {
            s.dir.sync_filesystem().map_err(write_err(s.dir.path()))?;
        }
        self.cleanup = false;
        Ok(Staged {
            staged: std::mem::take(&mut self.staged),
            staging: std::mem::take(&mut self.staging),
            notes: std::mem::take(&mut self.notes),
            done: false,
        })
    }

    /// The signing key or database (media goes to the lanes).
    fn write_file(&mut self, dir: &DirHandle, name: &OsStr, e: Entry<'_>, owner: Owner) -> Result<(), ArchiveError> {
        let (file, mode) = media_lanes::create_fresh(dir, name, e.mode, self.umask, e.name)?;
        let meta = FileMeta {
            mtime: mtime_of(e.mtime)?,
            owner,
            mode,
        };
        self.writer.write(file, dir.join(name), e.data, e.size, e.name, meta)
    }

    fn media_entry(&mut self, role: Role, rest: &str, e: Entry<'_>, owner: Owner) -> Result<(), ArchiveError> {
        let mtime = mtime_of(e.mtime)?;
        if rest.is_empty() {
            // the media directory's root (the type rule allows only a directory here)
            let meta = DirMeta {
                mode: e.mode,
                mtime: Some(mtime),
                owner,
            };
            self.roots.insert(role, meta);
            return Ok(());
        }
        let Some(root) = self.staged.get(&role).and_then(|s| s.root.clone()) else {
            return Err(ArchiveError::hostile(e.name, "not below a media directory"));
        };
        let place = Place {
            role,
            root,
            entry: e.name.to_string(),
            rest: rest.to_string(),
            owner,
        };
        match e.kind {
            EntryKind::Dir => {
                let meta = DirMeta {
                    mode: e.mode,
                    mtime: Some(mtime),
                    owner,
                };
                self.lanes.dir(place, meta)
            }
            EntryKind::File => {
                self.links.file(e.name);
                self.lanes.file(place, e.mode, mtime, e.size, e.data)
            }
            EntryKind::Symlink(target) => {
                self.links.replaced(e.name);
                self.lanes.symlink(place, target)
            }
            EntryKind::HardLink(target) => {
                // the lane checks that what it finds there is still a regular file
                if let Some(why) = self.links.refusal(&self.layout, role, &target) {
                    return Err(ArchiveError::hostile(e.name, why));
                }
                let Some((_, trest)) = self.layout.classify(&target) else {
                    return Err(ArchiveError::hostile(
                        e.name,
                        format!("a hard link to {target:?}, outside the backup"),
                    ));
                };
                let trest = trest.to_string();
                self.links.file(e.name);
                self.lanes.hard_link(place, trest)
            }
        }
    }
}

impl Visitor for Stager {
    fn header(&mut self, h: &Header) -> Result<(), ArchiveError> {
        if let Some(refusal) = rules::header_refusal(h) {
            return Err(refusal);
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

    fn inherited(&mut self, file: &FileRecord) -> Result<(), ArchiveError> {
        if self.inherited.is_none() {
            self.inherited = Some(Spill::new()?);
        }
        match &mut self.inherited {
            Some(spill) => spill.push(&self.layout, &file.path, file.size),
            None => Ok(()),
        }
    }

    fn entry(&mut self, e: Entry<'_>) -> Result<(), ArchiveError> {
        self.entries += 1;
        let Some((role, rest)) = self.layout.classify(e.name) else {
            if self.layout.strict() {
                return Err(ArchiveError::hostile(e.name, rules::NOT_ALLOWED));
            }
            tracing::warn!("skipped {}: not a signing key, database or local media", e.name);
            return Ok(());
        };
        if let Some(why) = rules::refusal(role, rest, &e.kind) {
            return Err(ArchiveError::hostile(e.name, why));
        }
        if role.is_media() {
            self.media_seen = true;
        }
        if self.staged_root(role)?.is_none() {
            return Ok(()); // a database for a server that now uses PostgreSQL
        }
        let owner = self.owner(role);
        if role.is_media() {
            let rest = rest.to_string();
            return self.media_entry(role, &rest, e, owner);
        }
        // the signing key or database: a regular file (the type rule), staged under its own name
        let Some(name) = self.staged.get(&role).map(|s| s.name.clone()) else {
            return Ok(());
        };
        let Some(dir) = self.staging_dir(role).map(DirHandle::try_clone) else {
            return Ok(());
        };
        let dir = dir.map_err(|err| ArchiveError::io("staging the restore", err))?;
        self.write_file(&dir, &name, e, owner)
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        // nothing may still be writing into what is removed below
        let _ = self.writer.finish();
        let _ = self.lanes.finish();
        if self.cleanup {
            for s in self.staging.values() {
                if let Some(name) = s.dir.path().file_name() {
                    let _ = s.live.remove_tree(name);
                }
            }
        }
    }
}

/// A fully staged, verified restore, ready to be swapped in.
pub struct Staged {
    staged: BTreeMap<Role, StagedRole>,
    staging: BTreeMap<PathBuf, Staging>,
    notes: Vec<String>,
    done: bool,
}

impl Staged {
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Moves every staged target into place through the restore journal at `journal` (see
    /// [`swap`]), renaming through the handles staging opened; on failure, everything is as it
    /// was. The replaced data stays on disk until the returned [`Swapped`] is committed.
    pub fn swap(mut self, journal: &Path, backup_id: &str) -> Result<Swapped, ArchiveError> {
        let mut dirs = Dirs::default();
        let mut targets = Vec::new();
        for (role, s) in &self.staged {
            let Some(staging) = self.staging.get(&s.parent) else {
                continue;
            };
            let staged = staging.dir.join(&s.name);
            let aside = staging.dir.join("previous");
            let aside_of = |p: &Path| aside.join(p.file_name().unwrap_or_default());
            // stale WAL and shared-memory files would be replayed over the restored database
            let companions = match role {
                Role::Database => ["-wal", "-shm"]
                    .iter()
                    .map(|suffix| {
                        let live = with_suffix(&s.live, suffix);
                        Companion {
                            aside: aside_of(&live),
                            live,
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            };
            targets.push(Target {
                live: s.live.clone(),
                staged,
                staged_id: (0, 0), // both read by the swap
                had_live: false,
                aside: aside_of(&s.live),
                companions,
            });
        }
        let mut staging_paths = Vec::new();
        for s in std::mem::take(&mut self.staging).into_values() {
            staging_paths.push(s.dir.path().to_path_buf());
            dirs.insert(s.live);
            dirs.insert(s.dir);
        }
        self.done = true; // from here on the journal owns the staging directories
        swap::swap(journal, backup_id, targets, staging_paths, dirs)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            for s in self.staging.values() {
                if let Some(name) = s.dir.path().file_name() {
                    let _ = s.live.remove_tree(name);
                }
            }
        }
    }
}

/// The staging directory must be the fresh one we made: a private, empty directory of ours.
fn check_ours(dir: &DirHandle) -> Result<(), ArchiveError> {
    let st = dir.metadata().map_err(write_err(dir.path()))?;
    let me = rustix::process::geteuid().as_raw();
    let empty = dir.entries().map(|e| e.is_empty()).unwrap_or(false);
    if st.st_uid != me || st.st_mode & 0o7777 != 0o700 || !empty {
        return Err(ArchiveError::Refused(format!(
            "the staging directory {} was replaced while it was made (owner {}, mode {:o}); another process is writing there: nothing was changed",
            dir.path().display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(())
}

/// Runs `f` on the staged database `name` in `dir`, confined to that directory (see
/// [`DirHandle::confined`]); errors name the real path.
fn on_staged_db<T: Send>(
    dir: &DirHandle,
    name: &Path,
    f: fn(&Path) -> Result<T, sqlite::SqliteError>,
) -> Result<T, ArchiveError> {
    dir.confined(|root| f(&root.join(name)))
        // `confined` fails only when its thread panicked: a bug, not the data's fault
        .map_err(|e| ArchiveError::Internal(format!("checking the restored database: {e}")))?
        .map_err(|e| {
            ArchiveError::Sqlite(sqlite::SqliteError {
                path: dir.join(name),
                reason: e.reason,
            })
        })
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

/// `path`, or its nearest ancestor that exists (a lost server's directories are made again).
pub fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// The process's umask, from `/proc/self/status` (reading it with `umask(2)` would change it for a
/// moment, for every thread).
fn umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    struct Tree {
        _dir: tempfile::TempDir,
        data: PathBuf,
        victim: PathBuf,
        cfg: SynapseConfig,
    }

    /// A live data directory, and beside it a directory no restore may touch.
    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("media_store/local_content")).unwrap();
        fs::write(data.join("x.signing.key"), "old key").unwrap();
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("secret"), "untouched").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
        let cfg = SynapseConfig {
            server_name: "x".into(),
            signing_key_path: data.join("x.signing.key"),
            media_store_path: data.join("media_store"),
            database: Database::Postgres,
            listener: None,
            files: vec![],
        };
        Tree {
            _dir: dir,
            data,
            victim,
            cfg,
        }
    }

    impl Tree {
        fn header(&self) -> Header {
            Header::new(&self.cfg, "2026-01-01T00:00:00Z")
        }

        fn name(&self, rel: &str) -> String {
            super::super::entry_name(&self.data.join(rel))
        }

        fn victim_untouched(&self) {
            let names: Vec<_> = fs::read_dir(&self.victim)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
            assert_eq!(fs::read_to_string(self.victim.join("secret")).unwrap(), "untouched");
            let md = fs::metadata(&self.victim).unwrap();
            assert_eq!(md.mode() & 0o7777, 0o700);
            assert_eq!(md.uid(), rustix::process::geteuid().as_raw());
        }
    }

    fn entry<'a>(name: &'a str, kind: EntryKind, data: &'a mut &'a [u8]) -> Entry<'a> {
        let size = data.len() as u64;
        Entry {
            name,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            size,
            data,
        }
    }

    /// A stager for `t`, past our archive's header.
    fn started(t: &Tree, id: &BackupId) -> Stager {
        let mut s = Stager::new(&t.cfg, id, false).unwrap();
        s.header(&t.header()).unwrap();
        s
    }

    fn feed(s: &mut Stager, name: &str, kind: EntryKind, body: &[u8]) -> Result<(), ArchiveError> {
        let mut data = body;
        s.entry(entry(name, kind, &mut data))
    }

    #[test]
    fn a_staging_directory_swapped_for_a_link_mid_restore_changes_nothing_outside() {
        let t = tree();
        let id: BackupId = "backup-20260101000000000000".parse().unwrap();
        let mut s = started(&t, &id);
        let media = |rel: &str| t.name(&format!("media_store/local_content/{rel}"));
        feed(&mut s, &t.name("media_store/local_content"), EntryKind::Dir, b"").unwrap();
        feed(&mut s, &media("ab"), EntryKind::Dir, b"").unwrap();
        feed(&mut s, &media("ab/first"), EntryKind::File, b"one").unwrap();
        // Synapse's user renames the staging directory away and puts a link in its place
        let staging = t.data.join(format!("media_store/{STAGING_PREFIX}{id}"));
        fs::rename(&staging, t.data.join("media_store/moved")).unwrap();
        std::os::unix::fs::symlink(&t.victim, &staging).unwrap();
        feed(&mut s, &media("cd"), EntryKind::Dir, b"").unwrap();
        feed(&mut s, &media("cd/second"), EntryKind::File, b"two").unwrap();
        feed(&mut s, &media("ab/third"), EntryKind::File, b"three").unwrap();
        feed(&mut s, &t.name("x.signing.key"), EntryKind::File, b"new key").unwrap();
        let staged = s.finish().unwrap();
        t.victim_untouched();
        // everything went where the restore's handles point: the directory it made
        let moved = t.data.join("media_store/moved/local_content");
        assert_eq!(fs::read_to_string(moved.join("cd/second")).unwrap(), "two");
        assert_eq!(fs::read_to_string(moved.join("ab/third")).unwrap(), "three");
        drop(staged);
        t.victim_untouched();
        assert!(t.victim.join("secret").exists());
    }

    #[test]
    fn a_chain_of_links_and_a_hard_link_through_it_are_refused() {
        let t = tree();
        let id: BackupId = "backup-20260101000000000000".parse().unwrap();
        let mut s = started(&t, &id);
        let media = |rel: &str| t.name(&format!("media_store/local_content/{rel}"));
        feed(&mut s, &media("a"), EntryKind::Dir, b"").unwrap();
        // each of these passed the old textual check, and together they resolve to `/`
        for (link, target) in [("a/up", ".."), ("a/u1", "up/.."), ("a/u2", "u1/..")] {
            let e = feed(&mut s, &media(link), EntryKind::Symlink(target.into()), b"").unwrap_err();
            assert!(matches!(e, ArchiveError::Hostile { .. }), "{link}: {e}");
        }
        // a link that only points down is fine, but a hard link is never resolved through it
        feed(&mut s, &media("a/sub"), EntryKind::Dir, b"").unwrap();
        feed(&mut s, &media("a/sub/file"), EntryKind::File, b"data").unwrap();
        feed(&mut s, &media("a/down"), EntryKind::Symlink("sub".into()), b"").unwrap();
        let e = feed(&mut s, &media("a/h"), EntryKind::HardLink(media("a/down/file")), b"").unwrap_err();
        assert!(e.to_string().contains("not a file restored before it"), "{e}");
        // a hard link to a host file, or across roles, is refused
        let e = feed(&mut s, &media("a/h"), EntryKind::HardLink("etc/passwd".into()), b"").unwrap_err();
        assert!(matches!(e, ArchiveError::Hostile { .. }), "{e}");
        let e = feed(&mut s, &media("a/h"), EntryKind::HardLink(t.name("x.signing.key")), b"").unwrap_err();
        assert!(matches!(e, ArchiveError::Hostile { .. }), "{e}");
        // and the hard link to the real file works
        feed(&mut s, &media("a/h"), EntryKind::HardLink(media("a/sub/file")), b"").unwrap();
        drop(s);
        t.victim_untouched();
    }

    #[test]
    fn a_directory_the_walk_comes_back_to_keeps_its_metadata() {
        let t = tree();
        let id: BackupId = "backup-20260101000000000000".parse().unwrap();
        let mut s = started(&t, &id);
        let media = |rel: &str| t.name(&format!("media_store/local_content/{rel}"));
        feed(&mut s, &t.name("media_store/local_content"), EntryKind::Dir, b"").unwrap();
        feed(&mut s, &media("a"), EntryKind::Dir, b"").unwrap();
        feed(&mut s, &media("a/b"), EntryKind::Dir, b"").unwrap();
        feed(&mut s, &media("a/b/one"), EntryKind::File, b"1").unwrap();
        feed(&mut s, &media("c"), EntryKind::Dir, b"").unwrap();
        feed(&mut s, &media("c/two"), EntryKind::File, b"2").unwrap();
        // back into directories the walk left (another tar's order), and a later entry of a name
        feed(&mut s, &media("a/b/three"), EntryKind::File, b"3").unwrap();
        feed(&mut s, &media("a/b/one"), EntryKind::File, b"one").unwrap();
        feed(&mut s, &media("a/new/four"), EntryKind::File, b"4").unwrap();
        let staged = s.finish().unwrap();
        let root = t.data.join(format!("media_store/{STAGING_PREFIX}{id}/local_content"));
        assert_eq!(fs::read_to_string(root.join("a/b/one")).unwrap(), "one");
        assert_eq!(fs::read_to_string(root.join("a/b/three")).unwrap(), "3");
        assert_eq!(fs::read_to_string(root.join("a/new/four")).unwrap(), "4");
        for (dir, mode) in [
            ("", 0o744),
            ("a", 0o744),
            ("a/b", 0o744),
            ("c", 0o744),
            ("a/new", 0o755),
        ] {
            let md = fs::metadata(root.join(dir)).unwrap();
            assert_eq!(md.mode() & 0o7777, mode, "{dir:?}");
            if mode == 0o744 {
                assert_eq!(md.mtime(), 1_700_000_000, "{dir:?}");
            }
        }
        let md = fs::metadata(root.join("a/b/one")).unwrap();
        assert_eq!((md.mode() & 0o777, md.mtime()), (0o644, 1_700_000_000));
        drop(staged);
        t.victim_untouched();
    }

    #[test]
    fn entries_are_never_written_through_a_link_the_archive_made() {
        let t = tree();
        let id: BackupId = "backup-20260101000000000000".parse().unwrap();
        let media = |rel: &str| t.name(&format!("media_store/local_content/{rel}"));
        for (name, kind) in [("l/file", EntryKind::File), ("l", EntryKind::Dir)] {
            let mut s = started(&t, &id);
            feed(&mut s, &media("sub"), EntryKind::Dir, b"").unwrap();
            feed(&mut s, &media("l"), EntryKind::Symlink("sub".into()), b"").unwrap();
            // a lane writes it: the refusal comes at a later hand-over, or at the end
            let e = feed(&mut s, &media(name), kind, b"x")
                .and_then(|()| s.finish().map(drop))
                .unwrap_err();
            assert!(matches!(e, ArchiveError::Hostile { .. }), "{name}: {e}");
            assert!(!t.data.join("media_store/local_content/sub/file").exists());
        }
        t.victim_untouched();
    }
}
