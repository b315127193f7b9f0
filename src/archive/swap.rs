//! Putting staged data into place so that a restore killed at any instant leaves every target
//! either old or new, never absent, and the next command can tell which.
//!
//! Before the first rename, a journal beside the data (next to the signing key) lists every
//! target: its live path, its staged copy and that copy's inode. Each target is then one atomic
//! exchange (`renameat2(RENAME_EXCHANGE)`): the staged copy takes the live name and the live data
//! takes the staged name, inside the staging directory, so at no instant is a target absent.
//! (Where a filesystem cannot exchange, the live data is renamed aside first, then the staged copy
//! in.) A database's stale `-wal`/`-shm` go aside just before it. The journal's phase says how far
//! the swap got:
//!
//! - `swapping`: renames may be half done. Recovery rolls back: a target whose live path holds the
//!   staged copy's inode was installed, so the undo is right whichever rename the kill interrupted.
//! - `swapped`: every target is new; the previous data waits in the staging directories until the
//!   restore is committed (Synapse answered its health check) or rolled back.
//!
//! Renames are made durable (the directories synced) before the phase changes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::handle::DirHandle;
use super::ArchiveError;
use crate::synapse::{Database, SynapseConfig};

pub const JOURNAL_NAME: &str = ".synapse-backup-restore.journal";
/// Staging directories are `<dir>/.synapse-backup-restore-<backup id>`.
pub const STAGING_PREFIX: &str = ".synapse-backup-restore-";

/// One live path replaced by its staged copy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub live: PathBuf,
    pub staged: PathBuf,
    /// The staged copy's (device, inode): wherever it is found, it is the restored data.
    #[serde(default)]
    pub staged_id: (u64, u64),
    /// Where the live data goes when the filesystem cannot exchange.
    pub aside: PathBuf,
    /// Was there live data to replace (a lost server's target is absent)?
    #[serde(default)]
    pub had_live: bool,
    /// Files that go aside with it and are not replaced: a database's stale `-wal` and `-shm`.
    #[serde(default)]
    pub companions: Vec<Companion>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Companion {
    pub live: PathBuf,
    pub aside: PathBuf,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Swapping,
    Swapped,
    /// An undo is under way: recovery goes on rolling back, never commits.
    RollingBack,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Journal {
    pub backup_id: String,
    pub phase: Phase,
    pub targets: Vec<Target>,
    /// The staging directories: they hold the previous data once swapped, the new data before.
    pub staging: Vec<PathBuf>,
}

/// Where this Synapse's restore journal is.
pub fn journal_path(cfg: &SynapseConfig) -> PathBuf {
    cfg.signing_key_path
        .parent()
        .unwrap_or(Path::new("/"))
        .join(JOURNAL_NAME)
}

/// The directories a restore stages into (the parents of its targets).
pub fn staging_parents(cfg: &SynapseConfig) -> Vec<PathBuf> {
    let mut dirs = vec![
        cfg.signing_key_path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        cfg.media_store_path.clone(),
    ];
    if let Database::Sqlite(db) = &cfg.database {
        dirs.push(db.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

impl Journal {
    pub fn read(path: &Path) -> Result<Option<Journal>, ArchiveError> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ArchiveError::io(
                    format!("cannot read the restore journal {}", path.display()),
                    e,
                ))
            }
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            ArchiveError::Refused(format!(
                "the restore journal {} is not readable ({e}); check the data beside it and remove the journal by hand",
                path.display()
            ))
        })
    }

    /// Written whole or not at all (a temporary file renamed over it), and synced.
    fn write(&self, path: &Path) -> Result<(), ArchiveError> {
        let tmp = path.with_extension("journal.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|e| ArchiveError::write(path, io::Error::other(e)))?;
        let written = (|| {
            // never through a link another user planted: a fresh file of our own
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            sync_dir(path.parent().unwrap_or(Path::new("/")))
        })();
        written.map_err(|e| ArchiveError::write(path, e))
    }

    /// Records each staged copy's identity, which rollback looks for at the live path.
    fn identify(&mut self, dirs: &mut Dirs) -> Result<(), ArchiveError> {
        for t in &mut self.targets {
            t.had_live = dirs.exists(&t.live);
            t.staged_id = dirs.identity(&t.staged).ok_or_else(|| {
                ArchiveError::io(
                    "swapping the restored data in",
                    io::Error::other(format!("the staged copy {} is missing", t.staged.display())),
                )
            })?;
        }
        Ok(())
    }
}

/// The directories a swap renames in, each opened once and then used through its handle (see
/// [`super::handle`]). A restore hands over the handles its staging opened; recovery opens them
/// from the journal's paths, a staging directory only if it is still a private one of this user.
#[derive(Debug, Default)]
pub struct Dirs {
    open: BTreeMap<PathBuf, DirHandle>,
}

impl Dirs {
    pub fn insert(&mut self, dir: DirHandle) {
        self.open.insert(dir.path().to_path_buf(), dir);
    }

    /// The handle of directory `dir`, opened on first use.
    fn dir(&mut self, dir: &Path) -> io::Result<&DirHandle> {
        if !self.open.contains_key(dir) {
            let opened = match (dir.parent(), dir.file_name()) {
                (Some(parent), Some(name)) if self.is_staging(dir) || self.inside_staging(dir) => {
                    let h = self.dir(parent)?.child(name)?;
                    if self.is_staging(dir) {
                        check_private(&h)?;
                    }
                    h
                }
                _ => DirHandle::open(dir)?,
            };
            self.open.insert(dir.to_path_buf(), opened);
        }
        self.open
            .get(dir)
            .ok_or_else(|| io::Error::other("a directory handle went missing"))
    }

    fn is_staging(&self, dir: &Path) -> bool {
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(STAGING_PREFIX))
    }

    fn inside_staging(&self, dir: &Path) -> bool {
        dir.ancestors().skip(1).any(|a| self.is_staging(a))
    }

    /// The directory handle and file name of `path`.
    fn at<'p>(&mut self, path: &'p Path) -> io::Result<(&DirHandle, &'p OsStr)> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file in a directory"));
        };
        Ok((self.dir(parent)?, name))
    }

    fn identity(&mut self, path: &Path) -> Option<(u64, u64)> {
        let (dir, name) = self.at(path).ok()?;
        dir.identity(name).ok().flatten()
    }

    fn exists(&mut self, path: &Path) -> bool {
        self.identity(path).is_some()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.both(from, to, |a, an, b, bn| a.rename(an, b, bn))
    }

    /// Swaps two paths atomically; `Ok(false)` where the filesystem cannot.
    fn exchange(&mut self, a: &Path, b: &Path) -> io::Result<bool> {
        self.both(a, b, |a, an, b, bn| a.exchange(an, b, bn))
    }

    fn both<T>(
        &mut self,
        a: &Path,
        b: &Path,
        f: impl FnOnce(&DirHandle, &OsStr, &DirHandle, &OsStr) -> io::Result<T>,
    ) -> io::Result<T> {
        let (Some(ap), Some(an), Some(bp), Some(bn)) = (a.parent(), a.file_name(), b.parent(), b.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file in a directory"));
        };
        self.dir(ap)?;
        self.dir(bp)?;
        match (self.open.get(ap), self.open.get(bp)) {
            (Some(ad), Some(bd)) => f(ad, an, bd, bn),
            _ => Err(io::Error::other("a directory handle went missing")),
        }
    }

    /// Makes directory `dir` (private) if missing.
    fn make_dir(&mut self, dir: &Path) -> io::Result<()> {
        let (parent, name) = self.at(dir)?;
        let (h, _) = parent.make_child(name, 0o700)?;
        self.insert(h);
        Ok(())
    }

    fn sync(&mut self, dir: &Path) -> io::Result<()> {
        self.dir(dir)?.sync()
    }

    /// Removes a staging directory and everything in it, once it is known to be ours.
    fn remove_staging(&mut self, dir: &Path) -> io::Result<()> {
        if !self.exists(dir) {
            return Ok(());
        }
        self.dir(dir)?; // checks it is a private directory of ours
        self.open.retain(|p, _| !p.starts_with(dir));
        let (parent, name) = self.at(dir)?;
        parent.remove_tree(name)
    }
}

/// A staging directory named by a journal is used only while it is a private directory of this
/// user: anything else was put there by someone else.
fn check_private(dir: &DirHandle) -> io::Result<()> {
    let st = dir.metadata()?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me || st.st_mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private directory of this user (owner {}, mode {:o})",
                dir.path().display(),
                st.st_uid,
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// A swap whose every target is new; the previous data is still on disk.
#[must_use]
#[derive(Debug)]
pub struct Swapped {
    journal: Journal,
    path: PathBuf,
    dirs: Dirs,
}

/// Moves every target into place. On failure, everything is put back and the error says so.
pub fn swap(
    journal_path: &Path,
    backup_id: &str,
    targets: Vec<Target>,
    staging: Vec<PathBuf>,
    mut dirs: Dirs,
) -> Result<Swapped, ArchiveError> {
    let mut journal = Journal {
        backup_id: backup_id.to_string(),
        phase: Phase::Swapping,
        targets,
        staging,
    };
    journal.identify(&mut dirs)?;
    journal.write(journal_path)?;
    let mut hook = TestHooks::from_env();
    if let Err(e) = forward(&journal, &mut dirs, &mut hook) {
        return Err(match rollback(journal_path, &journal, &mut dirs) {
            Ok(()) => e,
            Err(undo) => ArchiveError::Refused(format!("{e}; and putting the previous data back failed: {undo}")),
        });
    }
    journal.phase = Phase::Swapped;
    if let Err(e) = journal.write(journal_path) {
        // still `swapping` on disk: a later recovery would roll back, so do it now
        let undo = rollback(journal_path, &journal, &mut dirs);
        return Err(match undo {
            Ok(()) => e,
            Err(undo) => ArchiveError::Refused(format!("{e}; and putting the previous data back failed: {undo}")),
        });
    }
    hook.after_swap();
    Ok(Swapped {
        journal,
        path: journal_path.to_path_buf(),
        dirs,
    })
}

fn forward(journal: &Journal, dirs: &mut Dirs, hook: &mut TestHooks) -> Result<(), ArchiveError> {
    let mut synced: Vec<PathBuf> = Vec::new();
    for t in &journal.targets {
        if let Some(dir) = t.aside.parent() {
            dirs.make_dir(dir).map_err(|e| ArchiveError::write(dir, e))?;
        }
        for c in &t.companions {
            if dirs.exists(&c.live) {
                hook.before_rename();
                dirs.rename(&c.live, &c.aside)
                    .map_err(|e| ArchiveError::write(&c.live, e))?;
            }
        }
        hook.before_rename();
        let exchanged = dirs.exists(&t.live)
            && dirs
                .exchange(&t.staged, &t.live)
                .map_err(|e| ArchiveError::write(&t.live, e))?;
        if !exchanged {
            if dirs.exists(&t.live) {
                dirs.rename(&t.live, &t.aside)
                    .map_err(|e| ArchiveError::write(&t.live, e))?;
                hook.before_rename();
            }
            dirs.rename(&t.staged, &t.live)
                .map_err(|e| ArchiveError::write(&t.live, e))?;
        }
        hook.after_install()?;
        for dir in [t.live.parent(), t.staged.parent()].into_iter().flatten() {
            if !synced.iter().any(|d| d == dir) {
                synced.push(dir.to_path_buf());
            }
        }
    }
    for dir in synced {
        dirs.sync(&dir).map_err(|e| ArchiveError::write(&dir, e))?;
    }
    Ok(())
}

/// Puts every target back as it was before the swap (whatever part of it happened), then removes
/// the staging directories (they now hold the restored copies) and the journal. On a rename that
/// fails, the journal stays so that a later run can finish the job.
fn rollback(journal_path: &Path, journal: &Journal, dirs: &mut Dirs) -> Result<(), String> {
    // Every restored copy must be where the journal says it could be (live or staged), and the
    // previous data where an undo would take it from: otherwise the directory was changed behind
    // the journal's back (copied in place, a commit cut short) and nothing is moved.
    for t in &journal.targets {
        let installed = dirs.identity(&t.live) == Some(t.staged_id);
        let staged_here = dirs.identity(&t.staged) == Some(t.staged_id);
        if !installed && !staged_here {
            return Err(format!(
                "the restored copy of {} is neither in place nor staged (the data was changed since the restore); nothing was moved",
                t.live.display()
            ));
        }
        if installed && !dirs.exists(&t.staged) && !dirs.exists(&t.aside) && t.had_live {
            return Err(format!(
                "the data {} replaced is gone (a commit was cut short); nothing was moved",
                t.live.display()
            ));
        }
    }
    let mut undoing = journal.clone();
    undoing.phase = Phase::RollingBack;
    if journal.phase != Phase::RollingBack {
        undoing.write(journal_path).map_err(|e| e.to_string())?;
    }
    let mut failed = Vec::new();
    let rename = |dirs: &mut Dirs, from: &Path, to: &Path, failed: &mut Vec<String>| {
        if let Err(e) = dirs.rename(from, to) {
            failed.push(format!("{} (still at {}: {e})", to.display(), from.display()));
        }
    };
    for t in journal.targets.iter().rev() {
        let installed = dirs.identity(&t.live) == Some(t.staged_id);
        if installed {
            // a -wal or -shm here now belongs to the restored database: it leaves first, so the
            // previous database is never beside the restored one's log
            for c in &t.companions {
                if dirs.exists(&c.live) {
                    rename(dirs, &c.live, &staged_companion(&t.staged, &c.live), &mut failed);
                }
            }
            if dirs.exists(&t.staged) {
                // exchanged: the previous data is at the staged name
                match dirs.exchange(&t.live, &t.staged) {
                    Ok(true) => {}
                    Ok(false) => failed.push(format!("{} (cannot be exchanged back)", t.live.display())),
                    Err(e) => failed.push(format!("{} (still at {}: {e})", t.live.display(), t.staged.display())),
                }
            } else {
                rename(dirs, &t.live, &t.staged, &mut failed);
            }
        }
        let moved = std::iter::once((&t.live, &t.aside)).chain(t.companions.iter().map(|c| (&c.live, &c.aside)));
        for (live, aside) in moved {
            match (dirs.exists(aside), dirs.exists(live)) {
                (true, false) => rename(dirs, aside, live, &mut failed),
                // made after the swap stopped (a Synapse started on the half-swapped directory
                // makes a fresh database): neither copy is ours to drop
                (true, true) => failed.push(format!(
                    "{} was created after the restore was interrupted; the data it replaced is at {}",
                    live.display(),
                    aside.display()
                )),
                _ => {}
            }
        }
    }
    if !failed.is_empty() {
        return Err(failed.join(", "));
    }
    for dir in journal.targets.iter().filter_map(|t| t.live.parent()) {
        let _ = dirs.sync(dir);
    }
    forget(journal_path);
    remove_dirs(&journal.staging, dirs);
    Ok(())
}

/// The journal goes (durably) before the staging directories it names: a kill in between leaves
/// stale staging, which the next command removes, never a journal pointing at missing data.
fn forget(journal_path: &Path) {
    let _ = fs::remove_file(journal_path);
    let _ = sync_dir(journal_path.parent().unwrap_or(Path::new("/")));
}

/// Where a restored database's own `-wal`/`-shm` go on rollback: beside its staged copy, under a
/// name the swap never uses.
fn staged_companion(staged: &Path, live: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from("discarded-");
    name.push(live.file_name().unwrap_or_default());
    staged.with_file_name(name)
}

impl Swapped {
    pub fn backup_id(&self) -> &str {
        &self.journal.backup_id
    }

    /// The restore is done: the previous data goes, then the journal.
    pub fn commit(mut self) {
        commit(&self.path, &self.journal, &mut self.dirs);
    }

    /// The restored data is not wanted (Synapse did not start on it): the previous data comes back.
    pub fn rollback(mut self) -> Result<(), String> {
        rollback(&self.path, &self.journal, &mut self.dirs)
    }

    /// Leaves the previous data on disk for the operator; the journal stays `swapped`.
    pub fn keep(self) -> Vec<PathBuf> {
        self.journal.staging
    }
}

fn commit(journal_path: &Path, journal: &Journal, dirs: &mut Dirs) {
    forget(journal_path);
    remove_dirs(&journal.staging, dirs);
}

fn remove_dirs(staging: &[PathBuf], dirs: &mut Dirs) {
    for dir in staging {
        if let Err(e) = dirs.remove_staging(dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("could not remove {}: {e}", dir.display());
            }
        }
    }
}

/// What recovery found of an earlier restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// It was killed mid-swap; every target is back to the data it replaced.
    RolledBack { backup_id: String },
    /// It swapped everything in; the previous data is still kept (in `previous`).
    Swapped { backup_id: String, previous: Vec<PathBuf> },
}

impl Found {
    pub fn describe(&self) -> String {
        match self {
            Found::RolledBack { backup_id } => format!(
                "an interrupted restore of {backup_id} was found half swapped and rolled back: Synapse's data is as it was before that restore"
            ),
            Found::Swapped { backup_id, previous } => format!(
                "the data of backup {backup_id} is in place and the data it replaced is kept in {} (`synapse-backup recover --commit` drops it, `recover --rollback` puts it back)",
                previous.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// This Synapse's restore journal, if any, once it is known to be ours: a regular file of this
/// user's that no one else may write, naming only the paths a restore of this config makes. The
/// journal sits in a directory Synapse's own user can write, and what it names is renamed and
/// deleted as root: anything else is refused, untouched.
pub fn load(cfg: &SynapseConfig) -> Result<Option<Journal>, ArchiveError> {
    let path = journal_path(cfg);
    let refuse = |why: String| {
        ArchiveError::Refused(format!(
            "the restore journal {} {why}; it was not used (check the data beside it, then remove the journal by hand)",
            path.display()
        ))
    };
    let md = match path.symlink_metadata() {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ArchiveError::io(
                format!("cannot read the restore journal {}", path.display()),
                e,
            ))
        }
    };
    let me = rustix::process::geteuid().as_raw();
    if !md.is_file() || md.uid() != me || md.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "is not a private file of this user (type {:?}, owner {}, mode {:o})",
            md.file_type(),
            md.uid(),
            md.mode() & 0o7777
        )));
    }
    let Some(journal) = Journal::read(&path)? else {
        return Ok(None);
    };
    if journal.backup_id.parse::<crate::backup_id::BackupId>().is_err() {
        return Err(refuse("names no valid backup id".into()));
    }
    let name = format!("{STAGING_PREFIX}{}", journal.backup_id);
    let parents = staging_parents(cfg);
    let staging_ok = |d: &Path| parents.iter().any(|p| d == p.join(&name));
    if let Some(bad) = journal.staging.iter().find(|d| !staging_ok(d)) {
        return Err(refuse(format!("names {} as a staging directory", bad.display())));
    }
    let inside = |p: &Path| journal.staging.iter().any(|d| p.starts_with(d) && p != d);
    let mut lives = vec![cfg.signing_key_path.clone()];
    lives.extend(super::MEDIA_DIRS.iter().map(|d| cfg.media_store_path.join(d)));
    if let Database::Sqlite(db) = &cfg.database {
        lives.push(db.clone());
        for suffix in ["-wal", "-shm"] {
            let mut p = db.as_os_str().to_os_string();
            p.push(suffix);
            lives.push(PathBuf::from(p));
        }
    }
    for t in &journal.targets {
        let companions_ok = t.companions.iter().all(|c| lives.contains(&c.live) && inside(&c.aside));
        if !lives.contains(&t.live) || !inside(&t.staged) || !inside(&t.aside) || !companions_ok {
            return Err(refuse(format!(
                "names {} in a way no restore of this config does",
                t.live.display()
            )));
        }
    }
    Ok(Some(journal))
}

/// Finds the journal of an interrupted restore; rolls a half swap (or a half undo) back. A full
/// swap is left as it is (see [`commit_pending`] and [`rollback_pending`]).
pub fn recover(cfg: &SynapseConfig) -> Result<Option<Found>, ArchiveError> {
    let path = journal_path(cfg);
    let Some(journal) = load(cfg)? else {
        return Ok(None);
    };
    match journal.phase {
        Phase::Swapping | Phase::RollingBack => {
            rollback(&path, &journal, &mut Dirs::default()).map_err(|e| {
                ArchiveError::Refused(format!(
                    "an interrupted restore of {} could not be rolled back: {e}; the journal {} says what goes where",
                    journal.backup_id,
                    path.display()
                ))
            })?;
            Ok(Some(Found::RolledBack {
                backup_id: journal.backup_id,
            }))
        }
        Phase::Swapped => Ok(Some(Found::Swapped {
            backup_id: journal.backup_id,
            previous: journal.staging,
        })),
    }
}

/// Drops the previous data a finished restore kept; the backup id, if there was one.
pub fn commit_pending(cfg: &SynapseConfig) -> Result<Option<String>, ArchiveError> {
    let path = journal_path(cfg);
    match load(cfg)? {
        Some(j) if j.phase == Phase::Swapped => {
            commit(&path, &j, &mut Dirs::default());
            Ok(Some(j.backup_id))
        }
        _ => Ok(None),
    }
}

/// Puts back the data a finished restore replaced (its previous data is still kept).
pub fn rollback_pending(cfg: &SynapseConfig) -> Result<Option<String>, ArchiveError> {
    let path = journal_path(cfg);
    match load(cfg)? {
        Some(j) => {
            rollback(&path, &j, &mut Dirs::default()).map_err(|e| {
                ArchiveError::Refused(format!("rolling back the restore of {} failed: {e}", j.backup_id))
            })?;
            Ok(Some(j.backup_id))
        }
        None => Ok(None),
    }
}

/// Removes staging directories no journal needs (left by a restore killed before its swap);
/// what it removed.
pub fn remove_stale_staging(cfg: &SynapseConfig) -> Result<Vec<PathBuf>, ArchiveError> {
    let keep = load(cfg)?.map(|j| j.staging).unwrap_or_default();
    let mut removed = Vec::new();
    let mut dirs = Dirs::default();
    for parent in staging_parents(cfg) {
        let Ok(entries) = dirs.dir(&parent).and_then(DirHandle::entries) else {
            continue;
        };
        for name in entries {
            let is_staging = name.to_str().is_some_and(|n| n.starts_with(STAGING_PREFIX));
            let path = parent.join(&name);
            if !is_staging || keep.contains(&path) {
                continue;
            }
            match dirs.dir(&path) {
                Ok(_) => {}
                // not a directory, or not a private one of ours: not ours to remove
                Err(e) => {
                    tracing::warn!("left {} alone: {e}", path.display());
                    continue;
                }
            }
            dirs.remove_staging(&path).map_err(|e| ArchiveError::write(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Failure injection for the tests, compiled into debug builds only:
/// `SYNAPSE_BACKUP_TEST_KILL_AT_RENAME=N` kills the process (SIGKILL: no cleanup runs) just before
/// the swap's N-th rename (N past the last: just after the swap); `SYNAPSE_BACKUP_TEST_FAIL_SWAP`
/// makes the swap fail after its first installed target.
struct TestHooks {
    #[cfg(debug_assertions)]
    kill_at: Option<u32>,
    #[cfg(debug_assertions)]
    renames: u32,
    #[cfg(debug_assertions)]
    fail_swap: bool,
}

// Not even the names exist in a release build: nothing there reads these variables.
#[cfg(debug_assertions)]
pub const KILL_AT_RENAME_ENV: &str = "SYNAPSE_BACKUP_TEST_KILL_AT_RENAME";
#[cfg(debug_assertions)]
pub const FAIL_SWAP_ENV: &str = "SYNAPSE_BACKUP_TEST_FAIL_SWAP";

impl TestHooks {
    #[cfg(debug_assertions)]
    fn from_env() -> Self {
        TestHooks {
            kill_at: std::env::var(KILL_AT_RENAME_ENV).ok().and_then(|v| v.parse().ok()),
            renames: 0,
            fail_swap: std::env::var_os(FAIL_SWAP_ENV).is_some(),
        }
    }
    #[cfg(not(debug_assertions))]
    fn from_env() -> Self {
        TestHooks {}
    }

    fn before_rename(&mut self) {
        #[cfg(debug_assertions)]
        {
            self.renames += 1;
            if self.kill_at == Some(self.renames) {
                kill_self();
            }
        }
    }

    fn after_swap(&mut self) {
        #[cfg(debug_assertions)]
        if self.kill_at == Some(self.renames + 1) {
            kill_self();
        }
    }

    fn after_install(&mut self) -> Result<(), ArchiveError> {
        #[cfg(debug_assertions)]
        if self.fail_swap {
            return Err(ArchiveError::io(
                "swapping the restored data in",
                io::Error::other("failure injected by the test hook"),
            ));
        }
        Ok(())
    }
}

#[cfg(debug_assertions)]
fn kill_self() {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir with an old database (+ wal), an old key, and their staged copies.
    fn layout(d: &Path) -> (PathBuf, Vec<Target>, Vec<PathBuf>) {
        let staging = d.join(".synapse-backup-restore-b");
        fs::create_dir_all(&staging).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(d.join("db"), "old db").unwrap();
        fs::write(d.join("db-wal"), "old wal").unwrap();
        fs::write(d.join("key"), "old key").unwrap();
        fs::write(staging.join("db"), "new db").unwrap();
        fs::write(staging.join("key"), "new key").unwrap();
        let targets = vec![
            Target {
                live: d.join("db"),
                staged: staging.join("db"),
                staged_id: (0, 0),
                had_live: false,
                aside: staging.join("previous/db"),
                companions: vec![Companion {
                    live: d.join("db-wal"),
                    aside: staging.join("previous/db-wal"),
                }],
            },
            Target {
                live: d.join("key"),
                staged: staging.join("key"),
                staged_id: (0, 0),
                had_live: false,
                aside: staging.join("previous/key"),
                companions: vec![],
            },
        ];
        (d.join(JOURNAL_NAME), targets, vec![staging])
    }

    fn read(p: PathBuf) -> String {
        fs::read_to_string(p).unwrap_or_else(|_| "absent".into())
    }

    #[test]
    fn rollback_after_any_prefix_of_renames_gives_the_old_data() {
        // 5 renames: wal aside, db aside, db in, key aside, key in
        for done in 0..=5 {
            let d = tempfile::tempdir().unwrap();
            let (jpath, targets, staging) = layout(d.path());
            let journal = Journal {
                backup_id: "b".into(),
                phase: Phase::Swapping,
                targets: targets.clone(),
                staging,
            };
            journal.write(&jpath).unwrap();
            let mut journal = journal;
            journal.identify(&mut Dirs::default()).unwrap();
            journal.write(&jpath).unwrap();
            let targets = &journal.targets;
            // the fallback's renames (aside, then in); an exchange is the last two in one step
            let steps: Vec<(&Path, &Path)> = vec![
                (&targets[0].companions[0].live, &targets[0].companions[0].aside),
                (&targets[0].live, &targets[0].aside),
                (&targets[0].staged, &targets[0].live),
                (&targets[1].live, &targets[1].aside),
                (&targets[1].staged, &targets[1].live),
            ];
            fs::create_dir_all(targets[0].aside.parent().unwrap()).unwrap();
            for (from, to) in steps.iter().take(done) {
                fs::rename(from, to).unwrap();
            }
            if done >= 3 {
                // Synapse may have run on the new database: its own WAL appears
                fs::write(d.path().join("db-wal"), "new wal").unwrap();
            }
            rollback(&jpath, &journal, &mut Dirs::default()).unwrap();
            assert_eq!(read(d.path().join("db")), "old db", "after {done} renames");
            assert_eq!(read(d.path().join("db-wal")), "old wal", "after {done} renames");
            assert_eq!(read(d.path().join("key")), "old key", "after {done} renames");
            assert!(!jpath.exists() && !d.path().join(".synapse-backup-restore-b").exists());
        }
    }

    #[test]
    fn swap_then_commit_or_rollback() {
        let d = tempfile::tempdir().unwrap();
        let (jpath, targets, staging) = layout(d.path());
        let s = swap(&jpath, "b", targets.clone(), staging.clone(), Dirs::default()).unwrap();
        // exchanged: the previous database is at the staged name
        assert_eq!(read(d.path().join(".synapse-backup-restore-b/db")), "old db");
        assert_eq!(read(d.path().join("db")), "new db");
        assert!(!d.path().join("db-wal").exists());
        assert_eq!(Journal::read(&jpath).unwrap().unwrap().phase, Phase::Swapped);
        s.rollback().unwrap();
        assert_eq!(read(d.path().join("db")), "old db");
        assert_eq!(read(d.path().join("db-wal")), "old wal");

        let (jpath, targets, staging) = layout(d.path());
        swap(&jpath, "b", targets, staging, Dirs::default()).unwrap().commit();
        assert_eq!(read(d.path().join("key")), "new key");
        assert!(!jpath.exists() && !d.path().join(".synapse-backup-restore-b").exists());
    }
}
