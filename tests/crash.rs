//! A restore killed (SIGKILL: no cleanup runs) at each rename of its swap leaves every target old
//! or new, never absent, and the next command finds the journal and puts things right.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const NEW_KEY: &str = "ed25519 a_new other\n";
/// The fixture's restore swaps four targets (signing key, database, local_content,
/// local_thumbnails), each in one atomic exchange, and moves the database's -wal and -shm aside
/// when the live tree has them.
fn renames(data: &Path) -> u32 {
    4 + ["homeserver.db-wal", "homeserver.db-shm"]
        .iter()
        .filter(|f| data.join(f).exists())
        .count() as u32
}

struct Server {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
    store: PathBuf,
    id: String,
}

fn run(config: &Path, store: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Run) {
    let mut cmd = Command::new(bin());
    cmd.arg("--synapse-config").arg(config);
    if let Some(store) = store {
        cmd.arg("--store").arg(store);
    }
    cmd.args(args)
        .env("SYNAPSE_BACKUP_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (out.status.code(), out.into())
}

impl Server {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let config = fixture(&data, "1M", "small");
        let store = tmp.path().join("store");
        let made = cli(&config, &store, &["create"]);
        assert!(made.ok, "{}", made.stderr);
        let id = only_backup(&store);
        // the live server moves on after the backup: a new key and a new upload
        fs::write(data.join("example.com.signing.key"), NEW_KEY).unwrap();
        fs::write(data.join("media_store/local_content/new-upload"), "after the backup").unwrap();
        Server {
            _tmp: tmp,
            data,
            config,
            store,
            id,
        }
    }

    fn restore_killed_at(&self, rename: u32) -> Option<i32> {
        let n = rename.to_string();
        let (code, r) = run(
            &self.config,
            Some(&self.store),
            &["restore", &self.id],
            &[("SYNAPSE_BACKUP_TEST_KILL_AT_RENAME", &n)],
        );
        assert!(!r.ok, "killed at rename {rename}, yet: {}", r.stdout);
        code
    }

    fn recover(&self, args: &[&str]) -> Run {
        let mut all = vec!["recover"];
        all.extend_from_slice(args);
        run(&self.config, None, &all, &[]).1
    }

    /// Each target as a user sees it: which version it is, or "absent".
    fn targets(&self) -> BTreeMap<&'static str, String> {
        let d = &self.data;
        let key = match fs::read_to_string(d.join("example.com.signing.key")) {
            Ok(k) if k == NEW_KEY => "old".to_string(),
            Ok(_) => "new".to_string(),
            Err(_) => "absent".to_string(),
        };
        let upload = if d.join("media_store/local_content/new-upload").exists() {
            "old"
        } else if d.join("media_store/local_content").is_dir() {
            "new"
        } else {
            "absent"
        };
        let thumbnails = if d.join("media_store/local_thumbnails").is_dir() {
            "present"
        } else {
            "absent"
        };
        let db = if d.join("homeserver.db").is_file() {
            "present"
        } else {
            "absent"
        };
        BTreeMap::from([
            ("signing key", key),
            ("local_content", upload.to_string()),
            ("local_thumbnails", thumbnails.to_string()),
            ("homeserver.db", db.to_string()),
        ])
    }

    fn staging_dirs(&self) -> Vec<String> {
        let mut found = Vec::new();
        for dir in [self.data.clone(), self.data.join("media_store")] {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".synapse-backup-restore") {
                    found.push(name);
                }
            }
        }
        found
    }
}

#[test]
fn a_restore_killed_at_any_rename_is_rolled_back_by_the_next_command() {
    let s = Server::new();
    let before = backed_up_state(&s.data);
    let total = renames(&s.data);
    for rename in 1..=total {
        assert_eq!(
            s.restore_killed_at(rename),
            None,
            "killed by a signal at rename {rename}"
        );
        // never absent: each target is the old or the new version
        let targets = s.targets();
        assert!(
            targets.values().all(|v| v != "absent"),
            "after a kill at rename {rename}: {targets:?}"
        );
        let r = s.recover(&[]);
        assert!(r.ok, "{}", r.stderr);
        assert!(
            r.stdout.contains("half swapped and rolled back"),
            "rename {rename}: {}",
            r.stdout
        );
        assert_eq!(
            backed_up_state(&s.data),
            before,
            "after recovering from rename {rename}"
        );
        assert!(s.staging_dirs().is_empty(), "rename {rename}: {:?}", s.staging_dirs());
    }
}

#[test]
fn a_restore_killed_after_its_swap_keeps_the_new_data_until_told() {
    let s = Server::new();
    let before = backed_up_state(&s.data);
    s.restore_killed_at(renames(&s.data) + 1);
    assert_eq!(
        s.targets().values().filter(|v| *v == "new").count(),
        2,
        "{:?}",
        s.targets()
    );
    let r = s.recover(&[]);
    assert!(r.ok && r.stdout.contains("is in place"), "{}", r.stdout);
    let r = s.recover(&["--rollback"]);
    assert!(r.ok && r.stdout.contains("put back"), "{} {}", r.stdout, r.stderr);
    assert_eq!(backed_up_state(&s.data), before);
    assert!(s.staging_dirs().is_empty(), "{:?}", s.staging_dirs());
}

#[test]
fn restore_and_create_recover_first_and_remove_stale_staging() {
    let s = Server::new();
    // a restore killed mid-swap, then another restore: it rolls the first back, then runs
    s.restore_killed_at(3);
    // and a stale staging directory of another backup id, killed before its swap
    let stale = s.data.join(".synapse-backup-restore-backup-20200101000000000000");
    fs::create_dir_all(stale.join("media_store")).unwrap();
    // private, as a restore makes them (one that is not is left alone: someone else made it)
    fs::set_permissions(&stale, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (_, r) = run(&s.config, Some(&s.store), &["restore", &s.id], &[]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("rolled back"), "{}", r.stderr);
    assert!(r.stderr.contains("left by an interrupted restore"), "{}", r.stderr);
    assert!(!stale.exists());
    assert_eq!(s.targets()["signing key"], "new");
    // the restore kept the previous data (no service control); a create drops it once it succeeded
    assert!(!s.staging_dirs().is_empty());
    let made = cli(&s.config, &s.store, &["create"]);
    assert!(made.ok, "{}", made.stderr);
    assert!(made.stderr.contains("dropped the data"), "{}", made.stderr);
    assert!(s.staging_dirs().is_empty(), "{:?}", s.staging_dirs());
}

#[test]
fn a_second_operation_on_the_same_synapse_is_refused_while_one_runs() {
    let s = Server::new();
    // flock(1) holds the lock as a running restore would
    let lock = s.data.join(".synapse-backup.lock");
    fs::write(&lock, "restore of backup-x, pid 1, since now\n").unwrap();
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["-c", "sleep 30"])
        .spawn()
        .expect("flock(1) runs");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let made = cli(&s.config, &s.store, &["create"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!made.ok);
    assert!(
        made.stderr.contains("another operation is running on this Synapse")
            && made.stderr.contains("restore of backup-x"),
        "{}",
        made.stderr
    );
    assert!(started.elapsed().as_secs() < 10, "it fails at once");
}

/// After `restore --service none` the journal says `swapped` and the previous data is kept.
fn kept_restore(s: &Server) {
    let (_, r) = run(&s.config, Some(&s.store), &["restore", &s.id], &[]);
    assert!(r.ok, "{}", r.stderr);
}

fn staged_db(s: &Server) -> PathBuf {
    let dir = s.data.join(format!(".synapse-backup-restore-{}", s.id));
    dir.join("homeserver.db")
}

#[test]
fn a_rollback_whose_previous_data_is_gone_moves_nothing() {
    let s = Server::new();
    kept_restore(&s);
    // a commit cut short: the previous database already deleted, the journal still there
    fs::remove_file(staged_db(&s)).unwrap();
    let r = s.recover(&["--rollback"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("is gone") && r.stderr.contains("nothing was moved"),
        "{}",
        r.stderr
    );
    assert!(s.data.join("homeserver.db").is_file(), "the live database stays");
}

#[test]
fn a_rollback_after_the_data_was_copied_in_place_moves_nothing() {
    let s = Server::new();
    kept_restore(&s);
    // the restored database replaced by a copy of itself (a volume copied back, rsync)
    let live = s.data.join("homeserver.db");
    let copy = s.data.join("homeserver.db.copy");
    fs::copy(&live, &copy).unwrap();
    fs::rename(&copy, &live).unwrap();
    let r = s.recover(&["--rollback"]);
    assert!(!r.ok);
    assert!(r.stderr.contains("neither in place nor staged"), "{}", r.stderr);
    assert!(staged_db(&s).is_file(), "the previous data is kept");
    assert_eq!(s.targets()["signing key"], "new");
}

#[test]
fn a_journal_naming_other_paths_is_refused_and_nothing_is_touched() {
    let s = Server::new();
    let victim = s._tmp.path().join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("precious"), "x").unwrap();
    let journal = serde_json::json!({
        "backup_id": s.id, "phase": "swapped", "targets": [], "staging": [victim],
    });
    fs::write(s.data.join(".synapse-backup-restore.journal"), journal.to_string()).unwrap();
    let made = cli(&s.config, &s.store, &["create"]);
    assert!(!made.ok);
    assert!(
        made.stderr.contains("as a staging directory") && made.stderr.contains("was not used"),
        "{}",
        made.stderr
    );
    assert!(victim.join("precious").exists());
}

#[test]
fn the_journal_is_never_written_through_a_planted_link() {
    let s = Server::new();
    let victim = s._tmp.path().join("victim-file");
    fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, s.data.join(".synapse-backup-restore.journal.tmp")).unwrap();
    kept_restore(&s);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn a_target_that_is_a_symlink_is_refused_before_anything_changes() {
    let s = Server::new();
    let elsewhere = s._tmp.path().join("big/homeserver.db");
    fs::create_dir_all(elsewhere.parent().unwrap()).unwrap();
    fs::rename(s.data.join("homeserver.db"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.data.join("homeserver.db")).unwrap();
    let (_, r) = run(&s.config, Some(&s.store), &["restore", &s.id], &[]);
    assert!(!r.ok);
    assert!(r.stderr.contains("is a symbolic link"), "{}", r.stderr);
    assert!(fs::symlink_metadata(s.data.join("homeserver.db"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(s.targets()["signing key"], "old");
}
