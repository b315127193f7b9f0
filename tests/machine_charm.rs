//! The machine charm (`synapse-backup`, a subordinate), packed as `cargo xtask pack` packs it and
//! driven through `dispatch`, beside a real Synapse on Debian's layout run as `matrix-synapse`:
//! its defaults find the package's config and unit, create-backup runs under a live writer,
//! the data is lost, restore-backup stops and starts Synapse through `systemctl` (a stand-in:
//! systemd is absent here), and Synapse serves the same users, rooms, media and signing key.

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::sync::{Arc, Mutex};

use serde_json::json;

use common::juju::Juju;
use common::synapse::{Layout, Synapse};
use common::systemd::SystemdStandIn;
use xtask::charms::Charm;

const UNIT: &str = "matrix-synapse.service";

#[test]
fn the_subordinate_backs_up_and_restores_a_debian_synapse() {
    let dir = tempfile::tempdir().unwrap();
    let server = s3_server::S3Server::start(s3_server::Kind::S3sFs);
    server.create_bucket("synapse-backups");
    let home = dir.path().join("machine");
    std::fs::create_dir_all(&home).unwrap();
    // stopped when the thread that started it ends (this one, or the systemctl stand-in's)
    let mut s = Synapse::lay_out(&home, "machine.test", Layout::Debian);
    s.start();
    let populated = s.populate(6, 2);

    let juju = Juju::packed(Charm::SynapseBackup);
    // the package's paths are under the test's directory here; the unit's name is the package's
    juju.config("synapse_config", json!(s.config_arg()));
    assert_eq!(
        juju.state()["config_defaults"]["synapse_service"],
        json!(format!("systemd:{UNIT}")),
        "the machine charm's default is the Debian package's unit"
    );
    juju.config("backup_passphrase", json!(common::PASSPHRASE));
    juju.hook("install").assert_ok();
    juju.add_relation("backup:3", "s3-integrator", &["s3-integrator/0"]);
    juju.set_remote_app_data("backup:3", json!(server.databag("synapse-backups", "synapse/prod")));
    juju.relation_hook("backup:3", "changed", None).assert_ok();
    assert_eq!(juju.hook("update-status").assert_ok().status().0, "active");

    let created = juju.action("create-backup", json!({}));
    created
        .assert_ok()
        .assert_no_secret(&[common::PASSPHRASE, &server.secret_key]);
    assert_eq!(created.failure(), None, "{:?}", created.failure());
    let id = created.result("backup-id").unwrap().to_string();
    let session = populated.session();
    s.send(&session, &populated.room_id, &["sent after the backup"]);

    // the machine is rebuilt: the package's config is back, the data is not
    s.stop();
    std::fs::remove_file(s.signing_key_path()).unwrap();
    for part in ["homeserver.db", "homeserver.db-wal", "homeserver.db-shm"] {
        let _ = std::fs::remove_file(s.data_dir().join(part));
    }
    std::fs::remove_dir_all(s.media_path()).unwrap();
    let synapse = Arc::new(Mutex::new(s));
    let systemd = SystemdStandIn::start(dir.path(), &juju.tools_dir, UNIT, synapse.clone());

    let restored = juju.action("restore-backup", json!({"backup-id": id}));
    restored
        .assert_ok()
        .assert_no_secret(&[common::PASSPHRASE, &server.secret_key]);
    assert_eq!(restored.failure(), None, "{:?}", restored.failure());
    assert_eq!(systemd.events(), [format!("stop {UNIT}"), format!("start {UNIT}")]);
    assert_eq!(restored.status().0, "active");

    let mut s = synapse.lock().unwrap();
    let fresh = s.login(&populated.user, &populated.password).unwrap();
    let served = s.messages(&fresh, &populated.room_id, 500).unwrap();
    assert!(!served.iter().any(|m| m == "sent after the backup"), "{served:?}");
    let mut at_backup = populated.clone();
    at_backup.messages = served;
    at_backup.assert_served_by(&s);
    s.stop();
}
