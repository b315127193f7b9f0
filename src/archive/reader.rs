//! The restore side of the pipeline, on two threads joined by a bounded pipe:
//!
//! ```text
//! object ─▶ [OpenPGP decrypt] ═pipe═▶ [gunzip (if gzip) + tar + SHA-256] ─▶ Visitor
//! ```
//!
//! It reads our archives and the reference charm's (`tar -c … | gpg --symmetric`: plain tar,
//! maybe inside a GnuPG compression packet). Every entry name is checked before a visitor sees it
//! (no absolute names, no `..`, no devices); every file is hashed and, when the archive has a
//! manifest, compared with it. The visitor decides where entries go; nothing here writes to disk.
//! [`read`] returns Ok only if the whole stream was read and OpenPGP's integrity check passed.
//!
//! Until that check, at the very end, nothing read can be trusted, so nothing read is allowed to
//! cost unbounded memory: the tar guard ([`super::tar_guard`]) caps what the `tar` crate buffers,
//! manifest entries are capped by their header's size before they are read, and names, times and
//! owners are range-checked before a visitor sees them. Failures are told apart by type
//! ([`super::cause`]): the store's, a neighbouring stage's, or a damaged object.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read};
use std::sync::Mutex;

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::cause::{self, Source};
use super::manifest::{self, FileChunk, FileRecord, ManifestPart, Summary};
use super::pipe::{pipe, PipeWriter};
use super::rules::MAX_NAME;
use super::stages::{self, first_cause, Counters};
use super::tar_guard::{shown, TarGuard};
use super::writer::{Hashing, PIPE_CHUNK, PIPE_DEPTH};
use super::{crypto, mtime_of, ArchiveError, Header};
use crate::progress::ProgressSink;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link and its target, as written in the archive.
    Symlink(String),
    /// A hard link to an earlier entry (its name).
    HardLink(String),
}

/// One archive entry, its name already checked to be relative and free of `..`.
pub struct Entry<'a> {
    pub name: &'a str,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
    pub data: &'a mut dyn Read,
}

pub trait Visitor {
    /// Our archives' first entry. Return an error to stop before anything else is read.
    fn header(&mut self, header: &Header) -> Result<(), ArchiveError>;
    /// A file, directory or link. The reader hashes whatever of `data` is not read.
    fn entry(&mut self, entry: Entry<'_>) -> Result<(), ArchiveError>;
    /// A differential's manifest lists a file that its base's archive holds, in tree order.
    fn inherited(&mut self, _file: &FileRecord) -> Result<(), ArchiveError> {
        Ok(())
    }
}

#[derive(Debug, Default, Clone)]
pub struct ReadSummary {
    pub header: Option<Header>,
    pub files: u64,
    /// A differential's files that its base holds (listed, not carried).
    pub inherited: u64,
    pub inherited_bytes: u64,
    pub bytes: u64,
    /// Every file matched the manifest (false: no manifest, e.g. a reference-charm backup).
    pub manifest_checked: bool,
}

/// The largest `header.json` read (a few names and words).
const MAX_HEADER_PART: u64 = 1 << 20;
/// The largest `files-NNNNNN.json` or `manifest.json` read: [`manifest::CHUNK`] records of the
/// longest name (the summary lists at most a hundred skipped entries, well within it).
const MAX_FILES_PART: u64 = manifest::CHUNK as u64 * (MAX_NAME as u64 + 128);

/// Reads the backup in `src` (the store's reader: its failures are told as the store's).
pub fn read(
    src: Box<dyn Read + Send>,
    passphrase: &Secret,
    visitor: &mut (dyn Visitor + Send),
    progress: &dyn ProgressSink,
) -> Result<ReadSummary, ArchiveError> {
    let src: Box<dyn Read + Send> = Box::new(Source(src));
    let counters = Counters::default();
    let (tx, rx) = pipe(PIPE_CHUNK, PIPE_DEPTH);
    let (decrypted, unpacked) = stages::run(
        "reading backup",
        &counters,
        progress,
        move || decrypt_stage(src, passphrase, tx),
        || unpack_stage(rx, visitor, &counters),
    );
    match unpacked {
        Ok(summary) => decrypted.map(|()| summary),
        Err(e) => first_cause(decrypted, Err(e)).map(|()| ReadSummary::default()),
    }
}

/// [`read`] over an already decrypted stream (gzip'd or plain tar): what the fuzz targets and
/// their regression tests drive, so every byte reaches the unpacking rules without an S2K.
pub fn read_plain(src: impl BufRead, visitor: &mut (dyn Visitor + Send)) -> Result<ReadSummary, ArchiveError> {
    unpack_stage(src, visitor, &Counters::default())
}

/// `Read` for a `Send`-only reader, where Sequoia asks for `Sync` too (it is only used from one thread).
pub(super) struct SyncRead<R>(pub(super) Mutex<R>);

impl<R: Read> Read for SyncRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.get_mut() {
            Ok(r) => r.read(buf),
            Err(p) => p.into_inner().read(buf),
        }
    }
}

fn decrypt_stage(src: Box<dyn Read + Send>, passphrase: &Secret, mut out: PipeWriter) -> Result<(), ArchiveError> {
    let mut plain = crypto::decrypt(SyncRead(Mutex::new(src)), passphrase)?;
    let pass_on = |e| ArchiveError::io("passing on the decrypted stream", e);
    loop {
        let space = out.spare().map_err(pass_on)?;
        match plain.read(space) {
            Ok(0) => break,
            Ok(n) => out.commit(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crypto::stream_error(e)),
        }
    }
    out.finish().map_err(pass_on)
}

fn unpack_stage<R: BufRead>(
    mut input: R,
    visitor: &mut (dyn Visitor + Send),
    counters: &Counters,
) -> Result<ReadSummary, ArchiveError> {
    let head = input.fill_buf().map_err(damaged)?;
    if head.is_empty() {
        return Err(ArchiveError::Damaged("the backup is empty".into()));
    }
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read + '_> = if gzip {
        Box::new(MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    let mut archive = tar::Archive::new(TarGuard::new(stream));
    let mut check = ManifestCheck::default();
    let mut summary = ReadSummary::default();
    for (index, entry) in archive.entries().map_err(damaged)?.enumerate() {
        let mut entry = entry.map_err(damaged)?;
        let name = checked_name(&entry.path_bytes())?;
        if let Some(part) = manifest::classify(&name) {
            let cap = match part {
                ManifestPart::Header => MAX_HEADER_PART,
                ManifestPart::Files | ManifestPart::Summary => MAX_FILES_PART,
            };
            let body = read_small(&mut entry, &name, cap)?;
            match part {
                ManifestPart::Header if index == 0 => {
                    let header: Header = parse(&name, &body)?;
                    visitor.header(&header)?;
                    summary.header = Some(header);
                }
                ManifestPart::Header => return Err(ArchiveError::Manifest(format!("{name} is not the first entry"))),
                ManifestPart::Files => check.chunk(parse(&name, &body)?, &mut *visitor)?,
                ManifestPart::Summary => check.summary(parse(&name, &body)?)?,
            }
            continue;
        }
        let header = entry.header();
        let kind = match header.entry_type() {
            EntryType::Regular | EntryType::Continuous => EntryKind::File,
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if header.entry_type() == EntryType::Link {
                    EntryKind::HardLink(checked_name(target.as_bytes())?)
                } else {
                    EntryKind::Symlink(target)
                }
            }
            other => {
                return Err(ArchiveError::hostile(
                    &name,
                    format!("a {other:?} entry (devices, fifos and the like are never restored)"),
                ))
            }
        };
        let mode = header.mode().map_err(damaged)?;
        let uid = header.uid().map_err(damaged)?;
        let gid = header.gid().map_err(damaged)?;
        let mtime = header.mtime().map_err(damaged)?;
        // an owner is a 32-bit id on Linux; a time past the year 9999 is no time a file has
        if u32::try_from(uid).is_err() || u32::try_from(gid).is_err() {
            return Err(ArchiveError::Damaged(format!(
                "{} has an owner ({uid}:{gid}) that is not a 32-bit id",
                shown(name.as_bytes())
            )));
        }
        mtime_of(mtime)
            .map_err(|e| ArchiveError::Damaged(format!("{}: {}", shown(name.as_bytes()), inner_text(&e))))?;
        let size = entry.size();
        let is_file = kind == EntryKind::File;
        let mut data = Hashing::new(&mut entry);
        visitor.entry(Entry {
            name: &name,
            kind,
            mode,
            uid,
            gid,
            mtime,
            size,
            data: &mut data,
        })?;
        if is_file {
            io::copy(&mut data, &mut io::sink()).map_err(|e| ArchiveError::read(&name, e))?;
            if data.len != size {
                return Err(ArchiveError::Damaged(format!("{name} is shorter than its header says")));
            }
            if summary.header.is_some() {
                check.file(FileRecord {
                    path: name,
                    size,
                    sha256: data.hex(),
                    base: false,
                })?;
            }
            summary.files += 1;
            summary.bytes += size;
            counters.set(summary.files, summary.bytes);
        }
    }
    // Read to the very end, so gzip's trailer and OpenPGP's integrity check are verified too.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(damaged)?;
    (summary.inherited, summary.inherited_bytes) = (check.inherited, check.inherited_bytes);
    summary.manifest_checked = check.finish(summary.header.is_some(), summary.files)?;
    Ok(summary)
}

/// An entry name as a relative path free of `..`: absolute names and escapes are refused outright,
/// a leading `./` (as `tar -C / .` writes) is dropped.
pub fn checked_name(raw: &[u8]) -> Result<String, ArchiveError> {
    if raw.len() > MAX_NAME {
        return Err(ArchiveError::hostile(
            &shown(raw),
            format!(
                "a name of {} bytes, longer than the {MAX_NAME} a restore takes",
                raw.len()
            ),
        ));
    }
    let name = String::from_utf8_lossy(raw);
    if name.starts_with('/') {
        return Err(ArchiveError::hostile(&name, "an absolute name"));
    }
    if name.contains('\0') {
        return Err(ArchiveError::hostile(&name, "a NUL in the name"));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ArchiveError::hostile(&name, "a '..' in the name")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(ArchiveError::hostile(&name, "an empty name"));
    }
    Ok(parts.join("/"))
}

/// A manifest entry's body, refused unread if its header says it is over `cap` bytes.
fn read_small(entry: &mut tar::Entry<'_, impl Read>, name: &str, cap: u64) -> Result<Vec<u8>, ArchiveError> {
    let size = entry.size();
    if size > cap {
        return Err(ArchiveError::Damaged(format!(
            "{name} is {size} bytes; a manifest entry is at most {cap}"
        )));
    }
    let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry
        .take(cap)
        .read_to_end(&mut body)
        .map_err(|e| ArchiveError::read(name, e))?;
    Ok(body)
}

/// What a `Damaged` error says, without its prefix.
fn inner_text(e: &ArchiveError) -> String {
    match e {
        ArchiveError::Damaged(t) => t.clone(),
        other => other.to_string(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(name: &str, body: &[u8]) -> Result<T, ArchiveError> {
    serde_json::from_slice(body).map_err(|e| ArchiveError::Manifest(format!("{name}: {e}")))
}

/// A failure of the stream below the tar reader: the guard's refusal, the decrypting stage that
/// stopped (its own error is the one told), or a damaged object.
fn damaged(e: io::Error) -> ArchiveError {
    cause::classify(e, None)
}

/// Compares each file with the manifest chunk that follows it; holds at most one chunk of files.
#[derive(Default)]
struct ManifestCheck {
    pending: VecDeque<FileRecord>,
    chunks: u64,
    summary: Option<Summary>,
    inherited: u64,
    inherited_bytes: u64,
}

impl ManifestCheck {
    fn file(&mut self, rec: FileRecord) -> Result<(), ArchiveError> {
        if self.summary.is_some() {
            return Err(ArchiveError::Manifest(format!(
                "{} comes after the manifest's summary",
                rec.path
            )));
        }
        if self.pending.len() >= manifest::CHUNK {
            return Err(ArchiveError::Manifest(format!(
                "no manifest chunk lists {} or the files before it",
                rec.path
            )));
        }
        self.pending.push_back(rec);
        Ok(())
    }

    /// A chunk's records: those of files in this archive match the files before it, in order; a
    /// differential's inherited ones go to the visitor.
    fn chunk(&mut self, chunk: FileChunk, visitor: &mut (dyn Visitor + Send)) -> Result<(), ArchiveError> {
        let carried = chunk.files.iter().filter(|f| !f.base).count();
        if carried != self.pending.len() {
            return Err(ArchiveError::Manifest(format!(
                "a manifest chunk lists {carried} files where {} came before it",
                self.pending.len()
            )));
        }
        for rec in chunk.files.iter().filter(|f| f.base) {
            self.inherited += 1;
            self.inherited_bytes += rec.size;
            visitor.inherited(rec)?;
        }
        for (want, got) in chunk.files.iter().filter(|f| !f.base).zip(self.pending.drain(..)) {
            if *want != got {
                return Err(ArchiveError::Manifest(format!(
                    "{} does not match its size and SHA-256 in the manifest",
                    got.path
                )));
            }
        }
        self.chunks += 1;
        Ok(())
    }

    fn summary(&mut self, summary: Summary) -> Result<(), ArchiveError> {
        self.summary = Some(summary);
        Ok(())
    }

    /// True when a manifest vouched for every file.
    fn finish(self, has_header: bool, files: u64) -> Result<bool, ArchiveError> {
        if !has_header {
            return Ok(false);
        }
        let Some(summary) = self.summary else {
            return Err(ArchiveError::Damaged(
                "the manifest's summary is missing: the archive was cut short".into(),
            ));
        };
        if !self.pending.is_empty()
            || summary.chunks != self.chunks
            || summary.files != files
            || summary.inherited != self.inherited
        {
            return Err(ArchiveError::Manifest(format!(
                "it lists {} files in {} chunks; the archive holds {files} files and {} chunks",
                summary.files, summary.chunks, self.chunks
            )));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        assert_eq!(checked_name(b"./data/x").unwrap(), "data/x");
        assert_eq!(checked_name(b"data//media/").unwrap(), "data/media");
        for bad in [&b"/etc/passwd"[..], b"data/../../etc/passwd", b"..", b"./", b"a/\0b"] {
            assert!(
                matches!(checked_name(bad), Err(ArchiveError::Hostile { .. })),
                "{bad:?}"
            );
        }
    }
}
