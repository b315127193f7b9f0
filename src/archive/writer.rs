//! The create side of the pipeline, on two threads joined by a bounded channel of tar chunks,
//! each tagged with its gzip level ([`super::segments`]):
//!
//! ```text
//! files ─▶ [walk + tar + SHA-256] ═segments═▶ [adaptive gzip + OpenPGP encrypt] ─▶ Upload
//! ```
//!
//! The split balances the two cores: on a media store of small files the walk's syscalls, tar
//! headers and hashes are about as much work as deflate and encryption together. Memory is
//! bounded by the channel and the writers' buffers, whatever the tree size: files are streamed,
//! directories are walked one at a time, and the manifest is flushed every [`manifest::CHUNK`]
//! files.
//!
//! The walk leaves out what a restore would refuse (see [`super::rules`]: links that point out of
//! their tree, fifos, sockets and devices, names that are not UTF-8 or too long), so a backup
//! never holds an entry that would stop its own restore; each one is reported in [`Written`] and
//! listed in the manifest's summary.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufWriter, Cursor, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use sha2::{Digest, Sha256};
use tar::{EntryType, HeaderMode};

use super::compress::{looks_compressed, AdaptiveGz, Level, SWITCH_MIN};
use super::handle;
use super::index::{IndexReader, IndexRecord, IndexWriter};
use super::manifest::{self, FileChunk, FileRecord, Skipped, Summary, SKIPPED_LISTED};
use super::read_ahead::ReadAhead;
use super::rules::{self, Layout};
use super::segments::{segments, SegmentReader, SegmentWriter};
use super::stages::{self, first_cause, Counters};
use super::{crypto, entry_name, ArchiveError, EntryKind, Header};
use crate::progress::ProgressSink;
use crate::secret::Secret;
use crate::store::Upload;

pub const PIPE_CHUNK: usize = 256 << 10;
pub const PIPE_DEPTH: usize = 16;
const PEEK: usize = 16 << 10;

/// What goes into one backup.
pub struct Plan {
    pub header: Header,
    pub sources: Vec<Source>,
}

/// A file, or a directory tree walked recursively.
pub struct Source {
    /// Where the bytes are read from (for the database: the snapshot).
    pub read_from: PathBuf,
    /// The entry name (the live path without its leading `/`).
    pub name: String,
    /// Whose owner, mode and times the entry carries, when not `read_from`'s: the database's
    /// entry holds the snapshot's bytes with the live file's metadata.
    pub meta_from: Option<PathBuf>,
    pub tree: bool,
}

impl Source {
    pub fn file(path: &Path) -> Self {
        Source {
            read_from: path.into(),
            name: entry_name(path),
            meta_from: None,
            tree: false,
        }
    }

    /// The bytes of `snapshot` under the name and metadata of `live_path`.
    pub fn snapshot_of(snapshot: &Path, live_path: &Path) -> Self {
        Source {
            read_from: snapshot.into(),
            name: entry_name(live_path),
            meta_from: Some(live_path.into()),
            tree: false,
        }
    }

    pub fn tree(root: &Path) -> Self {
        Source {
            read_from: root.into(),
            name: entry_name(root),
            meta_from: None,
            tree: true,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Written {
    /// Files in the archive, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// A differential's unchanged files, listed for its base to provide.
    pub inherited: u64,
    pub inherited_bytes: u64,
    /// The first [`SKIPPED_LISTED`] entries left out because a restore would refuse them.
    pub skipped: Vec<Skipped>,
    /// How many were left out in all.
    pub skipped_count: u64,
}

/// What the walk does with media files beyond archiving them.
pub enum Delta<'a> {
    /// Archive every file, keep no index.
    None,
    /// A full: archive every file and write the index a later differential needs.
    Index(&'a mut IndexWriter),
    /// A differential: archive only what changed since the base this index describes; list the
    /// rest as the base's.
    Base(&'a mut IndexReader),
}

/// Files modified this close to (or after) the moment the base started walking may have changed
/// without their size or mtime showing it (the clock ticks coarsely): their content is compared.
const SETTLED_NS: i128 = 2_000_000_000;

/// Streams the plan, encrypted with `passphrase`, into `upload` (which the caller then finishes).
pub fn write(
    plan: &Plan,
    passphrase: &Secret,
    upload: &mut dyn Upload,
    delta: Delta<'_>,
    progress: &dyn ProgressSink,
) -> Result<Written, ArchiveError> {
    let counters = Counters::default();
    let (tx, rx) = segments(Level::Small, PIPE_CHUNK, PIPE_DEPTH);
    let (produced, encrypted) = stages::run(
        "backing up",
        &counters,
        progress,
        || Producer::run(plan, tx, &counters, delta),
        || compress_and_encrypt(rx, passphrase, upload),
    );
    let (produced, written) = match produced {
        Ok(written) => (Ok(()), written),
        Err(e) => (Err(e), Written::default()),
    };
    first_cause(produced, encrypted)?;
    Ok(written)
}

/// What the walk left out: the first [`SKIPPED_LISTED`] by name, and how many in all.
#[derive(Default)]
struct Skips {
    listed: Vec<Skipped>,
    count: u64,
}

fn compress_and_encrypt(
    input: SegmentReader,
    passphrase: &Secret,
    upload: &mut dyn Upload,
) -> Result<(), ArchiveError> {
    let err = |e: io::Error| ArchiveError::io("writing the backup", e);
    let message = crypto::encrypt(upload, passphrase)?;
    // stored members write a 5-octet header per block: gathered before they are encrypted
    let mut gz = AdaptiveGz::new(BufWriter::with_capacity(PIPE_CHUNK, message), Level::Small).map_err(err)?;
    input.drain_into(&mut gz).map_err(err)?;
    let buffered = gz.finish().map_err(err)?;
    let message = buffered.into_inner().map_err(|e| err(e.into_error()))?;
    message.finish().map(drop).map_err(err)
}

type TarOut = tar::Builder<SegmentWriter>;

struct Producer<'a> {
    tar: TarOut,
    counters: &'a Counters,
    manifest_dir: String,
    chunk: Vec<FileRecord>,
    chunks: u64,
    files: u64,
    bytes: u64,
    peek: Vec<u8>,
    owner: (u64, u64),
    /// where each role's entries are, to apply the restore's rules to each entry
    layout: Layout,
    skips: Skips,
    delta: Delta<'a>,
    inherited: u64,
    inherited_bytes: u64,
    /// where a directory's entries are read into
    dir_buf: Vec<MaybeUninit<u8>>,
    /// the threads reading the tree being walked ahead of the walk
    read_ahead: Option<ReadAhead>,
}

impl<'a> Producer<'a> {
    fn run(plan: &Plan, out: SegmentWriter, counters: &'a Counters, delta: Delta<'a>) -> Result<Written, ArchiveError> {
        let mut tar = tar::Builder::new(out);
        tar.mode(HeaderMode::Complete);
        tar.follow_symlinks(false);
        let owner = fs::metadata(plan.sources.first().map(|s| s.read_from.clone()).unwrap_or_default())
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (u64::from(m.uid()), u64::from(m.gid()))
            })
            .unwrap_or((0, 0));
        let mut p = Producer {
            tar,
            counters,
            manifest_dir: plan.header.dir(),
            chunk: Vec::with_capacity(manifest::CHUNK),
            chunks: 0,
            files: 0,
            bytes: 0,
            peek: vec![0; PEEK],
            owner,
            layout: Layout::Manifest(plan.header.roots.clone()),
            skips: Skips::default(),
            delta,
            inherited: 0,
            inherited_bytes: 0,
            dir_buf: Vec::new(),
            read_ahead: None,
        };
        p.json(manifest::HEADER, &plan.header)?;
        for source in &plan.sources {
            if source.tree {
                let read_err = |e| read_err(&source.read_from, e);
                let dir = open_dir(&source.read_from).map_err(read_err)?;
                let md = dir.metadata().map_err(read_err)?;
                // a differential reads the bodies of the few files that changed only
                let bodies = !matches!(p.delta, Delta::Base(_));
                p.read_ahead = Some(ReadAhead::start(&source.read_from, bodies));
                p.tree(dir, &source.read_from, &source.name, &md)?;
                p.read_ahead = None;
            } else {
                p.file(
                    Open::Path(&source.read_from),
                    &source.name,
                    true,
                    source.meta_from.as_deref(),
                )?;
            }
        }
        p.flush_chunk()?;
        let summary = Summary {
            header: plan.header.clone(),
            files: p.files,
            bytes: p.bytes,
            chunks: p.chunks,
            skipped: p.skips.listed.clone(),
            skipped_count: p.skips.count,
            inherited: p.inherited,
            inherited_bytes: p.inherited_bytes,
        };
        p.json(manifest::SUMMARY, &summary)?;
        p.tar.into_inner().map_err(write_err)?.finish().map_err(write_err)?;
        Ok(Written {
            files: p.files,
            bytes: p.bytes,
            inherited: p.inherited,
            inherited_bytes: p.inherited_bytes,
            skipped: p.skips.listed,
            skipped_count: p.skips.count,
        })
    }

    /// Leaves out the entry `name` (its bytes: maybe not UTF-8), saying why.
    fn skip(&mut self, name: &[u8], reason: String) {
        let name = escaped(name);
        tracing::debug!("left out {name}: {reason}");
        self.skips.count += 1;
        if self.skips.listed.len() < SKIPPED_LISTED {
            self.skips.listed.push(Skipped { name, reason });
        }
    }

    /// What comes next goes through a member of `level`.
    fn set_level(&mut self, level: Level) -> Result<(), ArchiveError> {
        self.tar.get_mut().set_level(level).map_err(write_err)
    }

    /// One regular file; its SHA-256, or `None` when it was left out. `required`: a file the
    /// backup cannot be without (signing key, database), versus one of many media files that may
    /// be deleted while we walk. Those are opened without following a link and without blocking
    /// (one may be replaced while we walk).
    fn file(
        &mut self,
        open: Open<'_>,
        name: &str,
        required: bool,
        meta_from: Option<&Path>,
    ) -> Result<Option<(String, fs::Metadata)>, ArchiveError> {
        let (path, opened) = match open {
            Open::Path(path) => {
                let mut options = fs::OpenOptions::new();
                options.read(true);
                if !required {
                    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
                }
                (path, options.open(path))
            }
            // a walked media file: opened by its name in the directory being walked, which saves
            // the kernel a walk of the whole path (a media store of small files: a fifth of the
            // walk's time)
            Open::At { dir, child, path } => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let opened = rustix::fs::openat(dir, child, flags, Mode::empty());
                (path, opened.map(fs::File::from).map_err(io::Error::from))
            }
        };
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if !required && e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!("{} disappeared while backing up; skipped", path.display());
                return Ok(None);
            }
            Err(e) if !required && e.raw_os_error() == Some(libc::ELOOP) => {
                self.skip(name.as_bytes(), "it became a link while it was backed up".into());
                return Ok(None);
            }
            Err(e) => return Err(read_err(path, e)),
        };
        let md = file.metadata().map_err(|e| read_err(path, e))?;
        if !md.is_file() {
            if !required {
                self.skip(
                    name.as_bytes(),
                    "it stopped being a regular file while it was backed up".into(),
                );
                return Ok(None);
            }
            return Err(read_err(path, io::Error::other("not a regular file")));
        }
        let size = md.len();
        let mut header = tar::Header::new_gnu();
        match meta_from {
            Some(live) => {
                let live_md = fs::metadata(live).map_err(|e| read_err(live, e))?;
                header.set_metadata_in_mode(&live_md, HeaderMode::Complete);
            }
            None => header.set_metadata_in_mode(&md, HeaderMode::Complete),
        }
        header.set_size(size);
        let peeked = super::read_full(&mut file, &mut self.peek[..(size.min(PEEK as u64) as usize)])
            .map_err(|e| read_err(path, e))?;
        // A small file's tar header and padding outweigh its body, and deflate well even when the
        // body does not: small files always go through a deflating member.
        let level = if size < SWITCH_MIN {
            Level::Small
        } else if looks_compressed(&self.peek[..peeked]) {
            Level::Store
        } else {
            Level::Fast
        };
        self.set_level(level)?;
        let mut reader = Hashing::new(Cursor::new(&self.peek[..peeked]).chain(file.take(size - peeked as u64)));
        self.tar
            .append_data(&mut header, name, &mut reader)
            .map_err(write_err)?;
        if reader.len != size {
            return Err(read_err(
                path,
                io::Error::other("the file changed size while it was being backed up"),
            ));
        }
        let sha256 = reader.hex();
        self.record(FileRecord {
            path: name.to_string(),
            size,
            sha256: sha256.clone(),
            base: false,
        })?;
        Ok(Some((sha256, md)))
    }

    /// A media file: listed as the differential's base's when it is unchanged since, archived
    /// (and indexed, for a full) otherwise. `key`: its media directory and path below it.
    fn media_file(
        &mut self,
        open: Open<'_>,
        name: &str,
        key: (usize, &str),
        md: Option<&fs::Metadata>,
    ) -> Result<(), ArchiveError> {
        if let Delta::Base(base) = &mut self.delta {
            let path = open.path();
            let settled = base.header.started_ns - SETTLED_NS;
            let looked_up;
            let md = match md {
                Some(md) => md,
                None => match fs::symlink_metadata(path) {
                    Ok(md) => {
                        looked_up = md;
                        &looked_up
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(read_err(path, e)),
                },
            };
            if let Some(rec) = base.find(key)? {
                let unchanged = rec.same_as(md)
                    && (rec.mtime_ns < settled || hash_of(path).ok().as_deref() == Some(rec.sha256.as_str()));
                if unchanged {
                    self.inherited += 1;
                    self.inherited_bytes += rec.size;
                    self.counters
                        .set(self.files + self.inherited, self.bytes + self.inherited_bytes);
                    return self.push_record(FileRecord {
                        path: name.to_string(),
                        size: rec.size,
                        sha256: rec.sha256,
                        base: true,
                    });
                }
            }
        }
        let archived = self.file(open, name, false, None)?;
        if let (Delta::Index(index), Some((sha256, md))) = (&mut self.delta, archived) {
            index.push(&IndexRecord::new(key.0, key.1, &md, sha256))?;
        }
        Ok(())
    }

    /// A directory and everything below it. `dir_fd`: the directory, open; `md`, its metadata.
    /// Each directory is listed through the descriptor it was opened with, and what it holds is
    /// opened by name relative to it: on a media store of small files (a directory per file or
    /// nearly) a directory costs an open, a stat, its listing and a close, and the kernel never
    /// walks a whole path.
    fn tree(&mut self, dir_fd: fs::File, dir: &Path, name: &str, md: &fs::Metadata) -> Result<(), ArchiveError> {
        if let Some(read_ahead) = &self.read_ahead {
            read_ahead.entering(dir);
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(md, HeaderMode::Complete);
        header.set_entry_type(EntryType::Directory);
        header.set_size(0);
        self.set_level(Level::Small)?; // a header alone
        self.tar
            .append_data(&mut header, name, io::empty())
            .map_err(write_err)?;
        let mut children = handle::list(&dir_fd, &mut self.dir_buf).map_err(|e| read_err(dir, e))?;
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // a regular file is opened without following a link and its metadata read from the open
        // file: no lstat of its own (a differential compares the lstat with its base's first)
        let by_name = !matches!(self.delta, Delta::Base(_));
        for (child, file_type) in children {
            let path = dir.join(&child);
            // (a directory, open; its metadata), or the metadata of anything else
            let mut sub: Option<fs::File> = None;
            let md = if by_name && file_type == FileType::RegularFile {
                None
            } else {
                if file_type == FileType::Directory {
                    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    // gone, or no longer a directory: the lstat below says what it is now
                    sub = rustix::fs::openat(&dir_fd, child.as_os_str(), flags, Mode::empty())
                        .ok()
                        .map(fs::File::from);
                }
                let md = match &sub {
                    Some(f) => f.metadata(),
                    None => fs::symlink_metadata(&path),
                };
                match md {
                    Ok(md) => Some(md),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(read_err(&path, e)),
                }
            };
            let mut raw = Vec::with_capacity(name.len() + 1 + child.len());
            raw.extend_from_slice(name.as_bytes());
            raw.push(b'/');
            raw.extend_from_slice(child.as_bytes());
            let below = if md.as_ref().is_some_and(fs::Metadata::is_dir) {
                " (a directory: left out with everything in it)"
            } else {
                ""
            };
            if let Some(why) = rules::name_refusal(&raw) {
                self.skip(&raw, format!("{why}{below}"));
                continue;
            }
            let Ok(child_name) = String::from_utf8(raw) else {
                continue; // not UTF-8: refused just above
            };
            let kind = match &md {
                None => EntryKind::File,
                Some(md) => match self.kind(&path, &child_name, md)? {
                    Some(kind) => kind,
                    None => continue,
                },
            };
            let refused = match self.layout.classify(&child_name) {
                Some((role, rest)) => rules::refusal(role, rest, &kind),
                None => Some(rules::NOT_ALLOWED.to_string()),
            };
            if let Some(why) = refused {
                self.skip(child_name.as_bytes(), format!("{why}{below}"));
                continue;
            }
            let open = Open::At {
                dir: dir_fd.as_fd(),
                child: &child,
                path: &path,
            };
            match (kind, &md) {
                (EntryKind::Dir, Some(md)) => {
                    let sub = match sub {
                        Some(sub) => sub,
                        // a directory the listing did not say was one (or that raced)
                        None => match open_dir(&path) {
                            Ok(sub) => sub,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(read_err(&path, e)),
                        },
                    };
                    self.tree(sub, &path, &child_name, md)?
                }
                (EntryKind::File, _) => match self.layout.classify(&child_name) {
                    Some((rules::Role::Media(m), rest)) => {
                        let rest = rest.to_string();
                        self.media_file(open, &child_name, (m, &rest), md.as_ref())?
                    }
                    _ => {
                        self.file(open, &child_name, false, None)?;
                    }
                },
                (EntryKind::Symlink(target), Some(md)) => {
                    let mut header = tar::Header::new_gnu();
                    header.set_metadata_in_mode(md, HeaderMode::Complete);
                    header.set_entry_type(EntryType::Symlink);
                    header.set_size(0);
                    self.set_level(Level::Small)?;
                    self.tar
                        .append_link(&mut header, &child_name, &target)
                        .map_err(write_err)?;
                }
                // the walk never makes a hard link; a directory or link always has its metadata
                _ => {}
            }
        }
        Ok(())
    }

    /// What a walked entry would be in the archive; None when it is left out (a fifo, socket or
    /// device, a link whose target is not UTF-8) or gone.
    fn kind(&mut self, path: &Path, name: &str, md: &fs::Metadata) -> Result<Option<EntryKind>, ArchiveError> {
        let t = md.file_type();
        if t.is_dir() {
            return Ok(Some(EntryKind::Dir));
        }
        if t.is_file() {
            return Ok(Some(EntryKind::File));
        }
        if t.is_symlink() {
            let target = match fs::read_link(path) {
                Ok(target) => target,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(read_err(path, e)),
            };
            let bytes = target.as_os_str().as_bytes();
            if let Some(why) = rules::link_target_refusal(bytes) {
                self.skip(name.as_bytes(), why);
                return Ok(None);
            }
            return Ok(Some(EntryKind::Symlink(String::from_utf8_lossy(bytes).into_owned())));
        }
        let what = if t.is_fifo() {
            "a fifo"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_char_device() {
            "a character device"
        } else {
            "not a file, directory or link"
        };
        self.skip(
            name.as_bytes(),
            format!("{what} (devices, fifos and the like are never restored)"),
        );
        Ok(None)
    }

    fn record(&mut self, rec: FileRecord) -> Result<(), ArchiveError> {
        self.files += 1;
        self.bytes += rec.size;
        self.counters
            .set(self.files + self.inherited, self.bytes + self.inherited_bytes);
        self.push_record(rec)
    }

    fn push_record(&mut self, rec: FileRecord) -> Result<(), ArchiveError> {
        self.chunk.push(rec);
        if self.chunk.len() >= manifest::CHUNK {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<(), ArchiveError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.chunks += 1;
        let chunk = FileChunk {
            files: std::mem::take(&mut self.chunk),
        };
        let name = format!("{}{:06}.json", manifest::FILES_PREFIX, self.chunks);
        // compact: pretty printing puts each name, size and number on a line of its own
        let body = serde_json::to_vec(&chunk).map_err(|e| write_err(io::Error::other(e)))?;
        self.manifest_entry(&name, &body)
    }

    /// The header and the summary, for people to read as well (`tar -xz` puts them in a file).
    fn json(&mut self, file: &str, value: &impl serde::Serialize) -> Result<(), ArchiveError> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| write_err(io::Error::other(e)))?;
        self.manifest_entry(file, &body)
    }

    fn manifest_entry(&mut self, file: &str, body: &[u8]) -> Result<(), ArchiveError> {
        self.set_level(Level::Small)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o600);
        header.set_uid(self.owner.0);
        header.set_gid(self.owner.1);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        header.set_size(body.len() as u64);
        let name = format!("{}/{file}", self.manifest_dir);
        self.tar.append_data(&mut header, name, body).map_err(write_err)
    }
}

/// A directory, open for listing (following a link, as the roots are given).
fn open_dir(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
}

/// How [`Producer::file`] opens a file: by its path, or (a walked file) by its name in the
/// directory being walked.
enum Open<'a> {
    Path(&'a Path),
    At {
        dir: BorrowedFd<'a>,
        child: &'a OsStr,
        path: &'a Path,
    },
}

impl Open<'_> {
    fn path(&self) -> &Path {
        match self {
            Open::Path(path) | Open::At { path, .. } => path,
        }
    }
}

/// A name as text: UTF-8 as it is, any other byte as `\xNN`.
fn escaped(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// SHA-256 of a file's content.
fn hash_of(path: &Path) -> io::Result<String> {
    let mut sha = Hashing::new(fs::File::open(path)?);
    io::copy(&mut sha, &mut io::sink())?;
    Ok(sha.hex())
}

fn read_err(path: &Path, e: io::Error) -> ArchiveError {
    ArchiveError::io(format!("cannot read {}", path.display()), e)
}

fn write_err(e: io::Error) -> ArchiveError {
    ArchiveError::io("writing the archive stream", e)
}

/// Counts and hashes what passes through.
pub(super) struct Hashing<R> {
    inner: R,
    sha: Sha256,
    pub len: u64,
}

impl<R> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }

    pub fn hex(self) -> String {
        hex::encode(self.sha.finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::escaped;

    #[test]
    fn names_that_are_not_utf8_are_shown_byte_by_byte() {
        assert_eq!(escaped(b"data/media/ok"), "data/media/ok");
        assert_eq!(escaped(b"a-\xff\xfe-b/\xc3\xa9"), "a-\\xff\\xfe-b/\u{e9}");
    }
}
