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

use std::collections::HashSet;
use std::hash::BuildHasher;

use super::manifest::Roots;
use super::{EntryKind, MEDIA_DIRS};

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
}
