//! Full and differential backups, as an operator uses them: a differential carries what changed,
//! restores the whole tree (files deleted since the full stay deleted) from two objects, falls
//! back to a full when it has nothing to build on, and retention and delete never break a chain.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use s3_server::{Kind, S3Server};

fn json(run: &Run) -> serde_json::Value {
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// What changes on a server between a full and a differential: new uploads, a thumbnail deleted,
/// the database written to.
fn change_the_server(data: &Path) -> Vec<String> {
    let media = data.join("media_store/local_content");
    let mut added = Vec::new();
    for (i, shard) in ["zz/new", "ab/zz", "zz/new"].iter().enumerate() {
        let dir = media.join(shard);
        fs::create_dir_all(&dir).unwrap();
        let name = format!("upload{i}");
        fs::write(dir.join(&name), format!("new media {i}").repeat(100 + i)).unwrap();
        added.push(format!("media_store/local_content/{shard}/{name}"));
    }
    let thumb = first_file(&data.join("media_store/local_thumbnails"));
    fs::remove_file(thumb).unwrap();
    let db = data.join("homeserver.db");
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE IF NOT EXISTS after_the_full (x TEXT); INSERT INTO after_the_full VALUES ('written after the full');")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    added
}

fn first_file(dir: &Path) -> std::path::PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_file() {
                return p;
            }
            stack.push(p);
        }
    }
    panic!("no file under {}", dir.display());
}

#[test]
fn a_differential_carries_what_changed_and_restores_the_whole_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "6M", "mixed");
    let store = tmp.path().join("store");

    let full = json(&cli(&config, &store, &["--json", "create", "--type", "full"]));
    assert_eq!(full["type"], "full");
    assert!(full["base"].is_null());
    let full_id = full["backup-id"].as_str().unwrap().to_string();
    assert!(
        store.join(format!(".{full_id}.index")).is_file(),
        "a full leaves its index"
    );

    let added = change_the_server(&data);
    let after = backed_up_state(&data);
    let diff = json(&cli(&config, &store, &["--json", "create", "--type", "differential"]));
    let diff_id = diff["backup-id"].as_str().unwrap().to_string();
    assert_eq!(diff["type"], "differential");
    assert_eq!(diff["base"], full_id.as_str());
    // the key, the database and the three new uploads; everything else is the full's
    assert_eq!(diff["files"], 2 + added.len() as u64, "{diff}");
    // every media file of the full but the deleted thumbnail
    assert_eq!(
        diff["inherited"].as_u64().unwrap(),
        full["files"].as_u64().unwrap() - 2 - 1,
        "{diff}"
    );
    let (full_size, diff_size) = (full["size"].as_u64().unwrap(), diff["size"].as_u64().unwrap());
    assert!(
        diff_size * 3 < full_size,
        "differential {diff_size} bytes, full {full_size}"
    );

    let listed = json(&cli(&config, &store, &["--json", "list"]));
    let kinds: Vec<(String, String)> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["type"].as_str().unwrap().to_string(),
                b["base"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("full".into(), "-".into()), ("differential".into(), full_id.clone())]
    );
    let table = cli(&config, &store, &["list"]);
    assert!(
        table.stdout.contains("differential") && table.stdout.contains(&full_id),
        "{}",
        table.stdout
    );

    let verified = cli(&config, &store, &["verify", &diff_id]);
    assert!(verified.ok, "{}", verified.stderr);
    assert!(
        verified.stdout.contains(&format!("full backup {full_id}")),
        "{}",
        verified.stdout
    );

    lose_all_but_config(&data);
    let restored = cli(&config, &store, &["restore", &diff_id]);
    assert!(restored.ok, "{}", restored.stderr);
    assert!(
        restored.stderr.contains("came from its full backup"),
        "{}",
        restored.stderr
    );
    commit_restore(&config);
    // byte-identical to the server at the differential: new uploads in, the deleted thumbnail out
    assert_eq!(backed_up_state(&data), after);
}

#[test]
fn a_differential_with_nothing_to_build_on_is_a_full_that_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "2M", "small");
    let store = tmp.path().join("store");

    let first = cli(&config, &store, &["--json", "create", "--type", "differential"]);
    assert_eq!(json(&first)["type"], "full");
    assert!(first.stderr.contains("no full backup"), "{}", first.stderr);
    let full_id = json(&first)["backup-id"].as_str().unwrap().to_string();

    // the full's index lost (an older tool's full has none)
    fs::remove_file(store.join(format!(".{full_id}.index"))).unwrap();
    let second = cli(&config, &store, &["--json", "create", "--type", "differential"]);
    assert_eq!(json(&second)["type"], "full");
    assert!(second.stderr.contains("has no index"), "{}", second.stderr);

    // auto: the newest full is young, so a differential
    let third = json(&cli(&config, &store, &["--json", "create", "--type", "auto"]));
    assert_eq!(third["type"], "differential");
    assert_eq!(third["base"], json(&second)["backup-id"]);
    // auto with fulls due every 0 days: a full
    let fourth = cli(
        &config,
        &store,
        &["--json", "create", "--type", "auto", "--full-every-days", "0"],
    );
    assert_eq!(json(&fourth)["type"], "full");
}

#[test]
fn a_differential_whose_full_is_gone_fails_clearly_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "2M", "small");
    let store = tmp.path().join("store");
    let full_id = json(&cli(&config, &store, &["--json", "create"]))["backup-id"]
        .as_str()
        .unwrap()
        .to_string();
    change_the_server(&data);
    let diff_id = json(&cli(&config, &store, &["--json", "create", "--type", "differential"]))["backup-id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = digest(&data);
    fs::remove_file(store.join(&full_id)).unwrap();
    let run = cli(&config, &store, &["restore", &diff_id]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains(&format!("its full backup {full_id} is not in the store")),
        "{}",
        run.stderr
    );
    assert_eq!(digest(&data), before);
}

#[test]
fn retention_and_delete_never_break_a_differential() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "2M", "small");
    let store = tmp.path().join("store");
    let id = |run: Run| json(&run)["backup-id"].as_str().unwrap().to_string();
    let old_full = id(cli(&config, &store, &["--json", "create"]));
    let full = id(cli(&config, &store, &["--json", "create"]));
    let diff = id(cli(&config, &store, &["--json", "create", "--type", "differential"]));

    // keep the newest one: the differential, and with it the full it needs
    let pruned = json(&cli(&config, &store, &["--json", "prune", "--keep-last", "1"]));
    assert_eq!(pruned["pruned"], serde_json::json!([old_full]), "{pruned}");
    assert_eq!(backup_names(&store), [full.clone(), diff.clone()]);
    assert!(
        !store.join(format!(".{old_full}.index")).exists(),
        "a pruned full's index goes with it"
    );

    let refused = cli(&config, &store, &["delete", &full]);
    assert!(!refused.ok);
    assert!(refused.stderr.contains(&diff), "{}", refused.stderr);
    assert_eq!(backup_names(&store), [full.clone(), diff.clone()]);

    assert!(cli(&config, &store, &["delete", &diff]).ok);
    assert!(cli(&config, &store, &["delete", &full]).ok);
    assert!(backup_names(&store).is_empty());
    assert!(!store.join(format!(".{full}.index")).exists());
}

#[test]
fn stock_gpg_and_tar_restore_a_differential() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "2M", "small");
    let store = tmp.path().join("store");
    let full = json(&cli(&config, &store, &["--json", "create"]))["backup-id"]
        .as_str()
        .unwrap()
        .to_string();
    let added = change_the_server(&data);
    let diff = json(&cli(&config, &store, &["--json", "create", "--type", "differential"]))["backup-id"]
        .as_str()
        .unwrap()
        .to_string();
    // as the README says: the full, then the differential over it
    let out = tmp.path().join("extracted");
    fs::create_dir_all(&out).unwrap();
    let home = tmp.path().join("gnupg");
    for id in [&full, &diff] {
        let plain = tmp.path().join(format!("{id}.tar.gz"));
        let status = gpg(&home, PASSPHRASE, &["--decrypt", "--output"])
            .arg(&plain)
            .arg(store.join(id))
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let untar = sh(&format!("tar -xzf {} -C {}", plain.display(), out.display()));
        assert!(untar.ok, "{}", untar.stderr);
    }
    let extracted = out.join(data.strip_prefix("/").unwrap());
    for path in &added {
        assert_eq!(
            fs::read(extracted.join(path)).unwrap(),
            fs::read(data.join(path)).unwrap(),
            "{path}"
        );
    }
    assert_eq!(
        sqlite_dump(&extracted.join("homeserver.db")),
        sqlite_dump(&data.join("homeserver.db"))
    );
}

#[test]
fn a_differential_round_trips_through_s3() {
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket("backups");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "4M", "mixed");
    let s3 = |args: &[&str]| -> Run {
        let endpoint = server.endpoint();
        s3_command(
            &endpoint,
            &server.access_key,
            &server.secret_key,
            "backups",
            "synapse",
            &config,
            args,
        )
        .output()
        .unwrap()
        .into()
    };
    let full = json(&s3(&["--json", "create"]));
    change_the_server(&data);
    let after = backed_up_state(&data);
    let diff = json(&s3(&["--json", "create", "--type", "differential"]));
    assert_eq!(diff["type"], "differential");
    assert_eq!(diff["base"], full["backup-id"]);
    let listed = json(&s3(&["--json", "list"]));
    assert_eq!(
        listed["backups"].as_array().unwrap().len(),
        2,
        "the index is not a backup: {listed}"
    );
    assert_eq!(listed["backups"][1]["base"], full["backup-id"]);
    let diff_id = diff["backup-id"].as_str().unwrap();
    let verified = s3(&["verify", diff_id]);
    assert!(verified.ok, "{}", verified.stderr);
    lose_all_but_config(&data);
    let restored = s3(&["restore", diff_id]);
    assert!(restored.ok, "{}", restored.stderr);
    commit_restore(&config);
    assert_eq!(backed_up_state(&data), after);
}
