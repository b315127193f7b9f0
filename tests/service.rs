//! A restore stops Synapse only once the backup is staged, and starts it again whatever happened:
//! the CLI against a Pebble API stand-in on a unix socket (real HTTP), and with `none` / systemd.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::pebble::PebbleStandIn;
use common::*;

const NEW_KEY: &str = "ed25519 a_new other\n";

struct Server {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
    store: PathBuf,
    id: String,
    /// what the backup holds
    backed_up: std::collections::BTreeMap<String, String>,
    backed_up_key: String,
}

/// A fixture Synapse with one backup, whose live signing key then changed (so a restore shows).
fn server() -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = fixture(&data, "2M", "small");
    let store = tmp.path().join("store");
    let backed_up = backed_up_state(&data);
    let made = cli(&config, &store, &["create"]);
    assert!(made.ok, "{}", made.stderr);
    let id = only_backup(&store);
    let backed_up_key = fs::read_to_string(data.join("example.com.signing.key")).unwrap();
    fs::write(data.join("example.com.signing.key"), NEW_KEY).unwrap();
    Server {
        _tmp: tmp,
        data,
        config,
        store,
        id,
        backed_up,
        backed_up_key,
    }
}

impl Server {
    fn pebble(&self) -> PebbleStandIn {
        PebbleStandIn::start(&self._tmp.path().join("pebble.socket"), &["synapse"])
    }

    fn key(&self) -> String {
        fs::read_to_string(self.data.join("example.com.signing.key")).unwrap_or_default()
    }

    fn restore(&self, service: &str, env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(bin());
        cmd.arg("--synapse-config")
            .arg(&self.config)
            .arg("--store")
            .arg(&self.store)
            .args(["restore", &self.id, "--service", service])
            .env("SYNAPSE_BACKUP_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("the binary runs").into()
    }
}

/// Is a staging directory beside the live data?
fn staging_exists(data: &Path) -> bool {
    fs::read_dir(data)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("synapse-backup-restore"))
}

/// Records, at each stop and start, the live signing key and whether a staging directory (the
/// staged backup before the swap, the replaced data after it) is beside the live data.
fn watch(pebble: &PebbleStandIn, data: &Path) {
    let data = data.to_path_buf();
    pebble.observe(move |action| {
        let key = fs::read_to_string(data.join("example.com.signing.key")).unwrap_or_default();
        let live = if key == NEW_KEY { "live key" } else { "restored key" };
        let staged = if staging_exists(&data) {
            "staging dir"
        } else {
            "no staging dir"
        };
        format!("{action}: {live}, {staged}")
    });
}

#[test]
fn pebble_stops_synapse_after_staging_and_starts_it_after_the_swap() {
    let s = server();
    let pebble = s.pebble();
    watch(&pebble, &s.data);
    pebble.slow_waits(2); // Pebble's wait times out twice before the change is ready
    let r = s.restore(&pebble.spec("synapse"), &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(pebble.events(), ["stop synapse", "start synapse"]);
    assert_eq!(
        pebble.observed(),
        ["stop: live key, staging dir", "start: restored key, staging dir"]
    );
    assert_eq!(pebble.protocol_errors(), 0);
    assert!(
        !staging_exists(&s.data),
        "the replaced data is removed once Synapse runs"
    );
    assert_eq!(backed_up_state(&s.data), s.backed_up);
}

#[test]
fn a_failure_after_the_stop_rolls_back_and_starts_synapse_again() {
    let s = server();
    let before = backed_up_state(&s.data);
    let pebble = s.pebble();
    watch(&pebble, &s.data);
    let r = s.restore(&pebble.spec("synapse"), &[("SYNAPSE_BACKUP_TEST_FAIL_SWAP", "1")]);
    assert!(!r.ok);
    assert!(r.stderr.contains("failure injected"), "{}", r.stderr);
    assert_eq!(pebble.events(), ["stop synapse", "start synapse"]);
    // started again on the previous data, which is all still there
    assert_eq!(pebble.observed()[1], "start: live key, no staging dir");
    assert_eq!(s.key(), NEW_KEY);
    assert_eq!(backed_up_state(&s.data), before);
    assert!(!staging_exists(&s.data));
}

#[test]
fn a_failure_before_the_swap_leaves_synapse_running() {
    let s = server();
    let pebble = s.pebble();
    let mut cmd = Command::new(bin());
    let r: Run = cmd
        .arg("--synapse-config")
        .arg(&s.config)
        .arg("--store")
        .arg(&s.store)
        .args(["restore", &s.id, "--service", &pebble.spec("synapse")])
        .env("SYNAPSE_BACKUP_PASSPHRASE", "not the passphrase")
        .output()
        .unwrap()
        .into();
    assert!(!r.ok && r.stderr.contains("wrong passphrase"), "{}", r.stderr);
    assert!(pebble.events().is_empty(), "{:?}", pebble.events());
    assert_eq!(s.key(), NEW_KEY);
}

#[test]
fn pebbles_own_error_is_reported_when_it_cannot_stop_synapse() {
    let s = server();
    let pebble = s.pebble();
    pebble.fail(
        "stop",
        "cannot perform the following tasks:\n- Stop service \"synapse\" (cannot send signal: permission denied)",
    );
    let r = s.restore(&pebble.spec("synapse"), &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("could not stop Synapse")
            && r.stderr.contains("nothing was restored")
            && r.stderr.contains("cannot send signal: permission denied"),
        "{}",
        r.stderr
    );
    assert_eq!(s.key(), NEW_KEY);
    assert!(!staging_exists(&s.data));
}

#[test]
fn a_start_that_fails_says_so_after_restoring() {
    let s = server();
    let pebble = s.pebble();
    pebble.fail(
        "start",
        "cannot perform the following tasks:\n- Start service \"synapse\" (exited quickly with code 1)",
    );
    let r = s.restore(&pebble.spec("synapse"), &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("restored but Synapse could not be started")
            && r.stderr.contains("exited quickly with code 1"),
        "{}",
        r.stderr
    );
    assert_eq!(pebble.events(), ["stop synapse", "start synapse"]);
    assert_eq!(backed_up_state(&s.data), s.backed_up);
}

#[test]
fn a_service_pebble_does_not_know_is_pebbles_error() {
    let s = server();
    let pebble = s.pebble();
    let r = s.restore(&pebble.spec("matrix"), &[]);
    assert!(!r.ok);
    assert!(r.stderr.contains(r#"service "matrix" does not exist"#), "{}", r.stderr);
    assert!(pebble.events().is_empty());
    assert_eq!(s.key(), NEW_KEY);
}

#[test]
fn no_pebble_listening_restores_nothing() {
    let s = server();
    let missing = s._tmp.path().join("no-such.socket");
    let r = s.restore(&format!("pebble:synapse@{}", missing.display()), &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("could not stop Synapse") && r.stderr.contains("cannot connect"),
        "{}",
        r.stderr
    );
    assert_eq!(s.key(), NEW_KEY);
}

#[test]
fn none_restores_without_touching_any_service() {
    let s = server();
    let r = s.restore("none", &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(backed_up_state(&s.data), s.backed_up);
}

#[test]
fn systemd_runs_systemctl_stop_then_start() {
    let s = server();
    // a systemctl first on PATH that records what it was asked (no systemd in a test container)
    let bin_dir = s._tmp.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    let log = s._tmp.path().join("systemctl.log");
    let script = format!(
        "#!/bin/sh\necho \"$* $(cat {key} | cut -c1-11)\" >> {log}\n",
        key = s.data.join("example.com.signing.key").display(),
        log = log.display()
    );
    let systemctl = bin_dir.join("systemctl");
    fs::write(&systemctl, script).unwrap();
    fs::set_permissions(&systemctl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let r = s.restore("systemd:matrix-synapse.service", &[("PATH", &path)]);
    assert!(r.ok, "{}", r.stderr);
    let original = &s.backed_up_key[..11];
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!("stop -- matrix-synapse.service ed25519 a_n\nstart -- matrix-synapse.service {original}\n")
    );

    // and systemctl's own complaint is what the operator reads
    fs::write(
        &systemctl,
        "#!/bin/sh\necho 'Failed to stop matrix-synapse.service: Access denied' >&2\nexit 4\n",
    )
    .unwrap();
    let r = s.restore("systemd:matrix-synapse.service", &[("PATH", &path)]);
    assert!(!r.ok && r.stderr.contains("Access denied"), "{}", r.stderr);
}

#[test]
fn a_spec_it_cannot_use_is_refused_with_the_forms_it_takes() {
    let s = server();
    let r = s.restore("docker:synapse", &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("pebble:<service>") && r.stderr.contains("systemd:<unit>"),
        "{}",
        r.stderr
    );
}
