//! A restore runs as root while Synapse's own user can write the directories it stages in. That
//! user swapping the staging directory for a link in the middle of a restore changes nothing
//! outside Synapse's data, and the live data ends old or new, never mixed.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn victim_untouched(victim: &Path) {
    let names: Vec<_> = fs::read_dir(victim)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names == ["secret"],
        "{} new entries in {} (first: {:?})",
        names.len() - 1,
        victim.display(),
        &names[..names.len().min(5)]
    );
    assert_eq!(fs::read_to_string(victim.join("secret")).unwrap(), "root's own");
    let md = fs::metadata(victim).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o700, "the victim's mode is unchanged");
    assert_eq!(md.uid(), 0, "the victim's owner is unchanged");
}

/// Watches `media_store` for the restore's staging directory; once it appears, renames it away and
/// puts a link to `victim` in its place. True if it struck.
fn attacker(media_store: PathBuf, victim: PathBuf, stop: Arc<AtomicBool>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let found = fs::read_dir(&media_store).ok().and_then(|entries| {
            entries
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(".synapse-backup-restore-"))
        });
        if let Some(staging) = found {
            let path = staging.path();
            // wait until the restore has started filling it
            let started = Instant::now();
            while fs::read_dir(&path).map(|d| d.count()).unwrap_or(0) == 0 && started.elapsed() < Duration::from_secs(5)
            {
                std::thread::yield_now();
            }
            // a look-alike of the staging directory whose media directories lead to the victim
            let evil = media_store.join("evil");
            fs::create_dir_all(&evil).unwrap();
            for dir in ["local_content", "local_thumbnails"] {
                let _ = std::os::unix::fs::symlink(&victim, evil.join(dir));
            }
            if fs::rename(&path, media_store.join("moved-by-synapse")).is_ok() {
                std::os::unix::fs::symlink(&evil, &path).unwrap();
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

#[test]
fn a_staging_directory_swapped_for_a_link_during_a_restore_changes_nothing_outside_the_data() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the attack is on a restore run as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let options = xtask::fixture::Options {
        size: xtask::fixture::parse_size("1M").unwrap(),
        profile: "small".parse().unwrap(),
        events: 200,
        small_files: 4000,
        ..Default::default()
    };
    xtask::fixture::make(&data, &options).unwrap();
    let config = data.join("homeserver.yaml");
    let store = tmp.path().join("store");
    let made = cli(&config, &store, &["create"]);
    assert!(made.ok, "{}", made.stderr);
    let id = only_backup(&store);
    let backed_up = backed_up_state(&data);
    fs::write(data.join("media_store/local_content/after-the-backup"), "new").unwrap();
    let before = backed_up_state(&data);

    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("secret"), "root's own").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (m, v, s) = (data.join("media_store"), victim.clone(), stop.clone());
        std::thread::spawn(move || attacker(m, v, s))
    };
    let out = Command::new(bin())
        .arg("--synapse-config")
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .args(["restore", &id])
        .env("SYNAPSE_BACKUP_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let struck = watcher.join().unwrap();
    let r: Run = out.into();
    assert!(struck, "the restore ended before the attack: {}", r.stderr);
    eprintln!(
        "restore under attack: ok={} {}",
        r.ok,
        r.stderr.lines().last().unwrap_or("")
    );

    victim_untouched(&victim);
    // the restore wrote through its own handles: whatever the link, the data is the backup's
    // (or, had it failed, the data it had)
    if r.ok {
        commit_restore(&config);
        victim_untouched(&victim);
        assert_eq!(backed_up_state(&data), backed_up, "{}", r.stderr);
    } else {
        assert_eq!(backed_up_state(&data), before, "{}", r.stderr);
    }
}
