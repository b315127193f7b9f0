//! The manifest inside every archive, in three kinds of entries under
//! `<signing key's directory>/.synapse-backup/`:
//! - `header.json`, the first entry: format, tool, time, server_name, database kind, and where each
//!   role (signing key, database, media store) was on the source server;
//! - `files-NNNNNN.json`, after every [`CHUNK`] files: their names, sizes and SHA-256 (in
//!   columns since format 2, see [`super::chunk_columns`]);
//! - `manifest.json`, the last entry: the header again with the totals.
//!
//! With stock tools (`gpg -d | tar -xz -C /`) these land in that hidden directory and do no harm.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::entry_name;
use crate::synapse::{Database, SynapseConfig};

/// Files described by one `files-NNNNNN.json` chunk.
pub const CHUNK: usize = 4096;
pub const DIR: &str = ".synapse-backup";
pub const HEADER: &str = "header.json";
pub const SUMMARY: &str = "manifest.json";
pub const FILES_PREFIX: &str = "files-";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub tool: String,
    pub created_at: String,
    pub server_name: String,
    /// `sqlite3` or `psycopg2`.
    pub database: String,
    pub roots: Roots,
    /// A full backup carries every file; a differential only what changed since `base`.
    #[serde(default, rename = "type")]
    pub kind: Kind,
    /// A differential's full backup, whose object holds the files it lists but does not carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// The two kinds of backup (see the README's "Full and differential backups").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Full,
    Differential,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Differential => "differential",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where each role was on the source server, as entry names (absolute paths without the leading `/`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roots {
    pub signing_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    pub media_store: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// In a differential: the file is not in this archive but in its base's (unchanged since).
    #[serde(default, skip_serializing_if = "is_false")]
    pub base: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The records of one `files-NNNNNN.json`, written in columns (see [`super::chunk_columns`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "super::chunk_columns::Wire")]
pub struct FileChunk {
    pub files: Vec<FileRecord>,
}

impl Serialize for FileChunk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::chunk_columns::Columns::of(self)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(flatten)]
    pub header: Header,
    /// Files in this archive (a differential's inherited files not counted).
    pub files: u64,
    pub bytes: u64,
    pub chunks: u64,
    /// A differential's files taken from its base, and their bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inherited: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inherited_bytes: u64,
    /// The first [`SKIPPED_LISTED`] entries `create` left out because a restore would refuse them
    /// (absent in backups made before it said so).
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// How many entries were left out in all.
    #[serde(default)]
    pub skipped_count: u64,
}

/// How many skipped entries a manifest (and a report) lists by name.
pub const SKIPPED_LISTED: usize = 100;

/// An entry `create` left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Its entry name (bytes that are not UTF-8 written as `\xNN`).
    pub name: String,
    pub reason: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Header {
    pub fn new(cfg: &SynapseConfig, created_at: &str) -> Self {
        Header {
            format: super::FORMAT,
            tool: crate::TOOL_VERSION.to_string(),
            created_at: created_at.to_string(),
            server_name: cfg.server_name.clone(),
            database: cfg.database.kind().to_string(),
            roots: Roots {
                signing_key: entry_name(&cfg.signing_key_path),
                database: match &cfg.database {
                    Database::Sqlite(p) => Some(entry_name(p)),
                    Database::Postgres => None,
                },
                media_store: entry_name(&cfg.media_store_path),
            },
            kind: Kind::Full,
            base: None,
        }
    }

    /// The directory the manifest entries live in, as an entry-name prefix (`data/.synapse-backup`).
    pub fn dir(&self) -> String {
        manifest_dir(&self.roots.signing_key)
    }
}

pub fn manifest_dir(signing_key_entry: &str) -> String {
    let parent = Path::new(signing_key_entry)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if parent.is_empty() {
        DIR.to_string()
    } else {
        format!("{parent}/{DIR}")
    }
}

/// What a manifest entry is, from its name.
#[derive(Debug, PartialEq, Eq)]
pub enum ManifestPart {
    Header,
    Files,
    Summary,
}

pub fn classify(name: &str) -> Option<ManifestPart> {
    let mut parts = name.rsplitn(3, '/');
    let file = parts.next()?;
    let dir = parts.next()?;
    if dir != DIR {
        return None;
    }
    match file {
        HEADER => Some(ManifestPart::Header),
        SUMMARY => Some(ManifestPart::Summary),
        f if f.starts_with(FILES_PREFIX) && f.ends_with(".json") => Some(ManifestPart::Files),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_from_before_skipped_entries_were_recorded_still_parses() {
        let old = r#"{"format":1,"tool":"synapse-backup 0.1.0","created_at":"2026-01-01T00:00:00Z",
            "server_name":"x","database":"sqlite3","roots":{"signing_key":"data/x.signing.key",
            "media_store":"data/media"},"files":3,"bytes":10,"chunks":1}"#;
        let s: Summary = serde_json::from_str(old).unwrap();
        assert_eq!((s.files, s.skipped_count, s.skipped.len()), (3, 0, 0));
    }

    #[test]
    fn names() {
        assert_eq!(manifest_dir("data/example.com.signing.key"), "data/.synapse-backup");
        assert_eq!(classify("data/.synapse-backup/header.json"), Some(ManifestPart::Header));
        assert_eq!(
            classify("data/.synapse-backup/files-000001.json"),
            Some(ManifestPart::Files)
        );
        assert_eq!(classify(".synapse-backup/manifest.json"), Some(ManifestPart::Summary));
        assert_eq!(classify("data/media/local_content/ab/cd/x"), None);
    }
}
