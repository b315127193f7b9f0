//! SQLite: a consistent snapshot of the live database, and the fix-ups a restored one needs.
//!
//! Synapse keeps writing (WAL mode) while we back up. The online backup API copies every page
//! inside one read transaction, so the copy is one committed state even while writers go on
//! (WAL readers do not block writers). The copy goes to a private file beside the database (same
//! filesystem and permissions as the data it copies) and is removed when the snapshot is dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

#[derive(Debug, thiserror::Error)]
#[error("SQLite database {path}: {reason}")]
pub struct SqliteError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> SqliteError {
    SqliteError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A consistent copy of a database, deleted on drop.
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
}

impl Snapshot {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the snapshot of `db` is written while a backup runs.
pub fn snapshot_path(db: &Path) -> PathBuf {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    db.with_file_name(format!(".{name}.synapse-backup-snapshot"))
}

pub fn snapshot(db: &Path) -> Result<Snapshot, SqliteError> {
    if !db.is_file() {
        return Err(err(db, "does not exist"));
    }
    let path = snapshot_path(db);
    let _ = std::fs::remove_file(&path); // a stale one from a crashed run
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| err(&path, e))?;
    }
    let snap = Snapshot { path };
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| err(db, e))?;
    src.busy_timeout(Duration::from_secs(30)).map_err(|e| err(db, e))?;
    let mut dst = Connection::open(&snap.path).map_err(|e| err(&snap.path, e))?;
    {
        let backup = Backup::new(&src, &mut dst).map_err(|e| err(db, e))?;
        // All pages in one step: one read transaction, so the copy never restarts when Synapse writes.
        let mut tries = 0;
        loop {
            match backup.step(-1).map_err(|e| err(db, e))? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    tries += 1;
                    if tries > 600 {
                        return Err(err(db, "stayed locked for a minute"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {}
            }
        }
    }
    dst.close().map_err(|(_, e)| err(&snap.path, e))?;
    Ok(snap)
}

/// What a restored database needs before Synapse opens it: the write-ahead log (a reference-charm
/// backup carries one) folded in, and one-time keys emptied, as Synapse's backup guide says:
/// keys already handed out must never be handed out again. Returns the one-time keys removed.
pub fn prepare_restored(db: &Path) -> Result<u64, SqliteError> {
    let conn = Connection::open(db).map_err(|e| err(db, e))?;
    let has_keys: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='e2e_one_time_keys_json'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(|e| err(db, e))?
        > 0;
    let removed = if has_keys {
        conn.execute("DELETE FROM e2e_one_time_keys_json", [])
            .map_err(|e| err(db, e))? as u64
    } else {
        0
    };
    conn.close().map_err(|(_, e)| err(db, e))?;
    Ok(removed)
}

/// `PRAGMA integrity_check` says "ok".
pub fn integrity_ok(db: &Path) -> Result<bool, SqliteError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| err(db, e))?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| err(db, e))?;
    Ok(verdict == "ok")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_of_a_wal_database_holds_uncheckpointed_commits() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("homeserver.db");
        let live = Connection::open(&db).unwrap();
        live.pragma_update(None, "journal_mode", "WAL").unwrap();
        live.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        live.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        let snap = snapshot(&db).unwrap();
        let copy = Connection::open(snap.path()).unwrap();
        let n: i64 = copy.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
        drop(copy);
        assert!(integrity_ok(snap.path()).unwrap());
        let path = snap.path().to_path_buf();
        drop(snap);
        assert!(!path.exists());
    }
}
