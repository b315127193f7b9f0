//! Restores that a real Synapse (1.163, SQLite, run as its own user as in production) starts on:
//! a backup taken under a live writer, restored onto a lost server through a service that really
//! stops and starts Synapse; a backup of the official image's layout restored onto Debian's; a
//! restore whose data cannot start, rolled back; a running Synapse that `--service none` refuses.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pebble::PebbleStandIn;
use common::synapse::{Layout, Populated, Synapse};
use common::Run;

/// Pebble's API in front of a real Synapse: `stop` stops it (SIGTERM, waits for the exit), `start`
/// launches it (and, as Pebble, does not wait for it to serve: the restore's health check does).
fn pebble_for(synapse: Arc<Mutex<Synapse>>, dir: &Path) -> PebbleStandIn {
    let pebble = PebbleStandIn::start(&dir.join("pebble.socket"), &["synapse"]);
    pebble.observe(move |action| {
        let mut s = synapse.lock().unwrap();
        s.stop(); // reaps one that exited on its own too
        if action == "start" {
            s.spawn();
        }
        action.to_string()
    });
    pebble
}

/// A Synapse of the official image's layout for `server_name`, running as its user, with a user,
/// a room, `messages` messages and `media` uploads (with thumbnails).
fn running(dir: &Path, server_name: &str, messages: usize, media: usize) -> (Synapse, Populated) {
    let mut s = Synapse::lay_out(&home(dir, "synapse"), server_name, Layout::Image);
    s.start();
    let populated = s.populate(messages, media);
    (s, populated)
}

/// A directory for one Synapse (the harness wants it to exist).
fn home(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn cli(config: &str, store: &Path, args: &[&str]) -> Run {
    common::cli(Path::new(config), store, args)
}

/// A lost server (only its config left): the files the restore gives back are Synapse's user's,
/// Synapse starts through the service control, and serves everything up to the backup.
#[test]
fn a_lost_server_comes_back_through_pebble_and_its_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut s, populated) = running(dir.path(), "lost.test", 10, 2);
    let config = s.config_arg();
    let (made, live) = common::synapse::under_a_writer(&s, &populated, 200, || cli(&config, &store, &["create"]));
    assert!(made.ok, "create: {}", made.stderr);
    let id = common::only_backup(&store);
    assert!(!live.is_empty());
    // after the backup: a message and an upload the restore must take away
    let session = populated.session();
    s.send(&session, &populated.room_id, &["after the backup"]);
    let later = s.upload(&session, b"not in the backup", "text/plain");
    s.stop();

    // the disk is lost: only homeserver.yaml (and the directory) are left
    let data = s.data_dir().to_path_buf();
    common::lose_all_but_config(&data);
    let synapse = Arc::new(Mutex::new(s));
    let pebble = pebble_for(synapse.clone(), dir.path());
    synapse.lock().unwrap().spawn(); // the fresh pod's Synapse makes an empty server meanwhile
    synapse.lock().unwrap().wait_healthy(Duration::from_secs(90)).unwrap();
    let restored = cli(&config, &store, &["restore", &id, "--service", &pebble.spec("synapse")]);
    assert!(restored.ok, "restore: {}", restored.stderr);
    assert_eq!(pebble.events(), ["stop synapse", "start synapse"]);

    let s = synapse.lock().unwrap();
    assert!(s.is_up(), "the restore returned once Synapse answered");
    // every message sent before the backup began is there, in order, then those of the live
    // writer that the snapshot caught, and nothing after it
    let fresh = s.login(&populated.user, &populated.password).unwrap();
    let served = s.messages(&fresh, &populated.room_id, 500).unwrap();
    assert_eq!(&served[..populated.messages.len()], &populated.messages[..]);
    let served_live = &served[populated.messages.len()..];
    assert!(
        !served_live.is_empty(),
        "the writer's first messages came before the backup"
    );
    assert!(
        live.starts_with(served_live),
        "{served_live:?} is not a prefix of {live:?}"
    );
    assert!(!served.contains(&"after the backup".to_string()));
    let mut at_backup = populated.clone();
    at_backup.messages = served.clone();
    at_backup.assert_served_by(&s);
    assert_eq!(s.download(&session, &later).unwrap_err().status, Some(404));
    // nothing of the restore is left, and Synapse writes to what it restored
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("synapse-backup-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    s.send(&fresh, &populated.room_id, &["after the restore"]);
    let upload = s.upload(&fresh, b"after the restore", "text/plain");
    assert_eq!(s.download(&fresh, &upload).unwrap().sha256.len(), 64);
}

/// The official image's backup (uid 991) onto Debian's layout, another user and other paths.
#[test]
fn a_backup_of_the_image_restores_onto_debians_layout() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut image = Synapse::lay_out(&home(dir.path(), "image"), "moved.test", Layout::Image);
    image.start();
    let populated = image.populate(5, 2);
    let made = cli(&image.config_arg(), &store, &["create"]);
    assert!(made.ok, "create: {}", made.stderr);
    let id = common::only_backup(&store);
    image.stop();

    let mut debian = Synapse::lay_out(&home(dir.path(), "debian"), "moved.test", Layout::Debian);
    let restored = cli(&debian.config_arg(), &store, &["restore", &id]);
    assert!(restored.ok, "restore: {}", restored.stderr);
    common::commit_restore(Path::new(&debian.config_arg()));
    if common::synapse::runs_as_other_user() {
        use std::os::unix::fs::MetadataExt;
        let ids = debian.ids();
        for p in [debian.db_path(), debian.signing_key_path(), debian.media_path()] {
            let md = std::fs::metadata(p).unwrap();
            assert_eq!((md.uid(), md.gid()), ids, "{}", p.display());
        }
    }
    debian.start();
    populated.assert_served_by(&debian);
}

/// A backup whose data cannot start (here: a signing key Synapse cannot read) is rolled back: the
/// previous data is put back and Synapse serves it again.
#[test]
fn a_restore_that_cannot_start_puts_the_previous_server_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut s, populated) = running(dir.path(), "rollback.test", 5, 1);
    s.stop();
    let config = s.config_arg();
    let key = std::fs::read(s.signing_key_path()).unwrap();
    std::fs::write(s.signing_key_path(), "ed25519 a_bad !!!not-a-key!!!\n").unwrap();
    let made = cli(&config, &store, &["create"]);
    assert!(made.ok, "create: {}", made.stderr);
    let id = common::only_backup(&store);
    std::fs::write(s.signing_key_path(), key).unwrap();
    s.start();

    let synapse = Arc::new(Mutex::new(s));
    let pebble = pebble_for(synapse.clone(), dir.path());
    let r = cli(
        &config,
        &store,
        &[
            "restore",
            &id,
            "--service",
            &pebble.spec("synapse"),
            "--health-timeout",
            "20",
        ],
    );
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("the restored data did not start: Synapse did not answer GET /health")
            && r.stderr.contains("the previous data is back and Synapse is running"),
        "{}",
        r.stderr
    );
    assert_eq!(
        pebble.events(),
        ["stop synapse", "start synapse", "stop synapse", "start synapse"]
    );
    let s = synapse.lock().unwrap();
    populated.assert_served_by(&s);
}

/// With no service control, a running Synapse is refused, nothing changes, and what it writes
/// afterwards survives its restart.
#[test]
fn service_none_refuses_a_running_synapse() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut s, populated) = running(dir.path(), "running.test", 3, 1);
    let config = s.config_arg();
    assert!(cli(&config, &store, &["create"]).ok);
    let id = common::only_backup(&store);
    let session = populated.session();
    s.send(&session, &populated.room_id, &["after the backup"]);

    let r = cli(&config, &store, &["restore", &id]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&format!("Synapse is answering on {}", s.base_url()))
            && r.stderr.contains("--service systemd:"),
        "{}",
        r.stderr
    );
    assert_keeps_writing_after_a_refusal(&mut s, &populated);
}

/// The charm, driven through `dispatch` as Juju drives it, with a real Synapse as its workload:
/// create-backup under a live writer into a real bucket, the data lost, restore-backup through
/// Pebble, and Synapse serves the same users, rooms, media and signing key.
#[test]
fn the_charm_restores_a_lost_server_that_synapse_then_serves() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let server = s3_server::S3Server::start(s3_server::Kind::S3sFs);
    server.create_bucket("synapse-backups");
    let (mut s, populated) = running(dir.path(), "charm.test", 8, 2);
    let juju = charm_unit(&server, &s);
    juju.relation_hook("backup:3", "changed", None).assert_ok();

    let (created, live) =
        common::synapse::under_a_writer(&s, &populated, 200, || juju.action("create-backup", json!({})));
    created.assert_ok();
    assert_eq!(created.failure(), None, "{:?}", created.failure());
    let id = created.result("backup-id").unwrap().to_string();
    s.stop();
    let data = s.data_dir().to_path_buf();
    std::fs::remove_file(s.signing_key_path()).unwrap();
    for part in ["homeserver.db", "homeserver.db-wal", "homeserver.db-shm"] {
        let _ = std::fs::remove_file(data.join(part));
    }
    std::fs::remove_dir_all(s.media_path()).unwrap();

    let synapse = Arc::new(Mutex::new(s));
    let pebble = pebble_for(synapse.clone(), dir.path());
    juju.config("synapse_service", json!(pebble.spec("synapse")));
    let restored = juju.action("restore-backup", json!({"backup-id": id}));
    restored
        .assert_ok()
        .assert_no_secret(&[common::PASSPHRASE, &server.secret_key]);
    assert_eq!(restored.failure(), None, "{:?}", restored.failure());
    assert_eq!(restored.result("result"), Some("correct"));
    assert_eq!(pebble.events(), ["stop synapse", "start synapse"]);
    assert_eq!(restored.status().0, "active");

    let s = synapse.lock().unwrap();
    let fresh = s.login(&populated.user, &populated.password).unwrap();
    let served = s.messages(&fresh, &populated.room_id, 500).unwrap();
    assert!(live.starts_with(&served[populated.messages.len()..]));
    let mut at_backup = populated.clone();
    at_backup.messages = served;
    at_backup.assert_served_by(&s);
}

/// The charm with `synapse_service=none` refuses to restore under a Synapse that is running: the
/// action fails saying where it answered, and Synapse keeps everything it writes.
#[test]
fn the_charm_without_service_control_refuses_a_running_synapse() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let server = s3_server::S3Server::start(s3_server::Kind::S3sFs);
    server.create_bucket("synapse-backups");
    let (mut s, populated) = running(dir.path(), "live.test", 3, 1);
    let juju = charm_unit(&server, &s);
    juju.config("synapse_service", json!("none"));
    let created = juju.action("create-backup", json!({}));
    created.assert_ok();
    let id = created.result("backup-id").unwrap().to_string();
    let session = populated.session();
    s.send(&session, &populated.room_id, &["after the backup"]);

    let refused = juju.action("restore-backup", json!({"backup-id": id}));
    refused.assert_ok();
    let failure = refused.failure().unwrap_or_default().to_string();
    assert!(
        failure.contains(&format!("Synapse is answering on {}", s.base_url())) && failure.contains("stop it first"),
        "{failure}"
    );
    assert_keeps_writing_after_a_refusal(&mut s, &populated);
}

/// A service manager that says "stopped" while Synapse still answers: the restore swaps nothing,
/// starts nothing new, and says so; Synapse keeps serving its data.
#[test]
fn a_stop_that_does_not_take_changes_nothing_under_a_real_synapse() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (s, populated) = running(dir.path(), "stubborn.test", 3, 1);
    let config = s.config_arg();
    assert!(cli(&config, &store, &["create"]).ok);
    let id = common::only_backup(&store);
    let session = populated.session();
    s.send(&session, &populated.room_id, &["after the backup"]);
    // Pebble answers every stop and start, and touches nothing
    let pebble = PebbleStandIn::start(&dir.path().join("pebble.socket"), &["synapse"]);
    let r = cli(&config, &store, &["restore", &id, "--service", &pebble.spec("synapse")]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("Synapse was stopped through pebble:synapse")
            && r.stderr.contains("still answers")
            && r.stderr.contains("nothing was restored"),
        "{}",
        r.stderr
    );
    assert_eq!(pebble.events(), ["stop synapse"]);
    let served = s.messages(&session, &populated.room_id, 50).unwrap();
    assert_eq!(served.last().map(String::as_str), Some("after the backup"));
    let leftovers: Vec<_> = std::fs::read_dir(s.data_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("synapse-backup-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A refused restore changed nothing: Synapse takes another message, and after a restart still
/// serves everything, the message sent after the backup included.
fn assert_keeps_writing_after_a_refusal(s: &mut Synapse, populated: &Populated) {
    let session = populated.session();
    s.send(&session, &populated.room_id, &["after the refusal"]);
    s.stop();
    s.start();
    let served = s.messages(&session, &populated.room_id, 50).unwrap();
    assert!(served.ends_with(&["after the backup".to_string(), "after the refusal".to_string()]));
}

/// A charm unit whose workload is `s`, related to the s3s-fs bucket `synapse-backups`.
fn charm_unit(server: &s3_server::S3Server, s: &Synapse) -> common::juju::Juju {
    use serde_json::json;
    let juju = common::juju::Juju::new();
    juju.add_relation("backup:3", "s3-integrator", &["s3-integrator/0"]);
    juju.set_remote_app_data("backup:3", json!(server.databag("synapse-backups", "synapse/prod")));
    juju.config("backup_passphrase", json!(common::PASSPHRASE));
    juju.config("synapse_config", json!(s.config_arg()));
    juju
}
