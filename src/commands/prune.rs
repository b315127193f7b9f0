//! `prune`: retention. Deletes the backups a [`Policy`] says have expired — the s3-integrator's
//! `delete-older-than-days` and the charm's `backup_keep_last` — after each successful backup, or
//! on demand (`synapse-backup prune [--dry-run]`).
//!
//! It counts and deletes only this server's backups (see [`super::owner`]): another server's on a
//! shared path, or one with no recorded owner, is never touched, and "the newest" is this
//! server's newest. What it will never do either: delete the newest good backup (whatever the
//! policy says), delete an object that is not a backup (a listing holds backups only), or delete
//! anything when the listing failed (a partial listing would make the wrong backups look oldest).

use std::fmt;
use std::time::{Duration, SystemTime};

use super::owner::{self, Owner};
use crate::backup_id::BackupId;
use crate::error::Error;
use crate::store::{ObjectInfo, ObjectStore};
use crate::units::parse_rfc3339;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Which backups to keep. A backup expires when either limit says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep only this many of the newest backups (0 = no limit).
    pub keep_last: u32,
    /// Delete backups made more than this many days ago.
    pub older_than_days: Option<u32>,
}

impl Policy {
    /// Nothing ever expires.
    pub fn keeps_everything(&self) -> bool {
        self.keep_last == 0 && self.older_than_days.is_none()
    }
}

/// The policy as list-backups and the CLI show it.
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = |d: u32| {
            if d == 1 {
                "1 day".to_string()
            } else {
                format!("{d} days")
            }
        };
        match (self.keep_last, self.older_than_days) {
            (0, None) => f.write_str("keep every backup"),
            (n, None) => write!(f, "keep the newest {n}"),
            (0, Some(d)) => write!(f, "delete backups older than {}, always keeping the newest", days(d)),
            (n, Some(d)) => write!(
                f,
                "keep the newest {n}, none older than {}, always keeping the newest",
                days(d)
            ),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub policy: Policy,
    /// Deleted (or, in a dry run, that would be), oldest first.
    pub pruned: Vec<BackupId>,
    /// Backups left in the store.
    pub kept: usize,
    pub dry_run: bool,
    /// Expired backups whose deletion failed, with the reason.
    pub failed: Vec<(BackupId, String)>,
    /// Backups left alone because they are not this server's: other servers', by name.
    pub other_servers: Vec<String>,
    /// Backups left alone because no owner is recorded (made by another tool).
    pub unknown_owner: usize,
}

/// When a backup was made: its `created_at` metadata, else the time in its id, else the object's
/// last-modified time.
pub fn made_at(info: &ObjectInfo) -> SystemTime {
    info.meta
        .created_at
        .as_deref()
        .and_then(parse_rfc3339)
        .or_else(|| info.id.timestamp().map(SystemTime::from))
        .unwrap_or(info.last_modified)
}

/// The backups of `list` that `policy` says have expired at `now`, oldest first. A full that a
/// kept differential builds on is kept with it (a chain is never broken).
pub fn expired(list: &[ObjectInfo], policy: &Policy, now: SystemTime) -> Vec<BackupId> {
    if policy.keeps_everything() {
        return Vec::new();
    }
    let mut newest_first: Vec<(SystemTime, &ObjectInfo)> = list.iter().map(|b| (made_at(b), b)).collect();
    newest_first.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.id.cmp(&a.1.id)));
    // an empty object is not a good backup; with none good, the newest is kept all the same
    let protected = newest_first
        .iter()
        .find(|(_, b)| b.size > 0)
        .or(newest_first.first())
        .map(|(_, b)| b.id.clone());
    let max_age = policy.older_than_days.map(|d| DAY * d);
    let mut out: Vec<BackupId> = newest_first
        .iter()
        .enumerate()
        .filter(|(_, (_, b))| Some(&b.id) != protected.as_ref())
        .filter(|(rank, (made, _))| {
            let too_many = policy.keep_last > 0 && *rank >= policy.keep_last as usize;
            let too_old = match (max_age, now.duration_since(*made)) {
                (Some(max), Ok(age)) => age > max,
                _ => false,
            };
            too_many || too_old
        })
        .map(|(_, (_, b))| b.id.clone())
        .collect();
    let needed: std::collections::BTreeSet<&str> = list
        .iter()
        .filter(|b| b.meta.is_differential() && !out.contains(&b.id))
        .filter_map(|b| b.meta.base.as_deref())
        .collect();
    out.retain(|id| !needed.contains(id.as_str()));
    out.reverse();
    out
}

/// Applies `policy` to the store. A failed listing deletes nothing and is an error; a failed
/// deletion is reported in [`PruneReport::failed`] and the others still go.
pub fn run(store: &dyn ObjectStore, policy: &Policy, dry_run: bool, server_name: &str) -> Result<PruneReport, Error> {
    let mut report = PruneReport {
        policy: *policy,
        dry_run,
        ..Default::default()
    };
    if policy.keeps_everything() {
        return Ok(report);
    }
    let list = store
        .list()
        .map_err(|e| Error::Refused(format!("cannot list the backups, so none was deleted: {e}")))?;
    report.other_servers = owner::other_servers(&list, server_name)
        .into_iter()
        .map(str::to_string)
        .collect();
    report.unknown_owner = list
        .iter()
        .filter(|b| owner::owner(b, server_name) == Owner::Unknown)
        .count();
    let list: Vec<ObjectInfo> = list
        .into_iter()
        .filter(|b| owner::owner(b, server_name) == Owner::Ours)
        .collect();
    let expired = expired(&list, policy, SystemTime::now());
    report.kept = list.len() - expired.len();
    for id in expired {
        if dry_run {
            report.pruned.push(id);
            continue;
        }
        match store.delete(&id) {
            Ok(()) => {
                tracing::info!("pruned {id}");
                report.pruned.push(id);
            }
            Err(e) => {
                report.kept += 1;
                report.failed.push((id, e.to_string()));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectMeta;
    use time::macros::datetime;

    const NOW: time::OffsetDateTime = datetime!(2026-11-21 12:00 UTC);

    /// A backup whose id says it was made `days` ago.
    fn by_id(days: u32) -> ObjectInfo {
        ObjectInfo {
            id: BackupId::at(NOW - DAY * days),
            size: 100,
            last_modified: SystemTime::from(NOW),
            meta: ObjectMeta::default(),
        }
    }

    fn ids(list: &[ObjectInfo], pick: &[usize]) -> Vec<BackupId> {
        pick.iter().map(|&i| list[i].id.clone()).collect()
    }

    fn expire(list: &[ObjectInfo], keep_last: u32, older_than_days: Option<u32>) -> Vec<BackupId> {
        let policy = Policy {
            keep_last,
            older_than_days,
        };
        expired(list, &policy, SystemTime::from(NOW))
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let list: Vec<_> = [9, 7, 5, 3, 1].map(by_id).into();
        assert_eq!(expire(&list, 2, None), ids(&list, &[0, 1, 2]));
        assert_eq!(expire(&list, 5, None), vec![]);
        assert_eq!(expire(&list, 0, None), vec![]);
    }

    #[test]
    fn older_than_days_uses_the_id_when_there_is_no_metadata() {
        let list: Vec<_> = [40, 31, 29, 1].map(by_id).into();
        assert_eq!(expire(&list, 0, Some(30)), ids(&list, &[0, 1]));
        // either limit expires a backup
        assert_eq!(expire(&list, 1, Some(30)), ids(&list, &[0, 1, 2]));
    }

    #[test]
    fn created_at_metadata_wins_over_the_id() {
        let mut list: Vec<_> = [2, 1].map(by_id).into();
        // the id says 2 days, the metadata 60 (the reference charm wrote ids in local time)
        list[0].meta.created_at = Some(crate::units::rfc3339(SystemTime::from(NOW - DAY * 60)));
        assert_eq!(expire(&list, 0, Some(30)), ids(&list, &[0]));
    }

    #[test]
    fn last_modified_when_nothing_else_says() {
        let mut b = by_id(0);
        b.meta.created_at = Some("not a time".into());
        b.last_modified = SystemTime::from(NOW - DAY * 3);
        b.id = "backup-00000000000000000000".parse().unwrap(); // no valid date in it
        assert_eq!(made_at(&b), SystemTime::from(NOW - DAY * 3));
    }

    #[test]
    fn the_newest_good_backup_is_never_expired() {
        let list: Vec<_> = [100, 90].map(by_id).into();
        assert_eq!(expire(&list, 0, Some(30)), ids(&list, &[0]));
        assert_eq!(expire(&list, 1, Some(1)), ids(&list, &[0]));
        // a newer empty object does not count as the newest good backup
        let mut list: Vec<_> = [100, 90, 80].map(by_id).into();
        list[2].size = 0;
        assert_eq!(expire(&list, 0, Some(30)), ids(&list, &[0, 2]));
    }

    #[test]
    fn a_backup_from_the_future_is_not_old() {
        let list: Vec<_> = [100].map(by_id).into();
        let mut future = by_id(0);
        future.id = BackupId::at(NOW + DAY);
        let list = [list, vec![future]].concat();
        assert_eq!(expire(&list, 0, Some(30)), ids(&list, &[0]));
    }

    /// A store whose listing breaks part-way (a paginated listing cut off); deleting would panic.
    struct BrokenListing;

    impl ObjectStore for BrokenListing {
        fn location(&self) -> String {
            "broken".into()
        }
        fn check(&self) -> Result<(), crate::store::StoreError> {
            Ok(())
        }
        fn list(&self) -> Result<Vec<ObjectInfo>, crate::store::StoreError> {
            Err(crate::store::StoreError::Unreachable(
                "connection reset on page 2".into(),
            ))
        }
        fn head(&self, _: &BackupId) -> Result<Option<ObjectInfo>, crate::store::StoreError> {
            Ok(None)
        }
        fn put(&self, _: &BackupId, _: &ObjectMeta) -> Result<Box<dyn crate::store::Upload>, crate::store::StoreError> {
            unreachable!()
        }
        fn get(&self, _: &BackupId) -> Result<Box<dyn std::io::Read + Send>, crate::store::StoreError> {
            unreachable!()
        }
        fn delete(&self, _: &BackupId) -> Result<(), crate::store::StoreError> {
            panic!("pruned with an incomplete listing")
        }
    }

    #[test]
    fn an_incomplete_listing_deletes_nothing() {
        let policy = Policy {
            keep_last: 1,
            older_than_days: Some(1),
        };
        let e = run(&BrokenListing, &policy, false, "x").unwrap_err().to_string();
        assert!(e.contains("none was deleted") && e.contains("page 2"), "{e}");
    }

    #[test]
    fn the_policy_reads_as_a_sentence() {
        assert_eq!(Policy::default().to_string(), "keep every backup");
        let p = Policy {
            keep_last: 7,
            older_than_days: Some(30),
        };
        assert_eq!(
            p.to_string(),
            "keep the newest 7, none older than 30 days, always keeping the newest"
        );
    }
}
