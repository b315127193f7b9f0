//! Two servers sharing one store (a local directory here; one S3 bucket path in the charm tests):
//! nothing that deletes ever touches the other server's backups, or one whose owner is unknown,
//! unless forced; listings show this server's by default.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use synapse_backup::backup_id::BackupId;

struct Server {
    config: PathBuf,
}

fn server(dir: &Path, name: &str) -> Server {
    let options = xtask::fixture::Options {
        size: 256 << 10,
        profile: "small".parse().unwrap(),
        server_name: name.into(),
        events: 200,
        ..Default::default()
    };
    xtask::fixture::make(&dir.join(name), &options).unwrap();
    Server {
        config: dir.join(name).join("homeserver.yaml"),
    }
}

fn create(s: &Server, store: &Path, keep_last: &str) -> String {
    let r = cli(&s.config, store, &["--json", "create", "--keep-last", keep_last]);
    assert!(r.ok, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["backup-id"].as_str().unwrap().to_string()
}

/// A backup of `server` (None: no owner recorded, as the reference charm's) made `days` ago.
fn put(store: &Path, days: u64, server: Option<&str>) -> String {
    let made = SystemTime::now() - Duration::from_secs(86_400 * days);
    let id = BackupId::at(made.into()).to_string();
    fs::write(store.join(&id), b"an encrypted backup").unwrap();
    let meta = serde_json::json!({ "format": 1, "server_name": server });
    fs::write(store.join(format!(".{id}.meta.json")), meta.to_string()).unwrap();
    id
}

#[test]
fn retention_counts_and_deletes_only_this_servers_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (a, b) = (server(tmp.path(), "a.example"), server(tmp.path(), "b.example"));
    let a_ids: Vec<String> = (0..3).map(|_| create(&a, &store, "2")).collect();
    assert_eq!(backup_names(&store), a_ids[1..]);
    // B's first backup, with the same policy: A keeps both of its backups
    let b1 = create(&b, &store, "2");
    let mut want = vec![a_ids[1].clone(), a_ids[2].clone(), b1.clone()];
    want.sort();
    assert_eq!(backup_names(&store), want);

    // prune by count as B: "the newest" is B's newest; A's are left alone, and it says so
    let b2 = create(&b, &store, "0");
    let r = cli(&b.config, &store, &["prune", "--keep-last", "1"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("deleted {b1}"))
            && r.stdout
                .contains("left alone: the backups of other servers (a.example)"),
        "{}",
        r.stdout
    );
    let mut want = vec![a_ids[1].clone(), a_ids[2].clone(), b2.clone()];
    want.sort();
    assert_eq!(backup_names(&store), want);

    // prune by age: A's old backups and an ownerless one stay
    let old_a = put(&store, 90, Some("a.example"));
    let old_unknown = put(&store, 80, None);
    let old_b = put(&store, 70, Some("b.example"));
    let r = cli(&b.config, &store, &["--json", "prune", "--older-than-days", "30"]);
    assert!(r.ok, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["pruned"], serde_json::json!([old_b]));
    assert_eq!(report["other-servers"], serde_json::json!(["a.example"]));
    assert_eq!(report["unknown-owner"], 1);
    assert!(backup_names(&store).contains(&old_a) && backup_names(&store).contains(&old_unknown));
}

#[test]
fn delete_refuses_another_servers_backup_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (a, b) = (server(tmp.path(), "a.example"), server(tmp.path(), "b.example"));
    let a1 = create(&a, &store, "0");
    let unknown = put(&store, 1, None);

    let r = cli(&b.config, &store, &["delete", &a1]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains(r#"belongs to server "a.example""#) && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    let r = cli(&b.config, &store, &["delete", &unknown]);
    assert!(!r.ok && r.stderr.contains("records no server"), "{}", r.stderr);
    assert_eq!(backup_names(&store).len(), 2, "nothing was deleted");

    let r = cli(&b.config, &store, &["delete", &a1, "--force"]);
    assert!(r.ok, "{}", r.stderr);
    let r = cli(&a.config, &store, &["delete", &unknown, "--force"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(backup_names(&store).is_empty());
}

#[test]
fn list_shows_this_servers_backups_and_the_others_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (a, b) = (server(tmp.path(), "a.example"), server(tmp.path(), "b.example"));
    let a1 = create(&a, &store, "0");
    let b1 = create(&b, &store, "0");
    let unknown = put(&store, 1, None);

    let r = cli(&b.config, &store, &["list"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains(&b1) && r.stdout.contains(&unknown) && !r.stdout.contains(&a1),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("other servers (a.example)") && r.stderr.contains("--all"),
        "{}",
        r.stderr
    );
    let r = cli(&b.config, &store, &["--json", "list", "--all"]);
    let all: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let all = &all["backups"];
    let servers: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["server-name"].clone())
        .collect();
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert!(servers.contains(&serde_json::json!("a.example")));
    // and what is listed is restorable as before (a's backup is refused by b: another server)
    let r = cli(&b.config, &store, &["restore", &a1]);
    assert!(!r.ok && r.stderr.contains("a.example"), "{}", r.stderr);
}
