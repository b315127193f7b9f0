//! Restoring a differential: its own archive is staged first, as any backup's; the files its
//! manifest lists as its base's are noted on the way (spilled to an unnamed temporary file, in
//! tree order, so memory stays bounded whatever their number); then the base's archive is read
//! and only those files are taken from it. Everything else the base holds — its signing key and
//! database, media deleted since — is passed over.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};

use super::index::walk_order;
use super::reader::checked_name;
use super::rules::{Layout, Role};
use super::staging::{check_server_name, Stager};
use super::{ArchiveError, Entry, EntryKind, Header, Kind, Visitor};
use crate::backup_id::BackupId;

/// A differential's inherited files as its manifest lists them: media directory, path below it,
/// size; one JSON line each.
pub(super) struct Spill {
    out: BufWriter<File>,
    last: Option<(usize, String)>,
    count: u64,
}

impl Spill {
    pub fn new() -> Result<Self, ArchiveError> {
        let file = tempfile::tempfile().map_err(|e| ArchiveError::io("keeping the differential's file list", e))?;
        Ok(Spill {
            out: BufWriter::new(file),
            last: None,
            count: 0,
        })
    }

    /// Notes a file the base must provide; `layout` is the differential's.
    pub fn push(&mut self, layout: &Layout, path: &str, size: u64) -> Result<(), ArchiveError> {
        let name = checked_name(path.as_bytes())?;
        let (m, rest) = match layout.classify(&name) {
            Some((Role::Media(m), rest)) if !rest.is_empty() => (m, rest.to_string()),
            _ => {
                return Err(ArchiveError::Manifest(format!(
                    "{path} is listed as the base's, but only media files can be"
                )))
            }
        };
        if let Some((lm, lp)) = &self.last {
            if walk_order((*lm, lp), (m, &rest)) != Ordering::Less {
                return Err(ArchiveError::Manifest(format!(
                    "the base's files are out of order at {path}"
                )));
            }
        }
        let err = |e: io::Error| ArchiveError::io("keeping the differential's file list", e);
        let line = serde_json::to_string(&(m, size, &rest)).map_err(|e| err(io::Error::other(e)))?;
        writeln!(self.out, "{line}").map_err(err)?;
        self.last = Some((m, rest));
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn into_reader(self) -> Result<Wanted, ArchiveError> {
        let err = |e: io::Error| ArchiveError::io("reading the differential's file list", e);
        let mut file = self.out.into_inner().map_err(|e| err(e.into_error()))?;
        file.rewind().map_err(err)?;
        let mut wanted = Wanted {
            lines: BufReader::new(file),
            next: None,
            left: self.count,
        };
        wanted.advance()?;
        Ok(wanted)
    }
}

struct Wanted {
    lines: BufReader<File>,
    next: Option<(usize, u64, String)>,
    left: u64,
}

impl Wanted {
    fn advance(&mut self) -> Result<(), ArchiveError> {
        let mut line = String::new();
        let n = self
            .lines
            .read_line(&mut line)
            .map_err(|e| ArchiveError::io("reading the differential's file list", e))?;
        self.next = if n == 0 {
            None
        } else {
            let rec = serde_json::from_str(line.trim_end())
                .map_err(|e| ArchiveError::io("reading the differential's file list", io::Error::other(e)))?;
            Some(rec)
        };
        Ok(())
    }
}

/// The visitor of a differential's base: stages what the differential lists, skips the rest.
pub struct FromBase<'s> {
    stager: &'s mut Stager,
    base: BackupId,
    wanted: Wanted,
    layout: Option<Layout>,
}

impl<'s> FromBase<'s> {
    pub(super) fn new(stager: &'s mut Stager, base: BackupId, spill: Spill) -> Result<Self, ArchiveError> {
        Ok(FromBase {
            stager,
            base,
            wanted: spill.into_reader()?,
            layout: None,
        })
    }

    /// Every listed file was found in the base.
    pub fn finish(self) -> Result<(), ArchiveError> {
        match &self.wanted.next {
            None => Ok(()),
            Some((_, _, rest)) => Err(self.lacks(rest)),
        }
    }

    fn lacks(&self, rest: &str) -> ArchiveError {
        ArchiveError::Damaged(format!(
            "the base backup {} lacks {} of the files the differential needs (the first: {rest})",
            self.base, self.wanted.left
        ))
    }
}

impl Visitor for FromBase<'_> {
    fn header(&mut self, h: &Header) -> Result<(), ArchiveError> {
        if let Some(refusal) = super::rules::header_refusal(h) {
            return Err(refusal);
        }
        if h.kind != Kind::Full {
            return Err(ArchiveError::Damaged(format!(
                "the base backup {} is not a full backup",
                self.base
            )));
        }
        let (server_name, force) = self.stager.server();
        check_server_name(&self.base, &h.server_name, &server_name, force)?;
        self.layout = Some(Layout::Manifest(h.roots.clone()));
        self.stager.set_layout(Layout::Manifest(h.roots.clone()));
        Ok(())
    }

    fn entry(&mut self, e: Entry<'_>) -> Result<(), ArchiveError> {
        let Some(layout) = &self.layout else {
            return Err(ArchiveError::Damaged(format!(
                "the base backup {} has no manifest",
                self.base
            )));
        };
        if e.kind != EntryKind::File {
            return Ok(());
        }
        let Some((Role::Media(m), rest)) = layout.classify(e.name) else {
            return Ok(());
        };
        let Some((wm, size, wrest)) = &self.wanted.next else {
            return Ok(());
        };
        match walk_order((*wm, wrest), (m, rest)) {
            // listed, but the base went past it
            Ordering::Less => Err(self.lacks(wrest)),
            Ordering::Greater => Ok(()), // deleted or changed since the base
            Ordering::Equal if *size != e.size => Err(ArchiveError::Damaged(format!(
                "{} in the base backup {} is {} bytes where the differential lists {size}",
                e.name, self.base, e.size
            ))),
            Ordering::Equal => {
                self.wanted.advance()?;
                self.wanted.left -= 1;
                self.stager.entry(e)
            }
        }
    }
}
