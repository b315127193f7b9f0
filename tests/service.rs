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
            // the stand-ins serve no HTTP: the health check has its own tests below
            .env("SYNAPSE_BACKUP_HEALTH_TIMEOUT", "0")
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
fn a_start_that_fails_puts_the_previous_data_back() {
    let s = server();
    let before = backed_up_state(&s.data);
    let pebble = s.pebble();
    pebble.fail(
        "start",
        "cannot perform the following tasks:\n- Start service \"synapse\" (exited quickly with code 1)",
    );
    let r = s.restore(&pebble.spec("synapse"), &[]);
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("the restored data did not start: Synapse could not be started")
            && r.stderr.contains("exited quickly with code 1")
            && r.stderr.contains("the previous data is back"),
        "{}",
        r.stderr
    );
    assert_eq!(
        pebble.events(),
        ["stop synapse", "start synapse", "stop synapse", "start synapse"]
    );
    assert_eq!(backed_up_state(&s.data), before);
    assert!(!staging_exists(&s.data));
}

/// A Synapse's listener: bound and answering `GET /health` while `up` is set, closed otherwise
/// (connections refused, as when Synapse is stopped). The config's listener points at it.
struct HealthStandIn {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HealthStandIn {
    fn serve(config: &Path) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = fs::read_to_string(config).unwrap();
        assert!(yaml.contains("port: 8008"), "{yaml}");
        let yaml = yaml.replace(
            "port: 8008",
            &format!("port: {port}\n    bind_addresses: ['127.0.0.1']"),
        );
        fs::write(config, yaml).unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let serving = up.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut bound: Option<std::net::TcpListener> = None;
            loop {
                match (serving.load(SeqCst), &bound) {
                    (true, None) => {
                        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
                        l.set_nonblocking(true).unwrap();
                        bound = Some(l);
                    }
                    (false, Some(_)) => bound = None,
                    _ => {}
                }
                match bound.as_ref().map(|l| l.accept()) {
                    Some(Ok((mut conn, _))) => {
                        conn.set_nonblocking(false).unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
                    }
                    _ => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        HealthStandIn { up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_synapse_that_does_not_answer_its_health_check_gets_its_previous_data_back() {
    let s = server();
    let before = backed_up_state(&s.data);
    let health = std::sync::Arc::new(HealthStandIn::serve(&s.config));
    let pebble = s.pebble();
    // Synapse answers on the previous data (the changed live key) and never on the restored one
    let (data, h) = (s.data.clone(), health.clone());
    pebble.observe(move |action| {
        let key = fs::read_to_string(data.join("example.com.signing.key")).unwrap_or_default();
        h.set(action == "start" && key == NEW_KEY);
        format!("{action}: {}", if key == NEW_KEY { "previous" } else { "restored" })
    });
    health.set(true);
    let r = s.restore(&pebble.spec("synapse"), &[("SYNAPSE_BACKUP_HEALTH_TIMEOUT", "2")]);
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("the restored data did not start: Synapse did not answer GET /health")
            && r.stderr.contains("within 2s")
            && r.stderr.contains("the previous data is back and Synapse is running"),
        "{}",
        r.stderr
    );
    assert_eq!(
        pebble.observed(),
        ["stop: previous", "start: restored", "stop: restored", "start: previous"]
    );
    assert_eq!(backed_up_state(&s.data), before);
    assert!(!staging_exists(&s.data));
}

#[test]
fn the_previous_data_goes_only_once_synapse_answers() {
    let s = server();
    let health = std::sync::Arc::new(HealthStandIn::serve(&s.config));
    let pebble = s.pebble();
    let (data, h) = (s.data.clone(), health.clone());
    pebble.observe(move |action| {
        h.set(action == "start");
        format!(
            "{action}: {}",
            if staging_exists(&data) {
                "staging dir"
            } else {
                "no staging dir"
            }
        )
    });
    let r = s.restore(&pebble.spec("synapse"), &[("SYNAPSE_BACKUP_HEALTH_TIMEOUT", "10")]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(pebble.observed(), ["stop: staging dir", "start: staging dir"]);
    assert!(!staging_exists(&s.data));
    assert_eq!(backed_up_state(&s.data), s.backed_up);
}

#[test]
fn a_stop_that_does_not_take_changes_nothing() {
    let s = server();
    let before = backed_up_state(&s.data);
    let _health = HealthStandIn::serve(&s.config); // answers whatever Pebble says
    let pebble = s.pebble();
    let r = s.restore(&pebble.spec("synapse"), &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("still answers on http://127.0.0.1:") && r.stderr.contains("nothing was restored"),
        "{}",
        r.stderr
    );
    assert_eq!(pebble.events(), ["stop synapse"]);
    assert_eq!(backed_up_state(&s.data), before);
    assert!(!staging_exists(&s.data));
}

#[test]
fn with_no_service_control_a_running_synapse_is_refused() {
    let s = server();
    let before = backed_up_state(&s.data);
    let _health = HealthStandIn::serve(&s.config);
    let r = s.restore("none", &[]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("Synapse is answering on http://127.0.0.1:")
            && r.stderr.contains("stop it first")
            && r.stderr.contains("--service"),
        "{}",
        r.stderr
    );
    assert_eq!(backed_up_state(&s.data), before);
    assert!(!staging_exists(&s.data));
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
fn none_restores_and_keeps_the_previous_data_until_it_is_dropped() {
    let s = server();
    let r = s.restore("none", &[]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("Synapse was not started") && r.stderr.contains("recover --commit"),
        "{}",
        r.stderr
    );
    assert_eq!(s.key(), s.backed_up_key);
    assert!(staging_exists(&s.data), "the previous data is kept");
    let recover = |args: &[&str]| -> Run {
        Command::new(bin())
            .arg("--synapse-config")
            .arg(&s.config)
            .arg("recover")
            .args(args)
            .output()
            .unwrap()
            .into()
    };
    let checked = recover(&[]);
    assert!(
        checked.ok && checked.stdout.contains("is in place"),
        "{}",
        checked.stdout
    );
    let dropped = recover(&["--commit"]);
    assert!(dropped.ok && dropped.stdout.contains("dropped"), "{}", dropped.stdout);
    assert!(!staging_exists(&s.data));
    assert_eq!(backed_up_state(&s.data), s.backed_up);
    let nothing = recover(&[]);
    assert!(nothing.stdout.contains("nothing to recover"), "{}", nothing.stdout);
}

#[test]
fn none_then_rollback_puts_the_previous_data_back() {
    let s = server();
    let before = backed_up_state(&s.data);
    assert!(s.restore("none", &[]).ok);
    let r: Run = Command::new(bin())
        .arg("--synapse-config")
        .arg(&s.config)
        .args(["recover", "--rollback"])
        .output()
        .unwrap()
        .into();
    assert!(r.ok && r.stdout.contains("put back"), "{} {}", r.stdout, r.stderr);
    assert_eq!(backed_up_state(&s.data), before);
    assert!(!staging_exists(&s.data));
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

#[test]
fn with_no_service_control_a_process_holding_the_database_is_refused() {
    let s = server();
    let before = backed_up_state(&s.data);
    // a Synapse without a reachable listener: a process with homeserver.db open
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('select count(*) from users').fetchall(); print('open', flush=True); time.sleep(60)",
        ])
        .arg(s.data.join("homeserver.db"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut line).unwrap();
    let r = s.restore("none", &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!r.ok);
    assert!(
        r.stderr.contains("homeserver.db is open in process") && r.stderr.contains("python3"),
        "{}",
        r.stderr
    );
    assert_eq!(backed_up_state(&s.data), before);
}
