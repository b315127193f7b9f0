//! The restore's rules, applied on the other two sides: `create` leaves out (and reports) what a
//! restore would refuse, so its backups always restore; `verify` refuses what a restore refuses,
//! with the restore's own message, so "good" means "will restore".

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn setup(size: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, size, "small");
    let store = tmp.path().join("store");
    (tmp, data, config, store)
}

/// Every entry below `dir` (not following links), by path: a file's SHA-256, a link's target,
/// or its type; what a restore must give back as it was.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            let md = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            let what = if md.is_dir() {
                dirs.push(path.clone());
                "dir".to_string()
            } else if md.is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if md.is_file() {
                let run = Command::new("sha256sum").arg(&path).output().unwrap();
                String::from_utf8_lossy(&run.stdout)
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            } else {
                format!("{:?}", md.file_type())
            };
            out.insert(rel, what);
        }
    }
    out
}

/// The manifest's summary inside a backup, read with stock gpg and tar.
fn manifest_summary(tmp: &Path, store: &Path, id: &str, data: &Path) -> Value {
    let plain = tmp.join("plain.tgz");
    assert!(gpg(&tmp.join("g"), PASSPHRASE, &["-d", "-o"])
        .arg(&plain)
        .arg(store.join(id))
        .status()
        .unwrap()
        .success());
    let member = data.strip_prefix("/").unwrap().join(".synapse-backup/manifest.json");
    let out = sh(&format!("tar -xzOf {} {}", plain.display(), member.display()));
    assert!(out.ok, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// The hostile entries of the first test, below local_content: (name, what the reason says).
fn hostile_tree(local: &Path) -> Vec<(PathBuf, &'static str)> {
    let abs = local.join("zz-absolute");
    symlink("/etc/passwd", &abs).unwrap();
    let up = local.join("zz-up");
    symlink("../../example.com.signing.key", &up).unwrap();
    let fifo = local.join("zz-fifo");
    assert!(sh(&format!("mkfifo {}", fifo.display())).ok);
    let socket = local.join("zz-socket");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(listener); // the socket file stays
    let bad = local.join(OsStr::from_bytes(b"zz-not-utf8-\xff"));
    fs::write(&bad, "a name no restore could give back").unwrap();
    let bad_dir = local.join(OsStr::from_bytes(b"zz-dir-\xfe"));
    fs::create_dir(&bad_dir).unwrap();
    fs::write(bad_dir.join("inside"), "left out with its directory").unwrap();
    // what a restore accepts stays in
    symlink("ab", local.join("zz-down")).unwrap();
    vec![
        (abs, "absolute"),
        (up, "'..'"),
        (fifo, "fifo"),
        (socket, "socket"),
        (bad, "not UTF-8"),
        (bad_dir, "with everything in it"),
    ]
}

/// How a skipped path is reported: UTF-8 as it is, other bytes as `\xNN`.
fn shown(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[test]
fn create_leaves_out_what_a_restore_would_refuse_and_says_so() {
    let (tmp, data, config, store) = setup("2M");
    let local = data.join("media_store/local_content");
    fs::create_dir_all(local.join("ab")).unwrap();
    fs::write(local.join("ab/target"), "pointed at").unwrap();
    let hostile = hostile_tree(&local);
    let key = fs::read(data.join("example.com.signing.key")).unwrap();
    let db = sqlite_dump(&data.join("homeserver.db"));
    let mut media = BTreeMap::new();
    for dir in ["local_content", "local_thumbnails"] {
        media.insert(dir, tree(&data.join("media_store").join(dir)));
    }

    let made = cli(&config, &store, &["--json", "create"]);
    assert!(made.ok, "{}", made.stderr);
    let report: Value = serde_json::from_str(&made.stdout).unwrap();
    let id = report["backup-id"].as_str().unwrap().to_string();
    assert_eq!(report["skipped-count"], hostile.len(), "{report}");
    let listed = report["skipped"].as_array().unwrap();
    assert_eq!(listed.len(), hostile.len(), "{report}");
    let summary = manifest_summary(tmp.path(), &store, &id, &data);
    assert_eq!(summary["skipped_count"], hostile.len(), "{summary}");
    for (path, why) in &hostile {
        let path = shown(path);
        let in_json = listed.iter().find(|s| s["path"] == path.as_str());
        let reason = in_json.unwrap_or_else(|| panic!("{path} not in {report}"))["reason"]
            .as_str()
            .unwrap();
        assert!(reason.contains(why), "{path}: {reason}");
        assert!(
            made.stderr.contains(&format!("note: left out {path}: {reason}")),
            "{path}: {}",
            made.stderr
        );
        let name = path.trim_start_matches('/');
        let in_manifest = summary["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name);
        assert_eq!(
            in_manifest.unwrap_or_else(|| panic!("{name}: {summary}"))["reason"],
            reason
        );
    }

    let verified = cli(&config, &store, &["verify", &id]);
    assert!(
        verified.ok && verified.stdout.contains("is good"),
        "{}",
        verified.stderr
    );

    wipe(&data);
    let restored = cli(&config, &store, &["restore", &id]);
    assert!(restored.ok, "{}", restored.stderr);
    commit_restore(&config);
    assert_eq!(fs::read(data.join("example.com.signing.key")).unwrap(), key);
    assert_eq!(sqlite_dump(&data.join("homeserver.db")), db);
    let left_out: Vec<PathBuf> = hostile
        .iter()
        .map(|(p, _)| p.strip_prefix(&local).unwrap().to_path_buf())
        .collect();
    let mut want = media["local_content"].clone();
    want.retain(|p, _| !left_out.iter().any(|l| p.starts_with(l)));
    assert_eq!(want.get(Path::new("zz-down")).map(String::as_str), Some("link ab"));
    assert_eq!(tree(&local), want);
    assert_eq!(
        tree(&data.join("media_store/local_thumbnails")),
        media["local_thumbnails"]
    );
}

#[test]
fn a_media_directory_that_is_a_link_is_backed_up_as_its_directory() {
    let (tmp, data, config, store) = setup("2M");
    let thumbs = data.join("media_store/local_thumbnails");
    let real = tmp.path().join("elsewhere/thumbnails");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    fs::rename(&thumbs, &real).unwrap();
    symlink(&real, &thumbs).unwrap();
    let before = tree(&real);
    assert!(before.len() > 3, "{before:?}");

    let made = cli(&config, &store, &["--json", "create"]);
    assert!(made.ok, "{}", made.stderr);
    let note = format!("{} is a symbolic link to {}", thumbs.display(), real.display());
    assert!(made.stderr.contains(&note), "{}", made.stderr);
    let report: Value = serde_json::from_str(&made.stdout).unwrap();
    assert_eq!(report["skipped-count"], 0, "{report}");
    assert!(report["notes"]
        .to_string()
        .contains("backed up as the directory it points to"));
    let id = report["backup-id"].as_str().unwrap().to_string();
    assert!(cli(&config, &store, &["verify", &id]).ok);

    // as the note says: a restore will not replace the link
    let refused = cli(&config, &store, &["restore", &id]);
    assert!(
        !refused.ok && refused.stderr.contains("is a symbolic link"),
        "{}",
        refused.stderr
    );
    fs::remove_file(&thumbs).unwrap();
    let restored = cli(&config, &store, &["restore", &id]);
    assert!(restored.ok, "{}", restored.stderr);
    commit_restore(&config);
    assert!(!fs::symlink_metadata(&thumbs).unwrap().is_symlink());
    assert_eq!(tree(&thumbs), before);
}

/// The sentence a failed command ends with.
fn error_line(run: &Run) -> String {
    run.stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line in: {}", run.stderr))
        .to_string()
}

#[test]
fn verify_refuses_what_restore_refuses_with_the_same_message() {
    let (tmp, data, config, store) = setup("1M");
    let rel = data.strip_prefix("/").unwrap().display().to_string();
    let media = format!("{rel}/media_store/local_content");
    let header = json!({
        "format": 1, "tool": "synapse-backup test", "created_at": "2026-01-01T00:00:00Z",
        "server_name": "example.com", "database": "sqlite3",
        "roots": {
            "signing_key": format!("{rel}/example.com.signing.key"),
            "database": format!("{rel}/homeserver.db"),
            "media_store": format!("{rel}/media_store"),
        },
    });
    let cases = [
        (format!("add('{media}/ab', kind=tarfile.SYMTYPE, link='/etc/passwd')"), "absolute path"),
        (format!("add('{media}/ab', kind=tarfile.SYMTYPE, link='../../..')"), "'..'"),
        (format!("add('{media}/ab', kind=tarfile.CHRTYPE)"), "never restored"),
        (
            format!("add('{rel}/media_store/local_thumbnails/t')\nadd('{media}/h', kind=tarfile.LNKTYPE, link='{rel}/media_store/local_thumbnails/t')"),
            "outside its own media directory",
        ),
        (format!("add('{media}/../../../outside')"), "'..' in the name"),
        (format!("add('{media}/ab', kind=tarfile.SYMTYPE, link='cd')\nadd('{media}/ab/x')"), "through a link"),
        (format!("add('{media}/ab/x')\nadd('{media}/ab')"), "over a directory"),
        (format!("add('{media}/a')\nadd('{media}/h', kind=tarfile.LNKTYPE, link='{media}/b')"), "not a file restored before it"),
        (format!("add('{rel}/example.com.signing.key', kind=tarfile.SYMTYPE, link='x')"), "regular files"),
        // our own archives name nothing outside their roles
        (
            format!("add('{rel}/.synapse-backup/header.json', data={:?}.encode())\nadd('{rel}/homeserver.yaml')", header.to_string()),
            "not a path this synapse's config allows",
        ),
    ];
    let before = digest(&data);
    for (script, expect) in cases {
        let id = hostile_backup(tmp.path(), &store, &script);
        let verified = cli(&config, &store, &["verify", &id]);
        assert!(!verified.ok, "verify passed {script}: {}", verified.stdout);
        let restored = cli(&config, &store, &["restore", &id]);
        assert!(!restored.ok, "restore took {script}");
        let said = error_line(&verified);
        assert!(said.to_lowercase().contains(expect), "{script}: {said}");
        assert!(said.contains("nothing was restored"), "{script}: {said}");
        assert_eq!(said, error_line(&restored), "{script}");
        assert_eq!(digest(&data), before, "{script}");
    }
    // a format this version cannot read
    let mut newer = header.clone();
    newer["format"] = json!(99);
    let id = hostile_backup(
        tmp.path(),
        &store,
        &format!(
            "add('{rel}/.synapse-backup/header.json', data={:?}.encode())",
            newer.to_string()
        ),
    );
    let verified = cli(&config, &store, &["verify", &id]);
    let restored = cli(&config, &store, &["restore", &id]);
    assert!(!verified.ok && !restored.ok);
    assert!(
        error_line(&verified).contains("upgrade to restore it"),
        "{}",
        verified.stderr
    );
    assert_eq!(error_line(&verified), error_line(&restored));
    // a well-formed reference-charm archive is still good
    let id = hostile_backup(
        tmp.path(),
        &store,
        &format!("add('{media}/ab', data=b'media')\nadd('{media}/cd', kind=tarfile.SYMTYPE, link='ab')\nadd('{media}/ef', kind=tarfile.LNKTYPE, link='{media}/ab')"),
    );
    let verified = cli(&config, &store, &["verify", &id]);
    assert!(
        verified.ok && verified.stdout.contains("is good"),
        "{}",
        verified.stderr
    );
}

#[test]
fn the_create_backup_action_counts_what_it_left_out() {
    use s3_server::{Kind, S3Server};
    let server = S3Server::start(Kind::S3sFs);
    server.create_bucket("synapse-backups");
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture(&tmp.path().join("data"), "1M", "small");
    let local = tmp.path().join("data/media_store/local_content");
    symlink("/etc", local.join("zz-absolute")).unwrap();
    assert!(sh(&format!("mkfifo {}", local.join("zz-fifo").display())).ok);

    let juju = common::juju::Juju::new();
    juju.add_relation("backup:3", "s3-integrator", &["s3-integrator/0"]);
    juju.set_remote_app_data("backup:3", json!(server.databag("synapse-backups", "synapse/prod")));
    juju.add_secret("secret:d0passphrase0000000d", json!({"passphrase": PASSPHRASE}), true);
    juju.config("backup_passphrase_secret", json!("secret:d0passphrase0000000d"));
    juju.config("synapse_config", json!(config.to_str().unwrap()));
    juju.config("synapse_service", json!("none"));
    juju.relation_hook("backup:3", "changed", None).assert_ok();

    let created = juju.action("create-backup", json!({}));
    created
        .assert_ok()
        .assert_no_secret(&[PASSPHRASE, server.secret_key.as_str()]);
    assert_eq!(created.failure(), None, "{:?}", created.failure());
    assert_eq!(created.result("skipped"), Some("2"));
    let logs = created.action_logs().join("\n");
    for name in ["zz-absolute", "zz-fifo"] {
        let line = format!("note: left out {}", local.join(name).display());
        assert!(logs.contains(&line), "{line}: {logs}");
    }
    let id = created.result("backup-id").unwrap().to_string();
    let verified = juju.action("verify-backup", json!({"backup-id": id}));
    assert_eq!(verified.failure(), None, "{:?}", verified.failure());
    assert_eq!(verified.result("result"), Some("correct"));
}
