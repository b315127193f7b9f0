//! A full backup's index: what a later differential needs to know of it, kept in the store beside
//! it (`<backup-id>.index`, never listed as a backup), so a differential is made without
//! downloading the full, from any machine. It is written, encrypted, to an unnamed temporary file
//! while the full walks the tree and stored only once the full is: a killed create leaves no
//! index without its backup, and no second upload to clean up.
//!
//! One JSON line for the index's header, then one per media file the full carries, in the order
//! the backup walked them (see [`walk_order`]): its media directory, its path below it, size,
//! modification time, inode and SHA-256. gzip'd and encrypted with the backup's passphrase like
//! the backup itself (`gpg -d backup-….index | zcat` reads it). Memory stays bounded both ways: the
//! full writes the lines as it walks, a differential reads them as it walks, a merge of two
//! sorted streams.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use super::reader::SyncRead;
use super::{crypto, ArchiveError};
use crate::backup_id::BackupId;
use crate::secret::Secret;
use crate::store::{ObjectStore, StoreError};

/// The longest line an index may hold (a record with a 4096-byte path is far below it).
const MAX_LINE: u64 = 64 << 10;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexHeader {
    /// The full backup this index describes.
    pub backup_id: String,
    pub server_name: String,
    /// When the full started walking the tree, nanoseconds since the epoch: a file modified
    /// after (or just before) then may have changed without its size and mtime saying so.
    pub started_ns: i128,
}

/// One media file of the full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRecord {
    /// Which media directory ([`super::MEDIA_DIRS`]).
    pub m: usize,
    /// The path below it.
    pub p: String,
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
    pub sha256: String,
}

impl IndexRecord {
    pub fn new(media: usize, rest: &str, md: &std::fs::Metadata, sha256: String) -> Self {
        IndexRecord {
            m: media,
            p: rest.to_string(),
            size: md.len(),
            mtime_ns: mtime_ns(md),
            ino: md.ino(),
            sha256,
        }
    }

    /// Does the file at `md` look unchanged since the full saw it?
    pub fn same_as(&self, md: &std::fs::Metadata) -> bool {
        self.size == md.len() && self.mtime_ns == mtime_ns(md) && self.ino == md.ino()
    }
}

pub fn mtime_ns(md: &std::fs::Metadata) -> i128 {
    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
}

/// The order the backup walks a media directory: depth first, each directory's children sorted by
/// name (bytes), which is the order of the paths' components compared one by one.
pub fn walk_order(a: (usize, &str), b: (usize, &str)) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.split('/').cmp(b.1.split('/')))
}

const INDEX_BUFFER: usize = 64 << 10;

/// Writes a full's index as its backup walks the tree.
pub struct IndexWriter {
    /// buffered: flate2's encoder zeroes its 32 KiB output buffer on every write, and serde_json
    /// writes a record in a dozen pieces
    out: BufWriter<GzEncoder<crypto::Encrypting<BufWriter<File>>>>,
    last: Option<(usize, String)>,
}

impl IndexWriter {
    pub fn new(passphrase: &Secret, header: &IndexHeader) -> Result<Self, ArchiveError> {
        let file = tempfile::tempfile().map_err(|e| ArchiveError::io("making the backup's index", e))?;
        let encrypted = crypto::encrypt(BufWriter::new(file), passphrase)?;
        let mut w = IndexWriter {
            out: BufWriter::with_capacity(INDEX_BUFFER, GzEncoder::new(encrypted, flate2::Compression::fast())),
            last: None,
        };
        w.line(header)?;
        Ok(w)
    }

    pub fn push(&mut self, rec: &IndexRecord) -> Result<(), ArchiveError> {
        if let Some((m, p)) = &self.last {
            if walk_order((*m, p), (rec.m, &rec.p)) != Ordering::Less {
                return Err(ArchiveError::Internal(format!(
                    "the index is out of order at {}",
                    rec.p
                )));
            }
        }
        self.last = Some((rec.m, rec.p.clone()));
        self.line(rec)
    }

    fn line(&mut self, value: &impl Serialize) -> Result<(), ArchiveError> {
        let err = |e: io::Error| ArchiveError::io("writing the backup's index", e);
        serde_json::to_writer(&mut self.out, value).map_err(|e| err(io::Error::other(e)))?;
        self.out.write_all(b"\n").map_err(err)
    }

    /// Stores the index beside backup `id` (made by now); the bytes stored.
    pub fn store(self, store: &dyn ObjectStore, id: &BackupId) -> Result<u64, ArchiveError> {
        let err = |e: io::Error| ArchiveError::io("writing the backup's index", e);
        let gz = self.out.into_inner().map_err(|e| err(e.into_error()))?;
        let buffered = gz.finish().map_err(err)?.finish().map_err(err)?;
        let mut file = buffered.into_inner().map_err(|e| err(e.into_error()))?;
        file.rewind().map_err(err)?;
        let stored = |e: StoreError| ArchiveError::io("storing the backup's index", io::Error::other(e.to_string()));
        let mut upload = store.put_index(id).map_err(stored)?;
        io::copy(&mut file, &mut upload).map_err(err)?;
        upload.finish().map_err(stored)
    }
}

/// A full's index read in walk order, for a differential's walk to look its files up in.
pub struct IndexReader {
    lines: BufReader<MultiGzDecoder<Box<dyn Read + Send + Sync>>>,
    pub header: IndexHeader,
    next: Option<IndexRecord>,
    line: String,
}

impl IndexReader {
    pub fn open(object: Box<dyn Read + Send>, passphrase: &Secret) -> Result<Self, ArchiveError> {
        let plain = crypto::decrypt(SyncRead(std::sync::Mutex::new(object)), passphrase)?;
        let mut r = IndexReader {
            lines: BufReader::new(MultiGzDecoder::new(plain)),
            header: IndexHeader::default(),
            next: None,
            line: String::new(),
        };
        r.header = match r.read_line()? {
            Some(line) => serde_json::from_str(line).map_err(|e| damaged(format!("its header: {e}")))?,
            None => return Err(damaged("it is empty".into())),
        };
        r.advance()?;
        Ok(r)
    }

    /// The full's record of the file at `key` (media directory, path below it), if it had one.
    /// Keys must come in walk order; records before `key` are passed over.
    pub fn find(&mut self, key: (usize, &str)) -> Result<Option<IndexRecord>, ArchiveError> {
        loop {
            let Some(next) = &self.next else { return Ok(None) };
            match walk_order((next.m, &next.p), key) {
                Ordering::Less => self.advance()?,
                Ordering::Equal => {
                    let found = self.next.take();
                    self.advance()?;
                    return Ok(found);
                }
                Ordering::Greater => return Ok(None),
            }
        }
    }

    /// Reads to the end (for `verify`): every line parses, and gzip and OpenPGP check out.
    pub fn check_to_end(mut self) -> Result<u64, ArchiveError> {
        let mut n = 0;
        while self.next.is_some() {
            n += 1;
            self.advance()?;
        }
        Ok(n)
    }

    fn advance(&mut self) -> Result<(), ArchiveError> {
        let prev = self.next.take();
        self.next = match self.read_line()? {
            Some(line) => Some(serde_json::from_str(line).map_err(|e| damaged(format!("a record: {e}")))?),
            None => None,
        };
        if let (Some(a), Some(b)) = (&prev, &self.next) {
            if walk_order((a.m, &a.p), (b.m, &b.p)) != Ordering::Less {
                return Err(damaged(format!("its records are out of order at {:?}", b.p)));
            }
        }
        Ok(())
    }

    fn read_line(&mut self) -> Result<Option<&str>, ArchiveError> {
        self.line.clear();
        let n = (&mut self.lines)
            .take(MAX_LINE)
            .read_line(&mut self.line)
            .map_err(|e| damaged(e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        if !self.line.ends_with('\n') {
            return Err(damaged("a line is cut short or too long".into()));
        }
        Ok(Some(self.line.trim_end()))
    }
}

fn damaged(why: String) -> ArchiveError {
    ArchiveError::Damaged(format!("the full backup's index: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_order_is_the_sorted_depth_first_walk() {
        let mut paths = vec!["ab/cd", "ab", "ab-x", "ab/c", "a/zz/z", "b", "ab/cd/e"];
        paths.sort_by(|a, b| walk_order((0, a), (0, b)));
        assert_eq!(paths, ["a/zz/z", "ab", "ab/c", "ab/cd", "ab/cd/e", "ab-x", "b"]);
        assert_eq!(walk_order((0, "z"), (1, "a")), Ordering::Less);
    }
}
