//! The engine through the CLI and a local-directory store: what an operator would check.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

fn setup(size: &str, profile: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, size, profile);
    let store = tmp.path().join("store");
    (tmp, config, store)
}

#[test]
fn round_trip_restores_every_file() {
    let (tmp, config, store) = setup("6M", "small");
    let data = tmp.path().join("data");
    let before = backed_up_state(&data);

    let made = cli(&config, &store, &["--json", "create"]);
    assert!(made.ok, "{}", made.stderr);
    let report: serde_json::Value = serde_json::from_str(&made.stdout).unwrap();
    let id = report["backup-id"].as_str().unwrap().to_string();
    assert_eq!(report["server-name"], "example.com");
    assert!(report["files"].as_u64().unwrap() > 50);

    let listed = cli(&config, &store, &["list"]);
    assert!(
        listed.ok && listed.stdout.contains(&id) && listed.stdout.contains("example.com"),
        "{}",
        listed.stdout
    );
    let verified = cli(&config, &store, &["verify", &id]);
    assert!(
        verified.ok && verified.stdout.contains("every file matches the manifest"),
        "{}{}",
        verified.stdout,
        verified.stderr
    );

    wipe(&data);
    let restored = cli(&config, &store, &["restore", &id]);
    assert!(restored.ok, "{}", restored.stderr);
    // no service control: Synapse is not started, and the previous data is kept until dropped
    assert!(restored.stderr.contains("recover --commit"), "{}", restored.stderr);
    commit_restore(&config);
    assert_eq!(backed_up_state(&data), before);
    // the remote-media cache was not in the backup and was left alone
    assert!(data.join("media_store/remote_content").is_dir());
    // nothing left behind by staging
    let leftovers: Vec<_> = fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("synapse-backup-restore"))
        .collect();
    assert!(leftovers.is_empty());

    let deleted = cli(&config, &store, &["delete", &id]);
    assert!(deleted.ok);
    let again = cli(&config, &store, &["delete", &id]);
    assert!(!again.ok && again.stderr.contains("does not exist"), "{}", again.stderr);
}

#[test]
fn restore_over_live_data_replaces_it() {
    let (tmp, config, store) = setup("4M", "small");
    let data = tmp.path().join("data");
    let before = backed_up_state(&data);
    assert!(cli(&config, &store, &["create"]).ok);
    let id = only_backup(&store);
    // the server moves on: new media, a changed key, a new database row
    fs::write(
        data.join("media_store/local_content/zz-new"),
        "uploaded after the backup",
    )
    .unwrap();
    fs::write(data.join("example.com.signing.key"), "ed25519 a_new other\n").unwrap();
    assert!(
        sh(&format!(
            "sqlite3 {} \"INSERT INTO rooms VALUES('!new:example.com','@u:example.com')\"",
            data.join("homeserver.db").display()
        ))
        .ok
    );
    let restored = cli(&config, &store, &["restore", &id]);
    assert!(restored.ok, "{}", restored.stderr);
    commit_restore(&config);
    assert_eq!(backed_up_state(&data), before);
    assert!(!data.join("media_store/local_content/zz-new").exists());
}

#[test]
fn stock_gpg_and_tar_read_our_backups() {
    let (tmp, config, store) = setup("4M", "mixed");
    let data = tmp.path().join("data");
    assert!(cli(&config, &store, &["create"]).ok);
    let id = only_backup(&store);
    let out = tmp.path().join("extracted");
    fs::create_dir_all(&out).unwrap();
    let gpg_home = tmp.path().join("gnupg");
    let decrypted = tmp.path().join("plain.tar.gz");
    let status = gpg(&gpg_home, PASSPHRASE, &["--decrypt", "--output"])
        .arg(&decrypted)
        .arg(store.join(&id))
        .status()
        .unwrap();
    assert!(status.success(), "gpg --decrypt failed");
    let untar = sh(&format!("tar -xzf {} -C {}", decrypted.display(), out.display()));
    assert!(untar.ok, "{}", untar.stderr);
    // entry names are the absolute paths without the leading '/'
    let extracted = out.join(data.strip_prefix("/").unwrap());
    for line in digest(&data).lines() {
        let path = line.splitn(3, ' ').nth(2).unwrap();
        let carried = path.ends_with(".signing.key") || path.starts_with("media_store/local_");
        if carried {
            assert_eq!(
                fs::read(data.join(path)).unwrap(),
                fs::read(extracted.join(path)).unwrap(),
                "{path}"
            );
        }
    }
    assert!(!extracted.join("media_store/remote_content").exists());
    assert!(!extracted.join("media_store/url_cache").exists());
    assert_eq!(
        sqlite_dump(&extracted.join("homeserver.db")),
        sqlite_dump(&data.join("homeserver.db"))
    );
    assert!(extracted.join(".synapse-backup/manifest.json").is_file());
}

#[test]
fn restores_a_reference_charm_backup() {
    // The reference charm: tar -c /data/*.key /data/homeserver.db* /data/media/local_* | gpg --symmetric
    let (tmp, config, store) = setup("4M", "small");
    let data = tmp.path().join("data");
    let before = backed_up_state(&data);
    fs::create_dir_all(&store).unwrap();
    let id = "backup-20240206153012123456";
    let tarball = tmp.path().join("reference.tar");
    let made = sh(&format!(
        "cd / && tar -cf {tar} {d}/*.key {d}/homeserver.db* {d}/media_store/local_*",
        tar = tarball.display(),
        d = data.display()
    ));
    assert!(made.ok, "{}", made.stderr);
    let status = gpg(&tmp.path().join("gnupg"), PASSPHRASE, &["--symmetric", "--output"])
        .arg(store.join(id))
        .arg(&tarball)
        .status()
        .unwrap();
    assert!(status.success());

    let listed = cli(&config, &store, &["list"]);
    assert!(listed.stdout.contains(id), "{}", listed.stdout);
    let verified = cli(&config, &store, &["verify", id]);
    assert!(
        verified.ok && verified.stdout.contains("no manifest"),
        "{}{}",
        verified.stdout,
        verified.stderr
    );
    wipe(&data);
    let restored = cli(&config, &store, &["restore", id]);
    assert!(restored.ok, "{}", restored.stderr);
    assert_eq!(backed_up_state(&data), before);
}

#[test]
fn snapshot_under_a_live_writer_is_consistent() {
    let (tmp, config, store) = setup("2M", "small");
    let data = tmp.path().join("data");
    let writer = data.clone();
    let churn = std::thread::spawn(move || xtask::fixture::churn(&writer, std::time::Duration::from_secs(6)));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let made = cli(&config, &store, &["create"]);
    let writes = churn.join().unwrap().unwrap();
    assert!(made.ok, "{}", made.stderr);
    assert!(writes > 0);

    let id = only_backup(&store);
    let out = tmp.path().join("x");
    fs::create_dir_all(&out).unwrap();
    let plain = tmp.path().join("p.tgz");
    assert!(gpg(&tmp.path().join("g"), PASSPHRASE, &["-d", "-o"])
        .arg(&plain)
        .arg(store.join(&id))
        .status()
        .unwrap()
        .success());
    assert!(sh(&format!("tar -xzf {} -C {}", plain.display(), out.display())).ok);
    let db = out.join(data.strip_prefix("/").unwrap()).join("homeserver.db");
    let check = sh(&format!("sqlite3 {} 'PRAGMA integrity_check'", db.display()));
    assert_eq!(check.stdout.trim(), "ok");
    // every churn transaction inserts one event and bumps one counter: a consistent copy agrees
    let q = sh(&format!(
        "sqlite3 {} \"SELECT (SELECT count(*) FROM events WHERE event_id LIKE '\\$churn%'), creation_ts FROM users WHERE name='@user0:example.com'\"",
        db.display()
    ));
    let nums: Vec<u64> = q.stdout.trim().split('|').map(|n| n.parse().unwrap()).collect();
    assert_eq!(nums[0], nums[1], "events and counter disagree: {}", q.stdout);
    assert!(nums[0] > 0, "the snapshot should hold some of the live writes");
    assert!(!db.with_file_name("homeserver.db-wal").exists());
}

fn assert_untouched(data: &Path, before: &str, run: &Run, expect: &str) {
    assert!(!run.ok, "should have failed");
    assert!(
        run.stderr.to_lowercase().contains(expect),
        "expected {expect:?} in: {}",
        run.stderr
    );
    assert_eq!(digest(data), before, "the data tree changed");
    let leftovers: Vec<_> = walk(data)
        .into_iter()
        .filter(|p| p.contains("synapse-backup-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_objects_fail_clearly_and_touch_nothing() {
    let (tmp, config, store) = setup("3M", "small");
    let data = tmp.path().join("data");
    assert!(cli(&config, &store, &["create"]).ok);
    let id = only_backup(&store);
    let before = digest(&data);
    let object = store.join(&id);
    let good = fs::read(&object).unwrap();

    let wrong = cli_with(&config, &store, &["restore", &id], "not the passphrase");
    assert_untouched(&data, &before, &wrong, "wrong passphrase");

    fs::write(&object, &good[..good.len() / 2]).unwrap();
    assert_untouched(&data, &before, &cli(&config, &store, &["restore", &id]), "damaged");
    assert!(!cli(&config, &store, &["verify", &id]).ok);

    fs::write(&object, &good[..good.len() - 10]).unwrap();
    assert_untouched(&data, &before, &cli(&config, &store, &["restore", &id]), "damaged");

    let mut flipped = good.clone();
    let at = flipped.len() * 2 / 3;
    flipped[at] ^= 0x40;
    fs::write(&object, &flipped).unwrap();
    assert_untouched(&data, &before, &cli(&config, &store, &["restore", &id]), "damaged");
    let verify = cli(&config, &store, &["verify", &id]);
    assert!(!verify.ok && verify.stderr.contains("damaged"), "{}", verify.stderr);

    fs::write(&object, &good).unwrap();
    let missing = cli(&config, &store, &["restore", "backup-20200101000000000000"]);
    assert_untouched(&data, &before, &missing, "does not exist");
}

#[test]
fn hostile_archives_write_nothing_outside() {
    let (tmp, config, store) = setup("2M", "small");
    let data = tmp.path().join("data");
    let before = digest(&data);
    let rel = data.strip_prefix("/").unwrap().display().to_string();
    let outside = tmp.path().join("outside");
    let cases = [
        (format!("add('{rel}/media_store/local_content/../../../outside')"), "'..'"),
        (format!("add('{}')", outside.display()), "absolute"),
        (format!("add('{rel}/media_store/local_content/ab', kind=tarfile.SYMTYPE, link='../../../..')\nadd('{rel}/media_store/local_content/ab/outside')"), "goes up with '..'"),
        (format!("add('{rel}/media_store/local_content/ab', kind=tarfile.SYMTYPE, link='{}')", tmp.path().display()), "a link to an absolute path"),
        (format!("add('{rel}/media_store/local_content/ab', kind=tarfile.CHRTYPE)"), "never restored"),
        (format!("add('{rel}/example.com.signing.key', kind=tarfile.SYMTYPE, link='/etc/shadow')"), "regular files"),
    ];
    for (script, expect) in cases {
        let id = hostile_backup(tmp.path(), &store, &script);
        let run = cli(&config, &store, &["restore", &id]);
        assert_untouched(&data, &before, &run, expect);
        assert!(!outside.exists(), "{script}");
    }
}

#[test]
fn another_servers_backup_is_refused_unless_forced() {
    let (tmp, config, store) = setup("2M", "small");
    let data = tmp.path().join("data");
    assert!(cli(&config, &store, &["create"]).ok);
    let id = only_backup(&store);
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("server_name: \"example.com\"", "server_name: \"other.org\"");
    fs::write(&config, text).unwrap();
    let before = digest(&data);
    let refused = cli(&config, &store, &["restore", &id]);
    assert_untouched(&data, &before, &refused, "other.org");
    let forced = cli(&config, &store, &["restore", "--force", &id]);
    assert!(forced.ok, "{}", forced.stderr);
}

#[test]
fn postgres_servers_get_key_and_media_and_a_note() {
    let (tmp, config, store) = setup("2M", "small");
    let data = tmp.path().join("data");
    let text = fs::read_to_string(&config).unwrap();
    let head = text.split("database:").next().unwrap().to_string();
    fs::write(
        &config,
        format!("{head}database:\n  name: psycopg2\n  args:\n    user: synapse\n    host: db\n"),
    )
    .unwrap();
    let made = cli(&config, &store, &["--json", "create"]);
    assert!(made.ok, "{}", made.stderr);
    assert!(made.stderr.contains("PostgreSQL's own tools"), "{}", made.stderr);
    let report: serde_json::Value = serde_json::from_str(&made.stdout).unwrap();
    assert_eq!(report["database"], "psycopg2");
    let db_before = fs::read(data.join("homeserver.db")).unwrap();
    let id = only_backup(&store);
    fs::remove_file(data.join("example.com.signing.key")).unwrap();
    let restored = cli(&config, &store, &["restore", &id]);
    assert!(restored.ok, "{}", restored.stderr);
    assert!(data.join("example.com.signing.key").is_file());
    assert_eq!(
        fs::read(data.join("homeserver.db")).unwrap(),
        db_before,
        "a PostgreSQL server's stray SQLite file is not ours to touch"
    );
}

#[test]
fn the_passphrase_never_reaches_argv_or_output() {
    let (_tmp, config, store) = setup("1M", "small");
    let run = cli(&config, &store, &["create"]);
    assert!(run.ok);
    assert!(!run.stdout.contains(PASSPHRASE) && !run.stderr.contains(PASSPHRASE));
    let none = Command::new(bin())
        .args(["--store"])
        .arg(&store)
        .arg("--synapse-config")
        .arg(&config)
        .arg("create")
        .env_remove("SYNAPSE_BACKUP_PASSPHRASE")
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no passphrase"));
}

/// A small tmpfs, unmounted on drop. None when we may not mount (not root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| SmallDisk(at.to_path_buf()))
    }

    /// Fills the disk until `leave` bytes are free.
    fn fill(&self, leave: u64) {
        let free = sh(&format!("df -B1 --output=avail {} | tail -1", self.0.display()))
            .stdout
            .trim()
            .parse::<u64>()
            .unwrap();
        let filler = self.0.join("filler");
        let run = sh(&format!(
            "dd if=/dev/zero of={} bs=64k count={} oflag=append conv=notrunc 2>/dev/null; true",
            filler.display(),
            free.saturating_sub(leave) / 65536
        ));
        assert!(run.ok);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_clearly_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&tmp.path().join("disk"), "24M") else {
        eprintln!("not run: mounting a small tmpfs needs root (CI runs it)");
        return;
    };
    let data = disk.0.join("data");
    let config = fixture(&data, "3M", "small");
    let store = tmp.path().join("store");
    assert!(cli(&config, &store, &["create"]).ok);
    let id = only_backup(&store);
    disk.fill(1 << 20);
    let before = digest(&data);
    let run = cli(&config, &store, &["restore", &id]);
    // refused before staging, by the free-space check
    assert_untouched(&data, &before, &run, "not enough disk space");

    // a store on a full disk: the backup fails and nothing half-written is listed
    let full_store = disk.0.join("store");
    fs::create_dir_all(&full_store).unwrap();
    disk.fill(64 << 10);
    let made = cli(&config, &full_store, &["create"]);
    let said = made.stderr.to_lowercase();
    assert!(
        !made.ok && (said.contains("no space left") || said.contains("disk is full")),
        "{}",
        made.stderr
    );
    let listed = cli(&config, &full_store, &["--json", "list"]);
    assert!(listed.ok, "{}", listed.stderr);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed["backups"], serde_json::json!([]), "{listed}");
    assert_eq!(
        listed["incomplete"]["count"], 0,
        "a partial upload is counted: {listed}"
    );
    assert_eq!(
        fs::read_dir(&full_store).unwrap().count(),
        0,
        "a partial upload was left behind"
    );
}

#[test]
fn a_restored_database_hands_out_no_old_one_time_keys() {
    let (tmp, config, store) = setup("1M", "small");
    let db = tmp.path().join("data/homeserver.db");
    let made = sh(&format!(
        "sqlite3 {} \"CREATE TABLE e2e_one_time_keys_json(user_id TEXT, device_id TEXT, key_id TEXT, key_json TEXT); INSERT INTO e2e_one_time_keys_json VALUES('@a:example.com','D','k1','{{}}'),('@a:example.com','D','k2','{{}}')\"",
        db.display()
    ));
    assert!(made.ok, "{}", made.stderr);
    assert!(cli(&config, &store, &["create"]).ok);
    let id = only_backup(&store);
    let restored = cli(&config, &store, &["restore", &id]);
    assert!(restored.ok, "{}", restored.stderr);
    assert!(restored.stderr.contains("one-time keys"), "{}", restored.stderr);
    let left = sh(&format!(
        "sqlite3 {} 'SELECT count(*) FROM e2e_one_time_keys_json'",
        db.display()
    ));
    assert_eq!(left.stdout.trim(), "0");
    assert!(!db.with_file_name("homeserver.db-wal").exists() && !db.with_file_name("homeserver.db-shm").exists());
}

#[test]
fn restores_onto_a_server_laid_out_differently() {
    // a backup of the official image's /data layout, restored onto a Debian-style layout
    let (tmp, config, store) = setup("2M", "small");
    let data = tmp.path().join("data");
    let before = backed_up_state(&data);
    assert!(cli(&config, &store, &["create"]).ok);
    let id = only_backup(&store);
    let debian = tmp.path().join("debian");
    fs::create_dir_all(debian.join("etc/conf.d")).unwrap();
    fs::write(
        debian.join("etc/homeserver.yaml"),
        "server_name: example.com\nreport_stats: false\n",
    )
    .unwrap();
    fs::write(
        debian.join("etc/conf.d/paths.yaml"),
        format!(
            "signing_key_path: {d}/etc/homeserver.signing.key\nmedia_store_path: {d}/var/media\ndatabase:\n  name: sqlite3\n  args:\n    database: {d}/var/homeserver.db\n",
            d = debian.display()
        ),
    )
    .unwrap();
    let configs = format!(
        "{},{}",
        debian.join("etc/homeserver.yaml").display(),
        debian.join("etc/conf.d").display()
    );
    let restored = cli(Path::new(&configs), &store, &["restore", &id]);
    assert!(restored.ok, "{}", restored.stderr);
    assert_eq!(
        fs::read(debian.join("etc/homeserver.signing.key")).unwrap(),
        fs::read(data.join("example.com.signing.key")).unwrap()
    );
    assert_eq!(
        sqlite_dump(&debian.join("var/homeserver.db")),
        before["homeserver.db (dump)"]
    );
    for (path, sha) in &before {
        if let Some(rest) = path.strip_prefix("media_store/") {
            let got = sh(&format!("sha256sum {}", debian.join("var/media").join(rest).display()));
            assert!(got.stdout.starts_with(sha.as_str()), "{path}");
        }
    }
}
