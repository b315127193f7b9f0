//! The archive: a Synapse data tree as one stream, tar → gzip → OpenPGP, and back.
//!
//! Entry names are the absolute source paths without the leading `/` (what `tar -c /data/…`
//! writes), so a backup also restores with stock tools: `gpg -d | tar -xz -C /`. gzip is a series
//! of members (stored for media that does not compress, level 1 for the rest), which any gzip
//! reader takes as one stream. OpenPGP is SKESK v4 + SEIPD v1 (AES-256, MDC), what GnuPG 2.2 reads.
//!
//! A small manifest travels inside (see [`manifest`]): a header first (so a restore can refuse a
//! wrong server before writing anything), the size and SHA-256 of every file in chunks after the
//! files they describe (so memory stays bounded whatever the tree size), and a summary last.

pub mod cause;
mod chunk_columns;
pub mod compress;
pub mod crypto;
mod file_writer;
pub mod from_base;
pub mod handle;
pub mod index;
pub mod manifest;
mod media_lanes;
pub mod pipe;
mod read_ahead;
pub mod reader;
pub mod rules;
mod segments;
mod stages;
pub mod staging;
pub mod swap;
pub mod tar_guard;
pub mod writer;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use manifest::{Header, Kind};
pub use reader::{read, Entry, EntryKind, ReadSummary, Visitor};
pub use writer::{write, Plan, Source, Written};

/// Reads until `buf` is full or the input ends; how much was read.
pub(crate) fn read_full(r: &mut (impl std::io::Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Archive format version, in the manifest and the object's metadata. 2: manifest chunks in
/// columns (format 1's are still read).
pub const FORMAT: u32 = 2;

/// The media store's directories a backup carries: what this server's users uploaded and its
/// thumbnails. `remote_content`, `remote_thumbnail` and `url_cache*` are caches and stay out.
pub const MEDIA_DIRS: [&str; 2] = ["local_content", "local_thumbnails"];

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("wrong passphrase: it does not open this backup")]
    WrongPassphrase,
    #[error("this object is not a passphrase-encrypted backup ({0})")]
    NotABackup(String),
    #[error("the backup is damaged, truncated or was tampered with: {0}")]
    Damaged(String),
    #[error("the backup holds an entry that would be written outside Synapse's data ({entry:?}: {reason}); nothing was restored")]
    Hostile { entry: String, reason: String },
    #[error("the backup's manifest does not match its contents: {0}")]
    Manifest(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    /// The object could not be read from its store (found by [`cause::SourceFailed`], not by text).
    #[error("the backup could not be read from the store: {0}; nothing was changed")]
    StoreRead(String),
    /// No room left (ENOSPC, EDQUOT) for what a restore stages.
    #[error("the disk is full: cannot write {path} ({source}); nothing was changed")]
    DiskFull {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A bug: a pipeline thread panicked.
    #[error("internal error (a bug in synapse-backup): {0}")]
    Internal(String),
    #[error(transparent)]
    Sqlite(#[from] crate::synapse::sqlite::SqliteError),
}

impl ArchiveError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ArchiveError::Io {
            context: context.into(),
            source,
        }
    }

    /// A failure writing (or making) `path` on this machine.
    pub fn write(path: &std::path::Path, source: std::io::Error) -> Self {
        ArchiveError::io(format!("cannot write {}", path.display()), source)
    }

    /// A failure writing what a restore stages at `path`, where nothing live was touched yet: a
    /// full disk says so.
    pub fn stage(path: &std::path::Path, source: std::io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ArchiveError::DiskFull {
                path: path.display().to_string(),
                source,
            },
            _ => ArchiveError::write(path, source),
        }
    }

    /// A failure reading an entry's data: the stream below it broke (the store, when it was the
    /// store; else the object is damaged).
    pub fn read(entry: &str, source: std::io::Error) -> Self {
        cause::classify(source, Some(&format!("reading {entry}")))
    }

    pub fn hostile(entry: &str, reason: impl Into<String>) -> Self {
        ArchiveError::Hostile {
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
}

/// The last second of the year 9999: no entry's time is later (GNU tar's base-256 fields can say
/// up to 2^95 seconds; `SystemTime` arithmetic panics long before that).
pub const MAX_MTIME: u64 = 253_402_300_799;

/// An entry's modification time as a `SystemTime`; refused past the year 9999.
pub fn mtime_of(secs: u64) -> Result<SystemTime, ArchiveError> {
    if secs > MAX_MTIME {
        return Err(ArchiveError::Damaged(format!(
            "a modification time of {secs} seconds after 1970, past the year 9999"
        )));
    }
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| ArchiveError::Damaged(format!("a modification time of {secs} seconds after 1970")))
}

/// The tar entry name of an absolute path: the path without its leading `/`.
pub fn entry_name(path: &std::path::Path) -> String {
    let s = path.to_string_lossy();
    s.trim_start_matches('/').to_string()
}

/// The inverse of [`entry_name`].
pub fn entry_path(name: &str) -> PathBuf {
    PathBuf::from("/").join(name)
}
