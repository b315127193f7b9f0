//! Directories reached once and then used only through their handles.
//!
//! A restore runs as root while Synapse keeps running, and Synapse's own user can write the
//! directories a restore stages in (`/data`, `/var/lib/matrix-synapse`). A path looked up twice in
//! such a directory can lead somewhere else the second time (the staging directory renamed, a
//! symlink put in its place). So each directory is opened once — [`DirHandle::open`] refuses a
//! symbolic link met in a directory another user can write — and every file and directory below
//! it is made, opened, linked, owned and renamed relative to a handle, never through a link
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, CWD};
use rustix::io::Errno;

/// How many symbolic links [`DirHandle::open`] follows (as Linux does).
const MAX_LINKS: usize = 40;

#[derive(Debug)]
pub struct DirHandle {
    fd: OwnedFd,
    path: PathBuf,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl DirHandle {
    /// Opens a configured directory. Symbolic links on the way are followed only where they sit
    /// in a directory no other user can write (the admin's layout); one in a directory another
    /// user can write is refused (`ELOOP`), since that user could have put it there.
    pub fn open(path: &Path) -> io::Result<DirHandle> {
        let mut links = 0;
        let root = rfs::openat(CWD, "/", dir_flags(), Mode::empty())?;
        let fd = walk(root, path, &mut links)?;
        Ok(DirHandle {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages and the journal.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A subdirectory, never through a link.
    pub fn child(&self, name: &OsStr) -> io::Result<DirHandle> {
        let fd = rfs::openat(&self.fd, name, dir_flags(), Mode::empty())?;
        Ok(DirHandle {
            fd,
            path: self.join(name),
        })
    }

    /// A subdirectory, made with `mode` if missing; and whether it was made.
    pub fn make_child(&self, name: &OsStr, mode: u32) -> io::Result<(DirHandle, bool)> {
        let made = match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(e.into()),
        };
        Ok((self.child(name)?, made))
    }

    /// A new regular file (never an existing one, never through a link), open for writing.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let fd = rfs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?;
        Ok(File::from(fd))
    }

    /// What `name` is (a link itself, not what it points to); None if absent.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn exists(&self, name: &OsStr) -> io::Result<bool> {
        self.stat(name).map(|s| s.is_some())
    }

    /// (device, inode) of `name`, if it exists.
    pub fn identity(&self, name: &OsStr) -> io::Result<Option<(u64, u64)>> {
        Ok(self.stat(name)?.map(|st| (st.st_dev, st.st_ino)))
    }

    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        Ok(rfs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        Ok(rfs::symlinkat(target, &self.fd, name)?)
    }

    /// A hard link `name` here to `from_name` in `from` (never through a link).
    pub fn hard_link(&self, from: &DirHandle, from_name: &OsStr, name: &OsStr) -> io::Result<()> {
        Ok(rfs::linkat(&from.fd, from_name, &self.fd, name, AtFlags::empty())?)
    }

    /// Gives `name` (a link itself, not what it points to) this owner.
    pub fn chown(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        let (uid, gid) = (rfs::Uid::from_raw(uid), rfs::Gid::from_raw(gid));
        Ok(rfs::chownat(
            &self.fd,
            name,
            Some(uid),
            Some(gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets this directory's own owner and mode.
    pub fn set_owner_and_mode(&self, owner: Option<(u32, u32)>, mode: u32) -> io::Result<()> {
        if let Some((uid, gid)) = owner {
            rfs::fchown(&self.fd, Some(rfs::Uid::from_raw(uid)), Some(rfs::Gid::from_raw(gid)))?;
        }
        Ok(rfs::fchmod(&self.fd, Mode::from_raw_mode(mode))?)
    }

    pub fn set_mtime(&self, time: std::time::SystemTime) -> io::Result<()> {
        let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let Ok(secs) = i64::try_from(since.as_secs()) else {
            return Ok(()); // beyond any clock: keep the time it was made
        };
        let t = rfs::Timestamps {
            last_access: rfs::Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_OMIT,
            },
            last_modification: rfs::Timespec {
                tv_sec: secs,
                tv_nsec: 0,
            },
        };
        Ok(rfs::futimens(&self.fd, &t)?)
    }

    /// Renames `name` here to `to_name` in `to`.
    pub fn rename(&self, name: &OsStr, to: &DirHandle, to_name: &OsStr) -> io::Result<()> {
        Ok(rfs::renameat(&self.fd, name, &to.fd, to_name)?)
    }

    /// Swaps `name` here with `other_name` in `other` atomically; `Ok(false)` where the
    /// filesystem cannot.
    pub fn exchange(&self, name: &OsStr, other: &DirHandle, other_name: &OsStr) -> io::Result<bool> {
        match rfs::renameat_with(&self.fd, name, &other.fd, other_name, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(true),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes this directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rfs::fsync(&self.fd)?)
    }

    /// Flushes the whole filesystem this directory is on.
    pub fn sync_filesystem(&self) -> io::Result<()> {
        Ok(rfs::syncfs(&self.fd)?)
    }

    /// Removes `name` and, if it is a directory, everything below it, never following a link.
    pub fn remove_tree(&self, name: &OsStr) -> io::Result<()> {
        match self.stat(name)? {
            None => Ok(()),
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let dir = self.child(name)?;
                for entry in dir.entries()? {
                    dir.remove_tree(&entry)?;
                }
                Ok(rfs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?)
            }
            Some(_) => self.remove_file(name),
        }
    }

    /// The names in this directory (not `.` and `..`).
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        let fd = rfs::openat(&self.fd, ".", dir_flags(), Mode::empty())?;
        Ok(list(&fd, &mut Vec::new())?.into_iter().map(|(name, _)| name).collect())
    }

    /// This directory's own metadata.
    pub fn metadata(&self) -> io::Result<Stat> {
        Ok(rfs::fstat(&self.fd)?)
    }

    /// The directory `rel` (a relative path) below this one, each component opened without
    /// following a link; missing ones are made with `mode` when `make` is set. Returns it and the
    /// relative paths it made, shallowest first.
    pub fn descend(&self, rel: &Path, make: Option<u32>) -> io::Result<(DirHandle, Vec<PathBuf>)> {
        let mut made = Vec::new();
        let mut cur: Option<DirHandle> = None;
        let mut so_far = PathBuf::new();
        for c in rel.components() {
            let Component::Normal(part) = c else {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path"));
            };
            so_far.push(part);
            let at = cur.as_ref().unwrap_or(self);
            let next = match make {
                Some(mode) => {
                    let (d, created) = at.make_child(part, mode)?;
                    if created {
                        made.push(so_far.clone());
                    }
                    d
                }
                None => at.child(part)?,
            };
            cur = Some(next);
        }
        let dir = match cur {
            Some(d) => d,
            None => self.try_clone()?,
        };
        Ok((dir, made))
    }

    /// Runs `f` with a path to this directory that no other process can redirect, for code that
    /// opens files by path (SQLite, and the journals it makes beside a database): on a thread of
    /// its own whose root is this directory (`chroot`, after unsharing only that thread's
    /// filesystem context). Without the privilege to chroot (not root: then no other user's
    /// writes are at stake), the path goes through `/proc/self/fd`. The only error is that
    /// thread's panic.
    pub fn confined<T: Send>(&self, f: impl FnOnce(&Path) -> T + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                let root = match self.enter() {
                    Ok(()) => PathBuf::from("/"),
                    Err(_) => {
                        use std::os::fd::AsRawFd;
                        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
                    }
                };
                f(&root)
            })
            .join()
            .map_err(|p| {
                io::Error::other(format!(
                    "a thread working on the staged database panicked: {}",
                    super::cause::panic_text(p.as_ref())
                ))
            })
        })
    }

    /// Makes this directory the calling thread's root; the thread must end afterwards.
    fn enter(&self) -> io::Result<()> {
        if !rustix::process::geteuid().is_root() {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        // SAFETY: this unshares only the filesystem context (root, working directory, umask) and
        // only of this thread, which ends when its work is done; the file descriptor table, the
        // concern of `unshare_unsafe`, stays shared.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS)? };
        rustix::process::fchdir(&self.fd)?;
        rustix::process::chroot(".")?;
        Ok(())
    }

    pub fn try_clone(&self) -> io::Result<DirHandle> {
        Ok(DirHandle {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }
}

/// Can someone other than this user (or root) add, remove or rename entries in this directory?
/// A sticky directory (`/tmp`) lets others add, but not replace what they do not own.
fn others_can_write(st: &Stat, me: u32) -> bool {
    let mode = st.st_mode;
    let owner_other = st.st_uid != me && st.st_uid != 0;
    let group_or_world = mode & 0o022 != 0;
    (owner_other && mode & 0o200 != 0) || group_or_world
}

fn is_sticky(st: &Stat) -> bool {
    st.st_mode & 0o1000 != 0
}

/// Walks `path` from the directory `start` (absolute paths from `/`), one component at a time.
fn walk(start: OwnedFd, path: &Path, links: &mut usize) -> io::Result<OwnedFd> {
    let me = rustix::process::geteuid().as_raw();
    let mut cur = start;
    for c in path.components() {
        match c {
            Component::RootDir => {
                cur = rfs::openat(CWD, "/", dir_flags(), Mode::empty())?;
            }
            Component::CurDir | Component::Prefix(_) => {}
            // `..` is never a link
            Component::ParentDir => cur = rfs::openat(&cur, "..", dir_flags(), Mode::empty())?,
            Component::Normal(part) => {
                let next = match rfs::openat(&cur, part, dir_flags(), Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::LOOP | Errno::NOTDIR) if is_link(&cur, part) => {
                        let here = rfs::fstat(&cur)?;
                        let owner = rfs::statat(&cur, part, AtFlags::SYMLINK_NOFOLLOW)?.st_uid;
                        let planted = others_can_write(&here, me) && !(is_sticky(&here) && (owner == me || owner == 0));
                        if planted || *links >= MAX_LINKS {
                            return Err(io::Error::new(
                                io::ErrorKind::PermissionDenied,
                                format!(
                                    "{} is a symbolic link in a directory another user can write (set Synapse's config to the real path)",
                                    Path::new(part).display()
                                ),
                            ));
                        }
                        *links += 1;
                        let target = rfs::readlinkat(&cur, part, Vec::new())?;
                        let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                        let from = cur.try_clone()?;
                        walk(from, &target, links)?
                    }
                    Err(e) => return Err(e.into()),
                };
                cur = next;
            }
        }
    }
    Ok(cur)
}

fn is_link(dir: &OwnedFd, name: &OsStr) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// What the directory open as `dir` holds from its current position (without `.` and `..`):
/// names and the types the listing gives ([`FileType::Unknown`] on filesystems that do not say),
/// read through `buf` (sized on first use, reused by a caller that lists many directories).
pub fn list(dir: impl AsFd, buf: &mut Vec<MaybeUninit<u8>>) -> io::Result<Vec<(OsString, FileType)>> {
    if buf.is_empty() {
        buf.resize(LIST_BUF, MaybeUninit::uninit());
    }
    let mut entries = rfs::RawDir::new(dir, buf.as_mut_slice());
    let mut out = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push((OsStr::from_bytes(name).to_os_string(), entry.file_type()));
        }
    }
    Ok(out)
}

/// The buffer a directory's listing is read into: a media store's shards hold a few files each.
const LIST_BUF: usize = 32 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn links_in_private_directories_are_followed_and_planted_ones_refused() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("via")).unwrap();
        let h = DirHandle::open(&d.path().join("via")).unwrap();
        assert_eq!(
            h.metadata().unwrap().st_ino,
            std::fs::metadata(&real)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .unwrap()
        );
        // the same link in a directory the world can write is not trusted
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&real, open.join("via")).unwrap();
        let e = DirHandle::open(&open.join("via")).unwrap_err();
        assert!(e.to_string().contains("another user can write"), "{e}");
    }

    #[test]
    fn confined_code_sees_only_the_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "inside").unwrap();
        let h = DirHandle::open(d.path()).unwrap();
        let got = h
            .confined(|root| std::fs::read_to_string(root.join("f")).unwrap())
            .unwrap();
        assert_eq!(got, "inside");
        if rustix::process::geteuid().is_root() {
            let outside = h.confined(|root| root.join("etc/passwd").exists()).unwrap();
            assert!(!outside, "a chroot: /etc is not reachable");
            assert!(Path::new("/etc/passwd").exists(), "the process's own root is untouched");
        }
    }

    #[test]
    fn descend_never_goes_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("a/l")).unwrap();
        let h = DirHandle::open(d.path()).unwrap();
        assert!(h.descend(Path::new("a/b"), None).is_ok());
        assert!(h.descend(Path::new("a/l"), None).is_err());
        assert!(h.descend(Path::new("a/l/x"), Some(0o700)).is_err());
        let (_, made) = h.descend(Path::new("a/c/d"), Some(0o700)).unwrap();
        assert_eq!(made, vec![PathBuf::from("a/c"), PathBuf::from("a/c/d")]);
        h.remove_tree(OsStr::new("a")).unwrap();
        assert!(!d.path().join("a").exists());
        assert!(Path::new("/etc/passwd").exists());
    }
}
