//! Whose backup is it? One bucket path is often shared (one s3-integrator hands every related
//! application the same bucket and path), so every command that deletes is scoped to this
//! server's backups: the owner is the `server_name` each backup records in its metadata.
//!
//! A backup with no recorded owner (the reference charm's objects carry no metadata) may be any
//! server's, perhaps another's only one: retention never deletes it, and `delete` only when forced.
//! It stays listed and restorable (a restore still checks the server_name inside it).

use std::collections::BTreeSet;

use crate::store::ObjectInfo;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner<'a> {
    /// This server's.
    Ours,
    /// Another server's, by its recorded server_name.
    Other(&'a str),
    /// No owner recorded.
    Unknown,
}

pub fn owner<'a>(info: &'a ObjectInfo, server_name: &str) -> Owner<'a> {
    match info.meta.server_name.as_deref() {
        Some(s) if s == server_name => Owner::Ours,
        Some(s) => Owner::Other(s),
        None => Owner::Unknown,
    }
}

/// The other servers with backups in this listing, sorted.
pub fn other_servers<'a>(list: &'a [ObjectInfo], server_name: &str) -> BTreeSet<&'a str> {
    list.iter()
        .filter_map(|b| match owner(b, server_name) {
            Owner::Other(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// What a listing shows by default: this server's backups and those whose owner is unknown.
pub fn visible(list: Vec<ObjectInfo>, server_name: &str) -> Vec<ObjectInfo> {
    list.into_iter()
        .filter(|b| !matches!(owner(b, server_name), Owner::Other(_)))
        .collect()
}

/// "a.example, b.example" for messages.
pub fn names(servers: &BTreeSet<&str>) -> String {
    servers.iter().copied().collect::<Vec<_>>().join(", ")
}
