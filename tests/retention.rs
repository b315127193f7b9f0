//! Retention through the CLI on a directory store: `prune` and `create --keep-last`, with backups
//! whose ages are set through their ids and their `created_at` metadata.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use synapse_backup::backup_id::BackupId;
use synapse_backup::units::rfc3339;

const DAY: Duration = Duration::from_secs(86_400);

/// A backup made `days_ago` according to its id, and `created_days_ago` according to its metadata.
fn put(store: &Path, days_ago: u32, created_days_ago: Option<u32>) -> String {
    fs::create_dir_all(store).unwrap();
    let now = SystemTime::now();
    let id = BackupId::at((now - DAY * days_ago).into()).to_string();
    fs::write(store.join(&id), b"an encrypted backup").unwrap();
    let meta = serde_json::json!({
        "format": 1, "server_name": "example.com",
        "created_at": created_days_ago.map(|d| rfc3339(now - DAY * d)),
    });
    fs::write(store.join(format!(".{id}.meta.json")), meta.to_string()).unwrap();
    id
}

/// Prune as server `example.com`: retention is scoped to the server's own backups, so its config
/// (only `server_name` is read) is needed.
fn prune(store: &Path, args: &[&str]) -> Run {
    prune_as(store, "example.com", args)
}

fn prune_as(store: &Path, server: &str, args: &[&str]) -> Run {
    let config = store.parent().unwrap().join(format!("{server}.yaml"));
    fs::write(&config, format!("server_name: {server}\n")).unwrap();
    cli(&config, store, &[&["prune"], args].concat())
}

#[test]
fn keep_last_deletes_all_but_the_newest_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let ids: Vec<String> = [5, 4, 3, 2, 1].iter().map(|&d| put(&store, d, None)).collect();
    fs::write(store.join("README"), "not a backup").unwrap();
    fs::write(store.join("backup-notes.txt"), "not a backup either").unwrap();

    let r = prune(&store, &["--json", "--keep-last", "2"]);
    assert!(r.ok, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["pruned"], serde_json::json!(ids[..3]));
    assert_eq!(report["kept"], 2);
    assert_eq!(backup_names(&store), [&ids[3], &ids[4], "backup-notes.txt"]);
    assert!(store.join("README").exists());
    // the sidecars went with their backups
    assert!(!store.join(format!(".{}.meta.json", ids[0])).exists());
}

#[test]
fn older_than_days_by_id_with_a_dry_run_first() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let old = put(&store, 45, None);
    let older = put(&store, 31, None);
    let young = put(&store, 29, None);
    let newest = put(&store, 0, None);

    let r = prune(&store, &["--older-than-days", "30", "--dry-run"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("would delete {old}")) && r.stdout.contains(&format!("would delete {older}")),
        "{}",
        r.stdout
    );
    assert_eq!(backup_names(&store).len(), 4, "a dry run deletes nothing");

    let r = prune(&store, &["--older-than-days", "30"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains(&format!("deleted {old}")), "{}", r.stdout);
    assert_eq!(backup_names(&store), [young, newest]);
}

#[test]
fn created_at_metadata_decides_the_age() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // ids say 2 and 1 days; the metadata says the first was made 90 days ago
    let first = put(&store, 2, Some(90));
    let second = put(&store, 1, Some(1));
    let r = prune(&store, &["--json", "--older-than-days", "30"]);
    assert!(r.ok, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["pruned"], serde_json::json!([first]));
    assert_eq!(backup_names(&store), [second]);
}

#[test]
fn the_newest_backup_stays_however_old() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    put(&store, 400, None);
    let newest = put(&store, 300, None);
    let r = prune(&store, &["--older-than-days", "30", "--keep-last", "1"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(backup_names(&store), [newest]);
}

#[test]
fn prune_without_a_policy_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    put(&store, 400, None);
    let r = prune(&store, &[]);
    assert!(!r.ok && r.stderr.contains("--keep-last"), "{}", r.stderr);
    let r = prune(&store, &["--older-than-days", "0"]);
    assert!(!r.ok, "0 days would delete everything but the newest: {}", r.stdout);
    assert_eq!(backup_names(&store).len(), 1);
}

#[test]
fn create_prunes_after_a_successful_backup_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "1M", "small");
    let store = tmp.path().join("store");
    let old: Vec<String> = [3, 2].iter().map(|&d| put(&store, d, None)).collect();

    // a failed backup prunes nothing
    let broken = tmp.path().join("missing.yaml");
    let r = cli(&broken, &store, &["create", "--keep-last", "1"]);
    assert!(!r.ok);
    assert_eq!(backup_names(&store), old);

    let r = cli(&config, &store, &["--json", "create", "--keep-last", "2"]);
    assert!(r.ok, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let made = report["backup-id"].as_str().unwrap().to_string();
    assert_eq!(report["pruned"], serde_json::json!([old[0]]));
    assert_eq!(backup_names(&store), [old[1].clone(), made]);

    // the same policy from the environment, as a CronJob would give it
    let out = std::process::Command::new(bin())
        .arg("--synapse-config")
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .arg("create")
        .env("SYNAPSE_BACKUP_PASSPHRASE", PASSPHRASE)
        .env("SYNAPSE_BACKUP_KEEP_LAST", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(backup_names(&store).len(), 1);
}
