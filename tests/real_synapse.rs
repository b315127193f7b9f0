//! The real-Synapse harness's own tests (tests/common/synapse.rs): Synapse starts as the user the
//! official image or Debian's package runs it as, serves what `populate` made, and keeps it
//! across a restart; and one backup/restore round trip checked through Synapse's API.
//!
//! Each Synapse start costs about 2 s of CPU on a 2-core machine: these tests start as few as
//! they can.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use common::synapse::{process_ids, runs_as_other_user, user_ids, Layout, Synapse};

/// The owner and permission bits of a path.
fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
}

/// Every file and directory under `dir`, with owner and mode.
fn walk(dir: &Path, out: &mut Vec<(String, (u32, u32, u32))>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push((path.display().to_string(), owner_mode(&path)));
        if path.is_dir() {
            walk(&path, out);
        }
    }
}

/// Synapse's process runs as `ids`, with no supplementary groups (when the test is root).
fn assert_runs_as(s: &Synapse, ids: (u32, u32)) {
    if !runs_as_other_user() {
        return;
    }
    let pid = s.pid().unwrap();
    assert_eq!(process_ids(pid), ids, "Synapse's uid and gid (pid {pid})");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.trim(), "Groups:", "supplementary groups");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("synapse.app.homeserver"),
        "pid {pid} is Synapse itself (setpriv execs it)"
    );
}

/// The official image's layout: uid 991, files as Synapse makes them; populate, then a restart
/// (clean SIGTERM) keeps the signing key, database and media.
#[test]
fn image_layout_runs_as_991_and_keeps_its_data_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut s = Synapse::lay_out(dir.path(), "image.test", Layout::Image);
    let laid_out = t.elapsed();
    let ids = s.ids();
    if runs_as_other_user() {
        assert_eq!(ids, (991, 991), "the official image's uid and gid");
    }
    let t = Instant::now();
    s.start();
    let first_start = t.elapsed();
    assert_runs_as(&s, ids);

    // what Synapse made, as its user, with its own modes
    assert_eq!(owner_mode(s.signing_key_path()), (ids.0, ids.1, 0o640), "signing key");
    assert_eq!(owner_mode(s.db_path()), (ids.0, ids.1, 0o644), "database");
    assert_eq!(owner_mode(s.media_path()), (ids.0, ids.1, 0o755), "media store");
    assert_eq!(owner_mode(s.data_dir()).2, 0o755);
    assert_eq!(
        s.signing_key_path(),
        dir.path().canonicalize().unwrap().join("data/image.test.signing.key")
    );

    let t = Instant::now();
    let populated = s.populate(20, 3);
    let populate = t.elapsed();
    assert_eq!(populated.messages.len(), 20);
    assert_eq!(populated.media.len(), 3);
    assert_eq!(populated.user_id, "@alice:image.test");
    assert_eq!(populated.verify_keys.len(), 1);
    let t = Instant::now();
    populated.assert_served_by(&s);
    let check = t.elapsed();

    // uploads and their thumbnails are Synapse's user's files, 0644 in 0755 directories
    let mut files = Vec::new();
    walk(s.media_path(), &mut files);
    let thumbnails = files
        .iter()
        .filter(|(p, _)| p.contains("/local_thumbnails/") && p.ends_with("-crop"))
        .count();
    assert!(thumbnails >= 3 * 2, "a 32x32 and a 96x96 crop per upload: {files:#?}");
    for (path, (uid, gid, mode)) in &files {
        assert_eq!((*uid, *gid), ids, "{path}");
        let want = if Path::new(path).is_dir() { 0o755 } else { 0o644 };
        assert_eq!(*mode, want, "{path}");
    }

    let t = Instant::now();
    let status = s.stop().unwrap();
    let stop = t.elapsed();
    assert!(!s.is_up());
    // SIGTERM is a clean shutdown (Twisted exits 0 or by the signal)
    assert!(
        status.success() || std::os::unix::process::ExitStatusExt::signal(&status) == Some(15),
        "{status}"
    );
    let t = Instant::now();
    s.start();
    let restart = t.elapsed();
    assert_runs_as(&s, ids);
    populated.assert_served_by(&s);
    eprintln!(
        "timings: lay_out (with --generate-keys) {laid_out:.1?}, first start {first_start:.1?}, populate(20 messages, 3 media) {populate:.1?}, assert_served_by {check:.1?}, stop {stop:.1?}, restart {restart:.1?}"
    );
}

/// Debian's layout: config in etc/matrix-synapse (+ conf.d), data in var/lib/matrix-synapse,
/// run as the package's user, whose uid is whatever `adduser --system` gave.
#[test]
fn debian_layout_runs_as_matrix_synapse() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Synapse::lay_out(dir.path(), "debian.test", Layout::Debian);
    let root = dir.path().canonicalize().unwrap();
    assert_eq!(s.config_path(), root.join("etc/matrix-synapse/homeserver.yaml"));
    assert_eq!(s.config_paths()[1], root.join("etc/matrix-synapse/conf.d"));
    assert_eq!(
        s.signing_key_path(),
        root.join("etc/matrix-synapse/homeserver.signing.key")
    );
    assert_eq!(s.db_path(), root.join("var/lib/matrix-synapse/homeserver.db"));
    assert_eq!(s.media_path(), root.join("var/lib/matrix-synapse/media"));
    let ids = s.ids();
    if runs_as_other_user() {
        assert_eq!(ids, user_ids("matrix-synapse"));
        assert_ne!(ids.0, 991);
        assert_ne!(ids.0, 0);
        // the package's config files are root's
        assert_eq!(owner_mode(s.config_path()), (0, 0, 0o644));
    }
    let t = Instant::now();
    s.start();
    let start = t.elapsed();
    assert_runs_as(&s, ids);
    assert_eq!(owner_mode(s.signing_key_path()), (ids.0, ids.1, 0o640));
    assert_eq!(owner_mode(s.db_path()), (ids.0, ids.1, 0o644));
    // server_name came from conf.d/server_name.yaml
    let populated = s.populate(2, 1);
    assert_eq!(populated.user_id, "@alice:debian.test");
    populated.assert_served_by(&s);
    eprintln!("timings: Debian layout start {start:.1?}");
}

/// The CLI backs up a running Synapse; after more activity and a stop, `restore --service none`
/// puts the backup's state back and Synapse, started again, serves exactly it: the messages up
/// to the backup (not the one after), the media and thumbnails, the same signing key.
#[test]
fn backup_of_a_running_synapse_restores_to_a_working_synapse() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let syn = dir.path().join("synapse");
    std::fs::create_dir(&syn).unwrap();
    let mut s = Synapse::lay_out(&syn, "restore.test", Layout::Image);
    s.start();
    let populated = s.populate(10, 2);
    let config = std::path::PathBuf::from(s.config_arg());

    let t = Instant::now();
    let made = common::cli(&config, &store, &["create"]);
    assert!(made.ok, "create: {}", made.stderr);
    let backup = t.elapsed();
    let id = common::only_backup(&store);

    // after the backup: one more message and upload, which the restore must take away
    let session = populated.session();
    s.send(&session, &populated.room_id, &["after the backup"]);
    let later = s.upload(&session, b"not in the backup", "text/plain");
    s.stop();

    let t = Instant::now();
    let restored = common::cli(&config, &store, &["restore", &id, "--service", "none"]);
    assert!(restored.ok, "restore: {}\n{}", restored.stderr, restored.stdout);
    let restore = t.elapsed();
    let ids = s.ids();

    s.start();
    populated.assert_served_by(&s);
    // Synapse works: drop the previous data the restore kept (--service none keeps it)
    let committed = common::cli(&config, &store, &["recover", "--commit"]);
    assert!(committed.ok, "recover --commit: {}", committed.stderr);
    if runs_as_other_user() {
        // what the restore wrote is Synapse's user's, with the modes Synapse gave it
        assert_eq!(owner_mode(s.db_path()), (ids.0, ids.1, 0o644), "the restored database");
        assert_eq!(
            owner_mode(s.signing_key_path()),
            (ids.0, ids.1, 0o640),
            "the restored signing key"
        );
        let mut files = Vec::new();
        walk(s.data_dir(), &mut files);
        // (the tool's own lock file is not Synapse's)
        for (path, (uid, gid, _)) in files.iter().filter(|(p, _)| !p.ends_with("/.synapse-backup.lock")) {
            assert_eq!((*uid, *gid), ids, "{path} after the restore");
        }
    }
    let missing = s.download(&session, &later).unwrap_err();
    assert_eq!(missing.status, Some(404), "{missing}");
    // Synapse writes to the restored database
    let fresh = s.login(&populated.user, &populated.password).unwrap();
    s.send(&fresh, &populated.room_id, &["after the restore"]);
    let mut want = populated.messages.clone();
    want.push("after the restore".into());
    assert_eq!(s.messages(&fresh, &populated.room_id, 50).unwrap(), want);
    eprintln!("timings: create {backup:.1?}, restore {restore:.1?}");
}
