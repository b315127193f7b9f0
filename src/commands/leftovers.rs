//! Housekeeping after a killed create. SIGKILL (Juju ending an action past its timeout, the OOM
//! killer) runs no cleanup, so a create killed mid-upload leaves its `.partial` file in a directory
//! store, or its multipart upload on S3, billed until someone aborts it. The next `create` (once its
//! own backup is made) and `prune` remove those [`Leftover`]s — only those older than a bound no
//! live create reaches (24 h by default), so an upload another server is running right now is
//! never touched. Nothing here fails a command: a problem becomes a note.

use std::time::{Duration, SystemTime};

use crate::store::{Leftover, ObjectStore, StoreError};
use crate::units::{human_bytes, rfc3339};

/// How old a leftover must be before it is taken for abandoned.
pub const DEFAULT_ABANDONED_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What a clean-up found and did.
#[derive(Clone, Debug, Default)]
pub struct CleanReport {
    /// Removed (in a dry run: that would be), oldest first.
    pub cleaned: Vec<Leftover>,
    /// Younger than the bound, left alone: perhaps a create running now.
    pub young: Vec<Leftover>,
    /// Problems met on the way (none fails the command).
    pub notes: Vec<String>,
    pub dry_run: bool,
}

impl CleanReport {
    /// The bytes the cleaned leftovers held (those of known size).
    pub fn cleaned_bytes(&self) -> u64 {
        known_bytes(&self.cleaned)
    }

    /// One line for the operator, `None` when nothing was cleaned.
    pub fn summary(&self) -> Option<String> {
        if self.cleaned.is_empty() {
            return None;
        }
        let verb = if self.dry_run { "would remove" } else { "removed" };
        Some(format!(
            "{verb} what {} killed backup(s) left, {}: {}",
            self.cleaned.len(),
            total(&self.cleaned),
            describe(&self.cleaned)
        ))
    }

    /// The summary (if any) followed by the notes: what a front door shows as notes.
    pub fn lines(&self) -> Vec<String> {
        self.summary().into_iter().chain(self.notes.iter().cloned()).collect()
    }
}

/// Is a leftover that began (or was last written) `since` abandoned at `now`? A bound of zero
/// takes every leftover, a running upload included; one with no known time never is.
pub fn abandoned(since: Option<SystemTime>, bound: Duration, now: SystemTime) -> bool {
    match since {
        _ if bound.is_zero() => true,
        Some(t) => now.duration_since(t).is_ok_and(|age| age >= bound),
        None => false,
    }
}

/// Finds the leftovers older than `bound` and removes them (in a dry run, only says which).
pub fn clean(store: &dyn ObjectStore, bound: Duration, dry_run: bool) -> CleanReport {
    let mut report = CleanReport {
        dry_run,
        ..Default::default()
    };
    let found = match store.leftovers() {
        Ok(found) => found,
        Err(e) => {
            report.notes.push(listing_note(e));
            return report;
        }
    };
    let now = SystemTime::now();
    for leftover in found {
        if !abandoned(leftover.since, bound, now) {
            report.young.push(leftover);
            continue;
        }
        if dry_run {
            report.cleaned.push(leftover);
            continue;
        }
        match store.remove_leftover(&leftover) {
            Ok(()) => {
                tracing::info!("removed the incomplete upload of {}", leftover.id);
                report.cleaned.push(leftover);
            }
            Err(e) => report.notes.push(format!(
                "could not remove the incomplete upload of {}: {e}",
                leftover.id
            )),
        }
    }
    report
}

/// Why the leftovers could not be listed, as a note.
pub fn listing_note(e: StoreError) -> String {
    match e {
        StoreError::Unsupported(why) => why,
        e => format!("could not look for what killed backups left in the store: {e}"),
    }
}

/// How many leftovers there are and what they hold, as `list --json` shows it.
pub fn census_json(found: &[Leftover]) -> serde_json::Value {
    serde_json::json!({
        "count": found.len(),
        "bytes": known_bytes(found),
        "sizes-unknown": unknown_sizes(found),
        "uploads": found.iter().map(to_json).collect::<Vec<_>>(),
    })
}

/// The line `list` adds under its table when there are leftovers.
pub fn census_line(found: &[Leftover]) -> Option<String> {
    (!found.is_empty()).then(|| {
        format!(
            "incomplete: {} upload(s) of backups that never finished, {}: {} (create and prune remove those \
             older than --abandoned-after-hours, 24 by default)",
            found.len(),
            total(found),
            describe(found)
        )
    })
}

/// How many leftovers' sizes the store could not tell.
pub fn unknown_sizes(leftovers: &[Leftover]) -> usize {
    leftovers.iter().filter(|l| l.size.is_none()).count()
}

/// `12.0 MiB`, `12.0 MiB and 1 of unknown size`, `size unknown`.
fn total(leftovers: &[Leftover]) -> String {
    match unknown_sizes(leftovers) {
        0 => human_bytes(known_bytes(leftovers)),
        n if n == leftovers.len() => "size unknown".into(),
        n => format!("{} and {n} of unknown size", human_bytes(known_bytes(leftovers))),
    }
}

/// The bytes of the leftovers whose size is known.
pub fn known_bytes(leftovers: &[Leftover]) -> u64 {
    leftovers.iter().filter_map(|l| l.size).sum()
}

/// `backup-… (12.0 MiB), backup-… (size unknown)`.
pub fn describe(leftovers: &[Leftover]) -> String {
    leftovers
        .iter()
        .map(|l| match l.size {
            Some(n) => format!("{} ({})", l.id, human_bytes(n)),
            None => format!("{} (size unknown)", l.id),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A leftover as the CLI's JSON shows it.
pub fn to_json(l: &Leftover) -> serde_json::Value {
    serde_json::json!({
        "backup-id": l.id.to_string(),
        "bytes": l.size,
        "since": l.since.map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup_id::BackupId;
    use crate::store::{ObjectInfo, ObjectMeta, Upload};
    use std::sync::Mutex;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn only_what_is_older_than_the_bound_is_abandoned() {
        let now = SystemTime::now();
        assert!(abandoned(Some(now - 25 * HOUR), DEFAULT_ABANDONED_AFTER, now));
        assert!(!abandoned(Some(now - 23 * HOUR), DEFAULT_ABANDONED_AFTER, now));
        // a clock ahead of ours is not old, an unknown time never is, except with a zero bound
        assert!(!abandoned(Some(now + HOUR), HOUR, now));
        assert!(!abandoned(None, HOUR, now));
        assert!(abandoned(Some(now + HOUR), Duration::ZERO, now));
        assert!(abandoned(None, Duration::ZERO, now));
    }

    /// A store holding leftovers, one of which cannot be removed.
    struct Leftovers {
        held: Mutex<Vec<Leftover>>,
        stuck: BackupId,
        listing: Option<StoreError>,
    }

    impl ObjectStore for Leftovers {
        fn location(&self) -> String {
            "test".into()
        }
        fn check(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
            Ok(Vec::new())
        }
        fn head(&self, _: &BackupId) -> Result<Option<ObjectInfo>, StoreError> {
            Ok(None)
        }
        fn put(&self, _: &BackupId, _: &ObjectMeta) -> Result<Box<dyn Upload>, StoreError> {
            unreachable!()
        }
        fn get(&self, _: &BackupId) -> Result<Box<dyn std::io::Read + Send>, StoreError> {
            unreachable!()
        }
        fn delete(&self, _: &BackupId) -> Result<(), StoreError> {
            unreachable!()
        }
        fn leftovers(&self) -> Result<Vec<Leftover>, StoreError> {
            match &self.listing {
                Some(StoreError::Unsupported(m)) => Err(StoreError::Unsupported(m.clone())),
                Some(e) => Err(StoreError::Other(e.to_string())),
                None => Ok(self.held.lock().unwrap().clone()),
            }
        }
        fn remove_leftover(&self, l: &Leftover) -> Result<(), StoreError> {
            if l.id == self.stuck {
                return Err(StoreError::AccessDenied("not allowed".into()));
            }
            self.held.lock().unwrap().retain(|h| h != l);
            Ok(())
        }
    }

    fn leftover(n: u32, hours_ago: u64, size: Option<u64>) -> Leftover {
        Leftover {
            id: format!("backup-202401010000000000{n:02}").parse().unwrap(),
            since: Some(SystemTime::now() - HOUR * hours_ago as u32),
            size,
            handle: format!("upload-{n}"),
        }
    }

    #[test]
    fn old_leftovers_go_young_ones_stay_and_a_failure_is_a_note() {
        let held = vec![
            leftover(1, 48, Some(5 << 20)),
            leftover(2, 30, None),
            leftover(3, 26, Some(1)),
            leftover(4, 1, Some(7)),
        ];
        let store = Leftovers {
            held: Mutex::new(held.clone()),
            stuck: held[2].id.clone(),
            listing: None,
        };
        let dry = clean(&store, DEFAULT_ABANDONED_AFTER, true);
        assert_eq!(dry.cleaned.len(), 3);
        assert_eq!(store.held.lock().unwrap().len(), 4, "a dry run removes nothing");
        assert!(
            dry.summary().unwrap().starts_with("would remove"),
            "{:?}",
            dry.summary()
        );

        let r = clean(&store, DEFAULT_ABANDONED_AFTER, false);
        assert_eq!(r.cleaned, held[..2].to_vec());
        assert_eq!(r.young, held[3..].to_vec());
        assert_eq!(r.cleaned_bytes(), 5 << 20);
        assert_eq!(r.notes.len(), 1);
        assert!(
            r.notes[0].contains(held[2].id.as_str()) && r.notes[0].contains("not allowed"),
            "{:?}",
            r.notes
        );
        let summary = r.summary().unwrap();
        assert!(
            summary.contains(held[0].id.as_str()) && summary.contains("5.0 MiB") && summary.contains("size unknown"),
            "{summary}"
        );
        assert_eq!(*store.held.lock().unwrap(), held[2..].to_vec());
    }

    #[test]
    fn a_store_that_cannot_list_them_is_a_note_not_an_error() {
        for (listing, expected) in [
            (
                StoreError::Unsupported("no ListMultipartUploads".into()),
                "no ListMultipartUploads",
            ),
            (StoreError::Other("connection reset".into()), "could not look for"),
        ] {
            let store = Leftovers {
                held: Mutex::new(Vec::new()),
                stuck: leftover(9, 0, None).id,
                listing: Some(listing),
            };
            let r = clean(&store, DEFAULT_ABANDONED_AFTER, false);
            assert!(r.cleaned.is_empty() && r.summary().is_none());
            assert!(r.notes.len() == 1 && r.notes[0].contains(expected), "{:?}", r.notes);
        }
    }
}
