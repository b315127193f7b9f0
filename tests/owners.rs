//! Owners and modes a Synapse running as its own user can use, whatever the archive's numeric ids
//! say: the tool runs as root (a charm, a root cron job), Synapse as uid 991 (the official image)
//! or another uid (Debian's `matrix-synapse`).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

const IMAGE_UID: u32 = 991;
const DEBIAN_UID: u32 = 992;

fn as_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn chown_tree(dir: &Path, uid: u32) {
    let ok = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// (uid, gid, mode) of every path below `dir` that is not ours (staging, lock, journal).
fn owners(dir: &Path) -> Vec<(String, u32, u32, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if name.contains(".synapse-backup") {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            out.push((name, md.uid(), md.gid(), md.permissions().mode() & 0o7777));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn backup_of_an_image_tree(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let data = tmp.join("data");
    let config = fixture(&data, "1M", "small");
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&data, IMAGE_UID);
    // the image's Synapse makes its database 0644
    fs::set_permissions(data.join("homeserver.db"), fs::Permissions::from_mode(0o644)).unwrap();
    let store = tmp.join("store");
    let made = cli(&config, &store, &["create"]);
    assert!(made.ok, "{}", made.stderr);
    (data, config, only_backup(&store))
}

#[test]
fn the_database_entry_carries_the_live_files_owner_and_mode() {
    if !as_root() {
        eprintln!("skipped: needs root to give the tree another owner");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, _config, id) = backup_of_an_image_tree(tmp.path());
    let home = tmp.path().join("gnupg");
    let object = fs::read(tmp.path().join("store").join(&id)).unwrap();
    let out = run_with_stdin(&mut gpg(&home, PASSPHRASE, &["--decrypt"]), object);
    assert!(out.status.success());
    let mut tar = Command::new("tar");
    tar.args(["-tvz", "--numeric-owner"]);
    let listing = run_with_stdin(&mut tar, out.stdout);
    let listing = String::from_utf8_lossy(&listing.stdout);
    let db = data
        .join("homeserver.db")
        .to_string_lossy()
        .trim_start_matches('/')
        .to_string();
    let line = listing
        .lines()
        .find(|l| l.ends_with(&format!(" {db}")))
        .unwrap_or_else(|| panic!("{db} not in {listing}"));
    assert!(line.starts_with("-rw-r--r-- 991/991 "), "{line}");
}

#[test]
fn a_lost_server_gets_back_files_its_synapse_user_owns() {
    if !as_root() {
        eprintln!("skipped: needs root to give the tree another owner");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, config, _id) = backup_of_an_image_tree(tmp.path());
    let expected = owners(&data);
    // a lost server: only its config (and its directory) are left
    lose_all_but_config(&data);
    let r = cli(
        &config,
        &tmp.path().join("store"),
        &["restore", &only_backup(&tmp.path().join("store"))],
    );
    assert!(r.ok, "{}", r.stderr);
    let restored = owners(&data);
    for (name, uid, gid, mode) in &restored {
        assert_eq!((*uid, *gid), (IMAGE_UID, IMAGE_UID), "{name} {mode:o}");
    }
    // the caches are not in a backup; everything else comes back as it was (directories
    // recreated as Synapse makes them)
    let carried: Vec<_> = expected
        .iter()
        .filter(|(n, ..)| {
            // the live -wal and -shm are folded into the snapshot
            !n.contains("remote_content") && !n.contains("url_cache") && !n.starts_with("homeserver.db-")
        })
        .cloned()
        .collect();
    let media = restored.iter().find(|(n, ..)| n == "media_store").unwrap();
    assert_eq!(media.3, 0o755, "media_store is made writable by its owner");
    let db = restored.iter().find(|(n, ..)| n == "homeserver.db").unwrap();
    assert_eq!(db.3, 0o644);
    let names =
        |v: &[(String, u32, u32, u32)]| v.iter().map(|r| r.0.clone()).collect::<std::collections::BTreeSet<_>>();
    let (restored, carried) = (names(&restored), names(&carried));
    assert!(
        restored == carried,
        "missing: {:?}, extra: {:?}",
        carried.difference(&restored).collect::<Vec<_>>(),
        restored.difference(&carried).collect::<Vec<_>>()
    );
}

#[test]
fn a_backup_from_the_image_restores_onto_another_uid() {
    if !as_root() {
        eprintln!("skipped: needs root to give the tree another owner");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (data, config, id) = backup_of_an_image_tree(tmp.path());
    // the same tree, now run by another Synapse user (as Debian's matrix-synapse)
    chown_tree(&data, DEBIAN_UID);
    wipe(&data);
    let r = cli(&config, &tmp.path().join("store"), &["restore", &id]);
    assert!(r.ok, "{}", r.stderr);
    for (name, uid, gid, mode) in owners(&data) {
        assert_eq!((uid, gid), (DEBIAN_UID, DEBIAN_UID), "{name} {mode:o}");
        if data.join(&name).is_dir() {
            assert_eq!(mode & 0o700, 0o700, "{name}: {mode:o}");
        }
    }
}
