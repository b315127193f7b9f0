//! The Kubernetes charm (`synapse`), packed as `cargo xtask pack` packs it and driven through
//! `dispatch` as Juju drives a sidecar, with a Pebble double that really runs its plan and a real
//! Synapse (the pinned release, standing in for the official image's Python) as the workload:
//!
//! storage-attached → install → pebble-ready with an empty `/data` (blocked until `server_name`)
//! → the charm writes the config and key and Synapse answers → the relation → create-backup under
//! load → a fresh `/data` (a new deployment) → restore-backup → Synapse serves the same users,
//! rooms, media and signing key.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;

use common::juju::Juju;
use common::pebble::PebbleStandIn;
use common::synapse::{Synapse, SYNAPSE_VERSION};
use xtask::charms::Charm;

const SERVER: &str = "k8s.test";

/// The config the charm writes listens on 8008, as the image does: one pod at a time.
static PORT_8008: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A pod: the charm's unit and the workload container's Pebble, `/data` shared by both.
struct Pod {
    juju: Juju,
    pebble: PebbleStandIn,
    data: std::path::PathBuf,
}

fn pod(dir: &Path, name: &str, server: &s3_server::S3Server) -> Pod {
    let data = dir.join(name).join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Synapse's user (991) must reach /data through the test's private directories
    for d in [dir.join(name), dir.to_path_buf()] {
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let pebble = PebbleStandIn::new(&dir.join(name).join("pebble.socket"));
    pebble.emulate_synapse_image();
    let juju = Juju::packed(Charm::Synapse);
    juju.config("synapse_config", json!(data.join("homeserver.yaml").to_str().unwrap()));
    juju.config("synapse_service", json!(pebble.spec("synapse")));
    juju.config("backup_passphrase", json!(common::PASSPHRASE));
    juju.add_relation("backup:3", "s3-integrator", &["s3-integrator/0"]);
    juju.set_remote_app_data("backup:3", json!(server.databag("synapse-backups", "synapse/prod")));
    Pod { juju, pebble, data }
}

impl Pod {
    fn deploy(&self) {
        for hook in ["data-storage-attached", "install", "synapse-pebble-ready"] {
            let run = self.juju.hook(hook);
            run.assert_ok();
            let (status, message) = run.status();
            assert_eq!(status, "blocked", "{hook}: {message}");
            assert!(message.contains("juju config synapse server_name="), "{message}");
        }
        assert_eq!(
            std::fs::read_dir(&self.data).unwrap().count(),
            0,
            "nothing written without a name"
        );
        self.juju.config("server_name", json!(SERVER));
        let run = self.juju.hook("config-changed");
        run.assert_ok();
        assert_eq!(
            run.status(),
            ("active".into(), String::new()),
            "Synapse's output:\n{}",
            self.pebble.output("synapse")
        );
        assert_eq!(self.juju.state()["workload_version"], SYNAPSE_VERSION);
    }
}

#[test]
fn a_new_deployment_restores_the_old_server_through_the_charm() {
    if !common::synapse::runs_as_other_user() {
        eprintln!("skipped: Synapse runs as uid 991 as in the image, which needs root");
        return;
    }
    let _one_at_a_time = PORT_8008.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let server = s3_server::S3Server::start(s3_server::Kind::S3sFs);
    server.create_bucket("synapse-backups");

    let old = pod(dir.path(), "old", &server);
    old.deploy();
    // what the charm wrote, as Synapse's user needs it
    let config = old.data.join("homeserver.yaml");
    let md = std::fs::metadata(&config).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, 991, 0o640));
    let key = std::fs::metadata(old.data.join(format!("{SERVER}.signing.key"))).unwrap();
    assert_eq!((key.uid(), key.mode() & 0o777), (991, 0o600));
    let pid = old.pebble.pid("synapse").expect("Synapse runs under Pebble");
    assert_eq!(common::synapse::process_ids(pid), (991, 991));
    // the layer asks Pebble to wait patiently for a first start
    assert!(old.pebble.plan().contains("threshold: 10"), "{}", old.pebble.plan());

    let s = Synapse::attach(&config);
    let populated = s.populate(4, 1);
    old.juju.relation_hook("backup:3", "changed", None).assert_ok();
    let (created, live) =
        common::synapse::under_a_writer(&s, &populated, 5, || old.juju.action("create-backup", json!({})));
    created
        .assert_ok()
        .assert_no_secret(&[common::PASSPHRASE, &server.secret_key]);
    assert_eq!(created.failure(), None, "{:?}", created.failure());
    let id = created.result("backup-id").unwrap().to_string();
    // the old pod goes away
    old.pebble.act_and_wait("stop", &["synapse"]);
    drop(old);

    // a new deployment, on an empty volume: the same name, a server of its own at first
    let new = pod(dir.path(), "new", &server);
    new.deploy();
    let fresh = Synapse::attach(&new.data.join("homeserver.yaml"));
    assert_ne!(
        fresh.verify_keys(),
        populated.verify_keys,
        "a new key before the restore"
    );
    new.juju.relation_hook("backup:3", "changed", None).assert_ok();
    let listed = new.juju.action("list-backups", json!({}));
    listed.assert_ok();
    assert!(listed.results().to_string().contains(&id), "{}", listed.results());

    let restored = new.juju.action("restore-backup", json!({"backup-id": id}));
    restored
        .assert_ok()
        .assert_no_secret(&[common::PASSPHRASE, &server.secret_key]);
    assert_eq!(
        restored.failure(),
        None,
        "{:?}\nSynapse's output:\n{}",
        restored.failure(),
        new.pebble.output("synapse")
    );
    assert_eq!(restored.status().0, "active");
    let events = new.pebble.events();
    assert!(
        events.ends_with(&["stop synapse".to_string(), "start synapse".to_string()]),
        "{events:?}"
    );
    // everything up to the backup: the populated messages, then some of those sent during it
    let session = fresh.login(&populated.user, &populated.password).unwrap();
    let served = fresh.messages(&session, &populated.room_id, 500).unwrap();
    assert!(served.starts_with(&populated.messages), "{served:?}");
    assert!(
        live.starts_with(&served[populated.messages.len()..]),
        "{served:?} / {live:?}"
    );
    let mut populated = populated;
    populated.messages = served;
    populated.assert_served_by(&fresh);

    // the next hook re-plans (a container restart loses Pebble's layers) and stays active
    let again = new.juju.hook("update-status");
    again.assert_ok();
    assert_eq!(again.status().0, "active");
    populated.assert_served_by(&fresh);
}

/// A changed server_name after the first start is refused: it would change the server's identity.
#[test]
fn a_changed_server_name_is_refused_and_nothing_changes() {
    if !common::synapse::runs_as_other_user() {
        eprintln!("skipped: Synapse runs as uid 991 as in the image, which needs root");
        return;
    }
    let _one_at_a_time = PORT_8008.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let server = s3_server::S3Server::start(s3_server::Kind::S3sFs);
    server.create_bucket("synapse-backups");
    let p = pod(dir.path(), "pod", &server);
    p.deploy();
    let config = std::fs::read(p.data.join("homeserver.yaml")).unwrap();
    p.juju.config("server_name", json!("other.test"));
    let run = p.juju.hook("config-changed");
    run.assert_ok();
    let (status, message) = run.status();
    assert_eq!(status, "blocked");
    assert!(message.contains("would change the server's identity"), "{message}");
    assert_eq!(std::fs::read(p.data.join("homeserver.yaml")).unwrap(), config);
    assert!(Synapse::attach(&p.data.join("homeserver.yaml")).is_up());
}
