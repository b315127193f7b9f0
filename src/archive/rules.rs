//! What a restore accepts, in one place. The restore's stager, `verify` and `create` apply the
//! same rules, so `create` never writes an entry a restore would refuse and "good" from `verify`
//! means "will restore".
//!
//! - Every entry belongs to a role: the signing key, the database (and a reference-charm backup's
//!   `-wal`), or one of the media directories ([`super::MEDIA_DIRS`]); anything else is refused
//!   in our archives and skipped in foreign ones.
//! - The signing key and database are regular files; a media directory's root is a directory.
//! - A symbolic link's target is relative and has no `..` component, so it can only point down
//!   into the tree it sits in: no chain of such links ever leaves it, whatever else the tree holds.
//! - A hard link points at a regular file of the same media directory that came before it.
//! - Nothing is written below a file or link, and no file or link replaces a directory.
//!
//! `create` also leaves out names a restore could not give back as they were ([`name_refusal`]).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::Path;

use super::manifest::{Header, Roots};
use super::{ArchiveError, EntryKind, FORMAT, MEDIA_DIRS};
use crate::synapse::{Database, SynapseConfig};

/// The longest entry name, link target or symlink target a restore accepts (Linux's PATH_MAX).
pub const MAX_NAME: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    SigningKey,
    Database,
    DatabaseWal,
    Media(usize),
}

impl Role {
    pub fn is_media(self) -> bool {
        matches!(self, Role::Media(_))
    }
}

/// Where each role's entries are in an archive: from our manifest's roots, or, for archives
/// without one (the reference charm's `tar -c /data/*.key /data/homeserver.db* /data/media/local_*`),
/// by name.
#[derive(Clone, Debug)]
pub enum Layout {
    Manifest(Roots),
    Foreign {
        /// The file names this server's config gives its signing key and database.
        key_name: String,
        db_name: String,
    },
}

impl Layout {
    /// A foreign archive's layout for a server whose key and database have these file names.
    pub fn foreign(key_name: &str, db_name: &str) -> Self {
        Layout::Foreign {
            key_name: key_name.to_string(),
            db_name: db_name.to_string(),
        }
    }

    /// The layout of an archive without a manifest, for a server with this config (its signing
    /// key's and database's file names).
    pub fn foreign_for(cfg: &SynapseConfig) -> Self {
        let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        let db = match &cfg.database {
            Database::Sqlite(p) => name(p),
            Database::Postgres => "homeserver.db".into(),
        };
        Layout::foreign(&name(&cfg.signing_key_path), &db)
    }

    /// The layout of an archive without a manifest when no server's config is at hand: the
    /// reference charm's names (`*.signing.key`, `homeserver.db`).
    pub fn foreign_default() -> Self {
        Layout::foreign("", "homeserver.db")
    }

    /// Which role an entry belongs to, and its path below the role's root ("" for the root itself).
    pub fn classify<'n>(&self, name: &'n str) -> Option<(Role, &'n str)> {
        match self {
            Layout::Manifest(roots) => {
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
            Layout::Foreign { key_name, db_name } => {
                let base = name.rsplit('/').next().unwrap_or(name);
                if base == key_name || base.ends_with(".signing.key") {
                    return Some((Role::SigningKey, ""));
                }
                if base == db_name || base == "homeserver.db" {
                    return Some((Role::Database, ""));
                }
                if base.strip_prefix(db_name.as_str()) == Some("-wal") || base == "homeserver.db-wal" {
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
        }
    }

    /// Does an entry outside every role stop the restore (our archives name only their roles)?
    pub fn strict(&self) -> bool {
        matches!(self, Layout::Manifest(_))
    }
}

fn media_role(below: &str) -> Option<(Role, &str)> {
    let (first, rest) = below.split_once('/').unwrap_or((below, ""));
    MEDIA_DIRS
        .iter()
        .position(|d| *d == first)
        .map(|i| (Role::Media(i), rest))
}

/// The type rule: why an entry of `role` at `rest` (below the role's root) with this kind cannot
/// be restored, if it cannot. Hard links are checked by [`HardLinks`].
pub fn refusal(role: Role, rest: &str, kind: &EntryKind) -> Option<String> {
    match (role.is_media(), rest.is_empty(), kind) {
        (false, _, EntryKind::File) => None,
        (false, _, _) => Some("the signing key and database must be regular files".into()),
        (true, true, EntryKind::Dir) => None,
        (true, true, _) => Some("only a directory can be a media directory's root".into()),
        (true, false, EntryKind::Symlink(target)) => symlink_refusal(target),
        (true, false, _) => None,
    }
}

/// Why a symbolic link with this target cannot be restored, if it cannot: only relative targets
/// without `..` (see the module's note: such links can only point down).
pub fn symlink_refusal(target: &str) -> Option<String> {
    if target.is_empty() || target.len() > MAX_NAME || target.contains('\0') {
        return Some(format!("a link with an unusable target ({} bytes)", target.len()));
    }
    if target.starts_with('/') {
        return Some(format!("a link to an absolute path ({target:?})"));
    }
    if target.split('/').any(|part| part == "..") {
        return Some(format!("a link whose target goes up with '..' ({target:?})"));
    }
    None
}

/// Why an entry of this name cannot go into a backup, if it cannot (what `create` skips): a
/// restore reads names as UTF-8 text, so another name would come back in its place, and it takes
/// no name longer than [`MAX_NAME`].
pub fn name_refusal(name: &[u8]) -> Option<String> {
    if std::str::from_utf8(name).is_err() {
        return Some("a name that is not UTF-8, which a restore could not give back as it is".into());
    }
    if name.len() > MAX_NAME {
        return Some(format!("a name longer than {MAX_NAME} bytes ({} bytes)", name.len()));
    }
    None
}

/// Why a symbolic link with a target of these bytes cannot go into a backup, if it cannot: its
/// target must be UTF-8 text (see [`name_refusal`]) the restore accepts ([`refusal`] checks that).
pub fn link_target_refusal(target: &[u8]) -> Option<String> {
    std::str::from_utf8(target)
        .is_err()
        .then(|| "a link whose target is not UTF-8, which a restore could not give back as it is".into())
}

/// Why a restore stops at this header, whatever the server it restores onto, if it does: the
/// archive is of a format this version cannot read.
pub fn header_refusal(header: &Header) -> Option<ArchiveError> {
    (header.format > FORMAT).then(|| {
        ArchiveError::Refused(format!(
            "the backup was made by a newer synapse-backup ({}, format {}); upgrade to restore it",
            header.tool, header.format
        ))
    })
}

/// An entry outside every role, in our archives (foreign ones' are skipped).
pub const NOT_ALLOWED: &str = "not a path this Synapse's config allows";
/// A file or link whose name a directory already holds.
pub const OVER_A_DIRECTORY: &str = "a file or link over a directory";
/// An entry below a file or link, or a directory over one.
pub const THROUGH_A_LINK: &str = "it would be written through a link or over a file";

/// The hard-link rule over a stream of entries: a hard link must name a regular file of its own
/// media directory that came before it. Remembers a 64-bit hash of each file's name, so memory
/// stays small whatever the tree size (a collision could only make `verify` pass a link the
/// restore then refuses, never the reverse: the restore resolves the real file).
#[derive(Default)]
pub struct HardLinks {
    files: HashSet<u64>,
    hasher: std::hash::RandomState,
}

impl HardLinks {
    /// `name` was restored as a regular file.
    pub fn file(&mut self, name: &str) {
        let h = self.hash(name);
        self.files.insert(h);
    }

    /// `name` is no longer a regular file (a later entry of the same name replaced it).
    pub fn replaced(&mut self, name: &str) {
        let h = self.hash(name);
        self.files.remove(&h);
    }

    /// Why a hard link of `role` to `target` (an entry name) cannot be restored, if it cannot.
    pub fn refusal(&self, layout: &Layout, role: Role, target: &str) -> Option<String> {
        match layout.classify(target) {
            Some((trole, trest)) if trole == role && role.is_media() && !trest.is_empty() => {
                if self.files.contains(&self.hash(target)) {
                    None
                } else {
                    Some(format!(
                        "a hard link to {target:?}, which is not a file restored before it"
                    ))
                }
            }
            Some(_) => Some(format!("a hard link to {target:?}, outside its own media directory")),
            None => Some(format!("a hard link to {target:?}, outside the backup")),
        }
    }

    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }
}

/// What an entry left in its place, as far as a later entry can tell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Dir,
    /// a regular file, or a link
    Leaf,
}

/// Every rule a restore applies to a stream of entries, without writing anything (what `verify`
/// runs): the role, type, link and hard-link rules, and what the restore's stager only finds out
/// on disk as it writes: an entry below a file or link, a directory over one, a file or link over
/// a directory. Errors are the restore's own ([`ArchiveError::Hostile`], same reasons), so an
/// archive this passes is one a restore accepts. Remembers a 64-bit hash of each media entry's
/// place (see [`HardLinks`] for why a hash is enough).
pub struct Restorable {
    layout: Layout,
    links: HardLinks,
    /// each media entry's shape so far, by its role and path below the role's root (so the
    /// several trees of a foreign archive that land in one media directory meet, as on disk)
    shapes: HashMap<u64, Shape>,
    hasher: std::hash::RandomState,
}

impl Restorable {
    /// For a stream whose layout, until a manifest header says otherwise, is `layout` (a
    /// foreign archive's: see [`Layout::foreign_for`]).
    pub fn new(layout: Layout) -> Self {
        Restorable {
            layout,
            links: HardLinks::default(),
            shapes: HashMap::new(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Our archive's header: its roots say where each role is (and its format must be one a
    /// restore reads: [`header_refusal`]).
    pub fn header(&mut self, header: &Header) -> Result<(), ArchiveError> {
        if let Some(refused) = header_refusal(header) {
            return Err(refused);
        }
        self.layout = Layout::Manifest(header.roots.clone());
        Ok(())
    }

    /// One entry (its name already checked by the reader), in the order the restore applies
    /// the rules.
    pub fn entry(&mut self, name: &str, kind: &EntryKind) -> Result<(), ArchiveError> {
        let Some((role, rest)) = self.layout.classify(name) else {
            if self.layout.strict() {
                return Err(ArchiveError::hostile(name, NOT_ALLOWED));
            }
            return Ok(()); // skipped by the restore too
        };
        if let Some(why) = refusal(role, rest, kind) {
            return Err(ArchiveError::hostile(name, why));
        }
        if !role.is_media() || rest.is_empty() {
            return Ok(());
        }
        // the directories it goes into (itself too, for a directory) are made or opened
        // without following a link: none may be a file or link
        let dirs_end = match kind {
            EntryKind::Dir => rest.len(),
            _ => rest.rfind('/').unwrap_or(0),
        };
        for (end, _) in rest[..dirs_end].match_indices('/').chain([(dirs_end, "")]) {
            if end == 0 {
                continue;
            }
            let key = self.key(role, &rest[..end]);
            if *self.shapes.entry(key).or_insert(Shape::Dir) == Shape::Leaf {
                return Err(ArchiveError::hostile(name, THROUGH_A_LINK));
            }
        }
        if *kind == EntryKind::Dir {
            return Ok(());
        }
        // a later file or link of the same name replaces an earlier one, never a directory
        let key = self.key(role, rest);
        match self.shapes.remove(&key) {
            Some(Shape::Dir) => return Err(ArchiveError::hostile(name, OVER_A_DIRECTORY)),
            Some(Shape::Leaf) => self.links.replaced(name),
            None => {}
        }
        match kind {
            EntryKind::File => self.links.file(name),
            EntryKind::HardLink(target) => {
                if let Some(why) = self.links.refusal(&self.layout, role, target) {
                    return Err(ArchiveError::hostile(name, why));
                }
                self.links.file(name);
            }
            EntryKind::Symlink(_) | EntryKind::Dir => {}
        }
        self.shapes.insert(key, Shape::Leaf);
        Ok(())
    }

    fn key(&self, role: Role, rest: &str) -> u64 {
        self.hasher.hash_one((role, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> Layout {
        Layout::Manifest(Roots {
            signing_key: "data/x.signing.key".into(),
            database: Some("data/homeserver.db".into()),
            media_store: "data/media_store".into(),
        })
    }

    #[test]
    fn links_can_only_point_down() {
        assert_eq!(symlink_refusal("y"), None);
        assert_eq!(symlink_refusal("ef/./y"), None);
        for bad in ["../ef/y", "..", "a/../b", "/etc/passwd", "", "a\0b"] {
            assert!(symlink_refusal(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn a_chain_of_links_never_passes() {
        // a/up → .., a/u1 → up/.., a/u2 → u1/.. : each step names '..'
        for target in ["..", "up/..", "u1/.."] {
            assert!(symlink_refusal(target).is_some(), "{target}");
        }
    }

    #[test]
    fn roles_and_types() {
        let l = roots();
        assert_eq!(l.classify("data/x.signing.key"), Some((Role::SigningKey, "")));
        assert_eq!(
            l.classify("data/media_store/local_content/ab/cd"),
            Some((Role::Media(0), "ab/cd"))
        );
        assert_eq!(l.classify("data/media_store/remote_content/ab"), None);
        assert_eq!(l.classify("etc/passwd"), None);
        assert!(refusal(Role::SigningKey, "", &EntryKind::Dir).is_some());
        assert!(refusal(Role::Media(0), "", &EntryKind::File).is_some());
        assert!(refusal(Role::Media(0), "ab", &EntryKind::Symlink("/etc".into())).is_some());
        assert!(refusal(Role::Media(0), "ab", &EntryKind::Symlink("cd".into())).is_none());
    }

    #[test]
    fn hard_links_stay_in_their_media_directory_and_follow_their_file() {
        let l = roots();
        let mut links = HardLinks::default();
        let file = "data/media_store/local_content/ab/file";
        assert!(links.refusal(&l, Role::Media(0), file).is_some(), "not yet seen");
        links.file(file);
        assert!(links.refusal(&l, Role::Media(0), file).is_none());
        assert!(links.refusal(&l, Role::Media(1), file).is_some(), "another role");
        assert!(links.refusal(&l, Role::Media(0), "data/x.signing.key").is_some());
        links.replaced(file);
        assert!(links.refusal(&l, Role::Media(0), file).is_some());
    }

    fn reason(r: Result<(), ArchiveError>) -> String {
        match r {
            Err(ArchiveError::Hostile { reason, .. }) => reason,
            other => panic!("not refused as hostile: {other:?}"),
        }
    }

    #[test]
    fn a_stream_is_checked_as_the_restore_writes_it() {
        let mut r = Restorable::new(Layout::foreign_default());
        let mut header = Header {
            format: FORMAT,
            tool: "t".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            server_name: "x".into(),
            database: "sqlite3".into(),
            roots: Roots {
                signing_key: "data/x.signing.key".into(),
                database: Some("data/homeserver.db".into()),
                media_store: "data/media_store".into(),
            },
            kind: super::super::Kind::Full,
            base: None,
        };
        r.header(&header).unwrap();
        header.format = FORMAT + 1;
        let newer = r.header(&header).unwrap_err().to_string();
        assert!(newer.contains("upgrade to restore it"), "{newer}");
        let m = |rel: &str| format!("data/media_store/local_content/{rel}");
        r.entry("data/x.signing.key", &EntryKind::File).unwrap();
        r.entry(&m(""), &EntryKind::Dir).unwrap();
        r.entry(&m("ab/file"), &EntryKind::File).unwrap();
        r.entry(&m("ab/link"), &EntryKind::Symlink("file".into())).unwrap();
        r.entry(&m("ab/hard"), &EntryKind::HardLink(m("ab/file"))).unwrap();
        r.entry(&m("ab/file"), &EntryKind::File).unwrap(); // a later file replaces an earlier one
        assert_eq!(reason(r.entry("etc/passwd", &EntryKind::File)), NOT_ALLOWED);
        assert!(reason(r.entry(&m("ab/up"), &EntryKind::Symlink("../..".into()))).contains("'..'"));
        assert_eq!(reason(r.entry(&m("ab/link/x"), &EntryKind::File)), THROUGH_A_LINK);
        assert_eq!(reason(r.entry(&m("ab/file"), &EntryKind::Dir)), THROUGH_A_LINK);
        assert_eq!(reason(r.entry(&m("ab"), &EntryKind::File)), OVER_A_DIRECTORY);
        assert!(reason(r.entry(&m("ab/h2"), &EntryKind::HardLink(m("ab/link/file")))).contains("not a file"));
        let thumb = "data/media_store/local_thumbnails/t";
        assert!(reason(r.entry(thumb, &EntryKind::HardLink(m("ab/file")))).contains("outside its own"));
        // a link replaced by a file is a file again; a hard link to itself is not
        r.entry(&m("ab/link"), &EntryKind::File).unwrap();
        assert!(reason(r.entry(&m("ab/link"), &EntryKind::HardLink(m("ab/link")))).contains("not a file"));
    }

    #[test]
    fn a_foreign_stream_skips_what_has_no_role() {
        let mut r = Restorable::new(Layout::foreign_default());
        r.entry("data/homeserver.yaml", &EntryKind::File).unwrap();
        r.entry("data/x.signing.key", &EntryKind::File).unwrap();
        assert!(reason(r.entry("data/homeserver.db", &EntryKind::Dir)).contains("regular files"));
        // two trees landing in one media directory meet, as they do on disk
        r.entry("a/media/local_content/x", &EntryKind::File).unwrap();
        assert_eq!(
            reason(r.entry("b/media/local_content/x/y", &EntryKind::File)),
            THROUGH_A_LINK
        );
    }

    #[test]
    fn names_create_leaves_out() {
        assert_eq!(name_refusal(b"data/media/local_content/ok"), None);
        assert!(name_refusal(b"data/media/local_content/\xff")
            .unwrap()
            .contains("UTF-8"));
        assert!(name_refusal(&[b'a'; MAX_NAME + 1]).unwrap().contains("longer"));
        assert_eq!(name_refusal(&[b'a'; MAX_NAME]), None);
        assert!(link_target_refusal(b"\xfe").is_some());
        assert_eq!(link_target_refusal(b"ab/cd"), None);
    }
}
