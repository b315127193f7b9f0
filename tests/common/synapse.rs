//! A real Synapse (the pinned release in `${SYNAPSE_VENV:-/opt/synapse-venv}`, installed by
//! `.ci/install-test-deps.sh`) for tests that claim "Synapse works after the restore".
//!
//! [`Synapse::lay_out`] writes a minimal SQLite config in one of two layouts (the official image's
//! `/data`, owned by uid 991; Debian's `/etc/matrix-synapse` + `/var/lib/matrix-synapse`, owned by
//! `matrix-synapse`) and has Synapse generate its signing key. [`Synapse::start`] runs
//! `python -m synapse.app.homeserver` as that user (through `setpriv` when the test runs as root,
//! as the current user otherwise: see [`runs_as_other_user`]) on a free loopback port and waits
//! for `GET /health`. The client calls go through `tests/synapse_api.py` (stdlib Python), each
//! printing JSON; [`Synapse::populate`] makes a user, a room, messages and media, and
//! [`Populated::assert_served_by`] checks a Synapse still serves all of it.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// The release `.ci/install-test-deps.sh` pins.
pub const SYNAPSE_VERSION: &str = "1.163.2";
/// How long [`Synapse::start`] waits for `/health` (a start takes about 2 s here, more on a
/// loaded 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long [`Synapse::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The virtualenv Synapse is installed in.
pub fn venv() -> PathBuf {
    std::env::var_os("SYNAPSE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/synapse-venv"))
}

/// The virtualenv's interpreter (it also runs `tests/synapse_api.py`).
pub fn python() -> PathBuf {
    let python = venv().join("bin/python");
    assert!(
        python.exists(),
        "no Synapse virtualenv at {}: run .ci/install-test-deps.sh (or set SYNAPSE_VENV)",
        venv().display()
    );
    python
}

/// Whether Synapse runs as a user of its own (the test runs as root, as CI does) rather than as
/// the test's user; tests of ownership are only meaningful when it does.
pub fn runs_as_other_user() -> bool {
    rustix::process::geteuid().is_root()
}

/// Where Synapse's files are, as the official image or Debian's package lays them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `<dir>/data` as the image's `/data`: `homeserver.yaml`, `<server>.signing.key`,
    /// `<server>.log.config`, `homeserver.db`, `media_store/`; all owned by uid/gid 991 (user
    /// `synapse`).
    Image,
    /// `<dir>/etc/matrix-synapse/{homeserver.yaml,conf.d/,log.yaml,homeserver.signing.key}` and
    /// `<dir>/var/lib/matrix-synapse/{homeserver.db,media/}`, run as `matrix-synapse` (group
    /// `nogroup`, as Debian's `adduser --system` makes it). As in the package, the directories
    /// and what Synapse writes are the user's, the config files root's.
    Debian,
}

impl Layout {
    fn user(self) -> &'static str {
        match self {
            Layout::Image => "synapse",
            Layout::Debian => "matrix-synapse",
        }
    }
}

/// A user's uid and gid, from `id`.
pub fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).arg(user).output().expect("id runs");
        assert!(
            out.status.success(),
            "no user {user}: run .ci/install-test-deps.sh as root ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// A process's real uid and gid, from `/proc/<pid>/status`.
pub fn process_ids(pid: u32) -> (u32, u32) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u32 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("Uid:"), field("Gid:"))
}

/// Ports handed out by this test binary (tests run in parallel; the OS could give the same free
/// port twice between the probe and Synapse's bind).
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn free_port() -> u16 {
    let mut ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let ports = ports.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if ports.insert(port) {
            return port;
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom").unwrap().read_exact(&mut buf).unwrap();
    hex::encode(buf)
}

/// A YAML scalar for a path or string (YAML reads JSON strings).
fn y(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

fn p(path: &Path) -> String {
    y(path.to_str().expect("UTF-8 test paths"))
}

/// Rate limits high enough that no test is throttled (Synapse's defaults let 10 messages
/// through, then one every 5 s).
const RATE_LIMITS: &str = "\
rc_message: {per_second: 10000, burst_count: 10000}
rc_registration: {per_second: 10000, burst_count: 10000}
rc_registration_token_validity: {per_second: 10000, burst_count: 10000}
rc_login:
  address: {per_second: 10000, burst_count: 10000}
  account: {per_second: 10000, burst_count: 10000}
  failed_attempts: {per_second: 10000, burst_count: 10000}
rc_joins:
  local: {per_second: 10000, burst_count: 10000}
  remote: {per_second: 10000, burst_count: 10000}
rc_joins_per_room: {per_second: 10000, burst_count: 10000}
rc_invites:
  per_room: {per_second: 10000, burst_count: 10000}
  per_user: {per_second: 10000, burst_count: 10000}
  per_issuer: {per_second: 10000, burst_count: 10000}
rc_room_creation: {per_second: 10000, burst_count: 10000}
rc_media_create: {per_second: 10000, burst_count: 10000}
rc_admin_redaction: {per_second: 10000, burst_count: 10000}
rc_3pid_validation: {per_second: 10000, burst_count: 10000}
rc_key_requests: {per_second: 10000, burst_count: 10000}
rc_presence:
  per_user: {per_second: 10000, burst_count: 10000}
rc_profile: {per_second: 10000, burst_count: 10000}
rc_user_directory: {per_second: 10000, burst_count: 10000}
rc_reports: {per_second: 10000, burst_count: 10000}
rc_delayed_event_mgmt: {per_second: 10000, burst_count: 10000}
";

/// Synapse's log: WARNING and up to stderr (which the harness captures to a file).
const LOG_CONFIG: &str = "\
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  console:
    class: logging.StreamHandler
    formatter: precise
root:
  level: WARNING
  handlers: [console]
disable_existing_loggers: false
";

/// One Synapse homeserver laid out in a test's directory. Dropping it kills the process
/// (SIGKILL: call [`Synapse::stop`] for a clean shutdown).
pub struct Synapse {
    layout: Layout,
    dir: PathBuf,
    server_name: String,
    uid: u32,
    gid: u32,
    port: u16,
    shared_secret: String,
    macaroon_secret: String,
    form_secret: String,
    config: PathBuf,
    conf_d: Option<PathBuf>,
    data_dir: PathBuf,
    db: PathBuf,
    media: PathBuf,
    signing_key: PathBuf,
    log_config: PathBuf,
    log: PathBuf,
    /// where this start's output begins in `log`
    log_from: u64,
    child: Option<Child>,
    /// see [`Synapse::set_stop_with_thread`]
    stop_with_thread: bool,
}

impl Synapse {
    /// A Synapse that something else runs (the charm, through Pebble) from the config at
    /// `config`: the harness only talks to it, and never starts or stops it. Its port, secret
    /// and paths come from the config.
    pub fn attach(config: &Path) -> Synapse {
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&fs::read_to_string(config).unwrap()).unwrap();
        let text = |k: &str| {
            yaml[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} in {}", config.display()))
                .to_string()
        };
        let port = yaml["listeners"][0]["port"].as_u64().unwrap() as u16;
        let data_dir = config.parent().unwrap().to_path_buf();
        let (uid, gid) = user_ids("synapse");
        Synapse {
            layout: Layout::Image,
            dir: data_dir.clone(),
            server_name: text("server_name"),
            uid,
            gid,
            port,
            shared_secret: text("registration_shared_secret"),
            macaroon_secret: text("macaroon_secret_key"),
            form_secret: text("form_secret"),
            config: config.to_path_buf(),
            conf_d: None,
            db: PathBuf::from(yaml["database"]["args"]["database"].as_str().unwrap()),
            media: PathBuf::from(text("media_store_path")),
            signing_key: PathBuf::from(text("signing_key_path")),
            log_config: data_dir.join("no-log-config"),
            log: data_dir.join("attached-synapse.log"),
            data_dir,
            log_from: 0,
            child: None,
            stop_with_thread: true,
        }
    }

    /// Writes the config for `server_name` under `dir` (which must exist; it is made 0755 so that
    /// Synapse's user can reach its files, since tempfile makes 0700 directories) and has Synapse
    /// generate the signing key as its user. The database and media store appear at the first
    /// start, made by Synapse.
    pub fn lay_out(dir: &Path, server_name: &str, layout: Layout) -> Synapse {
        let dir = dir.canonicalize().unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid) = if runs_as_other_user() {
            let ids = user_ids(layout.user());
            assert_traversable(&dir, ids);
            ids
        } else {
            (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw())
        };
        let (data_dir, config, conf_d, signing_key, log_config, db, media) = match layout {
            Layout::Image => {
                let data = dir.join("data");
                (
                    data.clone(),
                    data.join("homeserver.yaml"),
                    None,
                    data.join(format!("{server_name}.signing.key")),
                    data.join(format!("{server_name}.log.config")),
                    data.join("homeserver.db"),
                    data.join("media_store"),
                )
            }
            Layout::Debian => {
                let etc = dir.join("etc/matrix-synapse");
                let lib = dir.join("var/lib/matrix-synapse");
                (
                    lib.clone(),
                    etc.join("homeserver.yaml"),
                    Some(etc.join("conf.d")),
                    etc.join("homeserver.signing.key"),
                    etc.join("log.yaml"),
                    lib.join("homeserver.db"),
                    lib.join("media"),
                )
            }
        };
        let s = Synapse {
            layout,
            server_name: server_name.to_string(),
            uid,
            gid,
            port: free_port(),
            shared_secret: random_hex(16),
            macaroon_secret: random_hex(16),
            form_secret: random_hex(16),
            config,
            conf_d,
            data_dir,
            db,
            media,
            signing_key,
            log_config,
            log: dir.join("synapse-output.log"),
            log_from: 0,
            dir,
            child: None,
            stop_with_thread: true,
        };
        s.write_files();
        s.generate_keys();
        s
    }

    fn write_files(&self) {
        // Synapse's user owns its directories (the image's /data; Debian's statoverride on
        // /etc/matrix-synapse and /var/lib/matrix-synapse)
        let user_dir = |d: &Path| {
            fs::create_dir_all(d).unwrap();
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
            self.chown(d);
        };
        match self.layout {
            Layout::Image => {
                user_dir(&self.data_dir);
                self.write_owned(&self.config, &self.main_config(true));
                self.write_owned(&self.log_config, LOG_CONFIG);
            }
            Layout::Debian => {
                for d in ["etc", "var", "var/lib"] {
                    fs::create_dir_all(self.dir.join(d)).unwrap();
                }
                user_dir(self.config.parent().unwrap());
                user_dir(&self.data_dir);
                // the package's files (root's, 0644): homeserver.yaml, log.yaml, and the
                // debconf answers in conf.d/
                let conf_d = self.conf_d.as_ref().unwrap();
                fs::create_dir_all(conf_d).unwrap();
                self.write_config_file(&self.config, &self.main_config(false));
                self.write_config_file(&self.log_config, LOG_CONFIG);
                self.write_config_file(
                    &conf_d.join("server_name.yaml"),
                    &format!("server_name: {}\n", y(&self.server_name)),
                );
                self.write_config_file(&conf_d.join("report_stats.yaml"), "report_stats: false\n");
            }
        }
    }

    /// homeserver.yaml; `with_name`: server_name and report_stats in it (the image) rather than
    /// in conf.d (Debian).
    fn main_config(&self, with_name: bool) -> String {
        let mut c = String::from("# written by tests/common/synapse.rs\n");
        if with_name {
            c += &format!("server_name: {}\nreport_stats: false\n", y(&self.server_name));
        }
        c += &format!(
            "\
listeners:
  - port: {port}
    type: http
    tls: false
    x_forwarded: false
    bind_addresses: ['127.0.0.1']
    resources:
      - names: [client, federation]
        compress: false
database:
  name: sqlite3
  args:
    database: {db}
log_config: {log_config}
media_store_path: {media}
signing_key_path: {key}
macaroon_secret_key: {macaroon}
form_secret: {form}
registration_shared_secret: {shared}
enable_registration: false
suppress_key_server_warning: true
trusted_key_servers: []
url_preview_enabled: false
dynamic_thumbnails: false
presence:
  enabled: false
{RATE_LIMITS}",
            port = self.port,
            db = p(&self.db),
            log_config = p(&self.log_config),
            media = p(&self.media),
            key = p(&self.signing_key),
            macaroon = y(&self.macaroon_secret),
            form = y(&self.form_secret),
            shared = y(&self.shared_secret),
        );
        c
    }

    /// Rewrites the listener's port (in homeserver.yaml in both layouts).
    fn set_port(&mut self, port: u16) {
        let old = format!("  - port: {}\n", self.port);
        let text = fs::read_to_string(&self.config).unwrap();
        assert!(
            text.contains(&old),
            "the listener's port is gone from {}",
            self.config.display()
        );
        let text = text.replacen(&old, &format!("  - port: {port}\n"), 1);
        let mode = fs::metadata(&self.config).unwrap().permissions();
        fs::write(&self.config, text).unwrap();
        fs::set_permissions(&self.config, mode).unwrap();
        self.port = port;
    }

    fn write_owned(&self, path: &Path, text: &str) {
        self.write_config_file(path, text);
        self.chown(path);
    }

    fn write_config_file(&self, path: &Path, text: &str) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn chown(&self, path: &Path) {
        if runs_as_other_user() {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
        }
    }

    /// `--generate-keys`, as Debian's unit runs it before each start: Synapse writes the signing
    /// key (mode 0640) as its user.
    fn generate_keys(&self) {
        let out = self
            .command_as_user(python())
            .args(["-m", "synapse.app.homeserver"])
            .args(self.config_args())
            .arg("--generate-keys")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success() && self.signing_key.is_file(),
            "synapse --generate-keys: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `program` run as Synapse's user (through setpriv when the test runs as root), with
    /// umask 022 as under Docker and systemd, and a clean environment.
    pub fn command_as_user(&self, program: impl AsRef<OsStr>) -> Command {
        self.user_command(program.as_ref(), false)
    }

    /// `pdeathsig`: SIGTERM to the program when the thread that started it ends without reaping
    /// it (a test binary killed mid-test); setpriv sets it after changing users, which would
    /// clear it.
    fn user_command(&self, program: &OsStr, pdeathsig: bool) -> Command {
        let mut cmd = if runs_as_other_user() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                &self.uid.to_string(),
                "--regid",
                &self.gid.to_string(),
                "--clear-groups",
            ]);
            if pdeathsig {
                c.args(["--pdeathsig", "TERM"]);
            }
            c.arg("--").arg(program);
            c
        } else {
            Command::new(program)
        };
        let as_self = !runs_as_other_user() && pdeathsig;
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .current_dir(&self.data_dir);
        // SAFETY: umask and prctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(0o022);
                if as_self {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                }
                Ok(())
            });
        }
        cmd
    }

    /// Synapse's `-c` arguments (Debian: the file, then conf.d).
    pub fn config_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for path in self.config_paths() {
            args.push("-c".to_string());
            args.push(path.to_str().unwrap().to_string());
        }
        args
    }

    /// Starts Synapse and waits until it answers `/health`; panics with its log's tail if it
    /// does not. A port taken meanwhile by another test is replaced by a free one.
    pub fn start(&mut self) {
        for attempt in 0.. {
            self.spawn();
            match self.wait_healthy(START_TIMEOUT) {
                Ok(()) => return,
                Err(e) if attempt < 3 && self.log_since_start().contains("Address already in use") => {
                    eprintln!("synapse: port {} taken ({e}), another one", self.port);
                    self.kill();
                    self.set_port(free_port());
                }
                Err(e) => {
                    self.kill();
                    panic!(
                        "Synapse ({:?} layout in {}) did not start: {e}",
                        self.layout,
                        self.dir.display()
                    );
                }
            }
        }
    }

    /// By default Synapse gets SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG),
    /// so that a test binary killed mid-test leaves no Synapse behind. A Synapse started from a
    /// thread that ends before it should (a tokio blocking thread in a service stand-in, say)
    /// needs `false` here; then only [`Drop`] stops it.
    pub fn set_stop_with_thread(&mut self, yes: bool) {
        self.stop_with_thread = yes;
    }

    /// Launches Synapse without waiting (see [`Synapse::wait_healthy`]). Its stdout and stderr
    /// are appended to [`Synapse::log_path`].
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "Synapse is already running");
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let from = log.seek(SeekFrom::End(0)).unwrap();
        writeln!(log, "---- synapse-harness: start on port {} ----", self.port).unwrap();
        self.log_from = from;
        let mut cmd = self.user_command(python().as_os_str(), self.stop_with_thread);
        let child = cmd
            .args(["-m", "synapse.app.homeserver"])
            .args(self.config_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("Synapse's python runs");
        self.child = Some(child);
    }

    /// Waits until `/health` answers 200, or Synapse exits, or `timeout` passes; the error
    /// carries the reason and the log's tail.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    self.child = None;
                    return Err(format!("Synapse exited ({status}); its log:\n{}", self.log_tail(40)));
                }
            }
            if self.is_up() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no answer on {}/health within {timeout:?}; its log:\n{}",
                    self.base_url(),
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether something answers 200 on the listener's `/health` (this Synapse, or one started
    /// by the code under test with the same config).
    pub fn is_up(&self) -> bool {
        matches!(http_get(self.port, "/health"), Ok((200, _)))
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`STOP_TIMEOUT`]); Synapse's exit status.
    /// Nothing to do if it is not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                eprintln!("synapse: no exit {STOP_TIMEOUT:?} after SIGTERM, SIGKILL");
                let _ = child.kill();
                return Some(child.wait().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would (no clean shutdown), and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running Synapse's pid (setpriv execs it, so this is Synapse's python).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
    pub fn server_name(&self) -> &str {
        &self.server_name
    }
    /// The uid and gid Synapse runs as.
    pub fn ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn registration_shared_secret(&self) -> &str {
        &self.shared_secret
    }
    /// The directory given to [`Synapse::lay_out`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// homeserver.yaml.
    pub fn config_path(&self) -> &Path {
        &self.config
    }
    /// What Synapse reads: homeserver.yaml, and conf.d in the Debian layout.
    pub fn config_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.config.clone()];
        paths.extend(self.conf_d.clone());
        paths
    }
    /// The same, comma-separated, as `synapse-backup --synapse-config` takes it.
    pub fn config_arg(&self) -> String {
        let paths: Vec<String> = self
            .config_paths()
            .iter()
            .map(|p| p.to_str().unwrap().to_string())
            .collect();
        paths.join(",")
    }
    /// The directory holding the database (the image's /data, Debian's /var/lib/matrix-synapse).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn db_path(&self) -> &Path {
        &self.db
    }
    pub fn media_path(&self) -> &Path {
        &self.media
    }
    pub fn signing_key_path(&self) -> &Path {
        &self.signing_key
    }
    /// Synapse's stdout and stderr, every start appended.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What Synapse printed since the last start.
    pub fn log_since_start(&self) -> String {
        let mut f = match fs::File::open(&self.log) {
            Ok(f) => f,
            Err(_) => return String::new(),
        };
        f.seek(SeekFrom::Start(self.log_from)).unwrap();
        let mut s = Vec::new();
        f.read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    }

    /// The last `lines` lines Synapse printed since the last start.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_since_start();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `tests/synapse_api.py` with `args` (BASE is inserted first where the subcommand
    /// takes it: pass only what follows). Its JSON, or the HTTP error Synapse answered.
    pub fn api(&self, cmd: &str, args: &[&str]) -> Result<Value, ApiError> {
        let base = self.base_url();
        let mut full = vec![cmd];
        if cmd != "png" {
            full.push(&base);
        }
        full.extend_from_slice(args);
        api(&full)
    }

    /// Registers `user` through the shared-secret admin API.
    pub fn register(&self, user: &str, password: &str) -> Session {
        let v = self.api("register", &[&self.shared_secret, user, password]).unwrap();
        Session::from_json(&v)
    }

    /// Password login; the error when Synapse refuses it.
    pub fn login(&self, user: &str, password: &str) -> Result<Session, ApiError> {
        self.api("login", &[user, password]).map(|v| Session::from_json(&v))
    }

    /// The user an access token belongs to.
    pub fn whoami(&self, token: &str) -> Result<String, ApiError> {
        self.api("whoami", &[token])
            .map(|v| v["user_id"].as_str().unwrap().to_string())
    }

    pub fn create_room(&self, s: &Session, name: &str) -> String {
        let v = self.api("create-room", &[&s.access_token, name]).unwrap();
        v["room_id"].as_str().unwrap().to_string()
    }

    /// Sends text messages, in order; their event ids.
    pub fn send(&self, s: &Session, room: &str, bodies: &[&str]) -> Vec<String> {
        let mut args = vec![s.access_token.as_str(), room];
        args.extend_from_slice(bodies);
        let v = self.api("send", &args).unwrap();
        strings(&v["event_ids"])
    }

    /// The room's latest `limit` events' message bodies, oldest first.
    pub fn messages(&self, s: &Session, room: &str, limit: usize) -> Result<Vec<String>, ApiError> {
        self.api("messages", &[&s.access_token, room, &limit.to_string()])
            .map(|v| strings(&v["bodies"]))
    }

    /// Uploads bytes; the mxc URI.
    pub fn upload(&self, s: &Session, data: &[u8], content_type: &str) -> String {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), data).unwrap();
        let v = self
            .api(
                "upload",
                &[&s.access_token, file.path().to_str().unwrap(), content_type],
            )
            .unwrap();
        v["content_uri"].as_str().unwrap().to_string()
    }

    /// Downloads media (authenticated, `/_matrix/client/v1/media/download`).
    pub fn download(&self, s: &Session, mxc: &str) -> Result<Fetched, ApiError> {
        self.api("download", &[&s.access_token, mxc])
            .map(|v| Fetched::from_json(&v))
    }

    /// Fetches a thumbnail (`/_matrix/client/v1/media/thumbnail`; method "crop" or "scale").
    pub fn thumbnail(
        &self,
        s: &Session,
        mxc: &str,
        width: u32,
        height: u32,
        method: &str,
    ) -> Result<Fetched, ApiError> {
        self.api(
            "thumbnail",
            &[&s.access_token, mxc, &width.to_string(), &height.to_string(), method],
        )
        .map(|v| Fetched::from_json(&v))
    }

    /// The server's verify keys (`/_matrix/key/v2/server`): key id → base64 public key.
    pub fn verify_keys(&self) -> BTreeMap<String, String> {
        let v = self.api("server-key", &[]).unwrap();
        assert_eq!(v["server_name"], self.server_name.as_str());
        serde_json::from_value(v["verify_keys"].clone()).unwrap()
    }

    /// A user `alice`, a private room with `messages` text messages, `media` PNG uploads (320x240,
    /// so Synapse makes 32x32 and 96x96 crops and a 320x240 scale), a thumbnail fetched for each;
    /// what a test checks afterwards.
    pub fn populate(&self, messages: usize, media: usize) -> Populated {
        self.populate_as("alice", messages, media)
    }

    pub fn populate_as(&self, user: &str, messages: usize, media: usize) -> Populated {
        let password = format!("{user}'s password {}", random_hex(4));
        let v = self
            .api(
                "populate",
                &[
                    &self.shared_secret,
                    user,
                    &password,
                    &messages.to_string(),
                    &media.to_string(),
                ],
            )
            .unwrap_or_else(|e| panic!("populate: {e}\nSynapse's log:\n{}", self.log_tail(40)));
        serde_json::from_value(v).unwrap()
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fails early, with the reason, when Synapse's user could not reach `dir`.
fn assert_traversable(dir: &Path, (uid, gid): (u32, u32)) {
    for d in dir.ancestors() {
        let m = fs::metadata(d).unwrap();
        let mode = m.mode();
        let ok = (m.uid() == uid && mode & 0o100 != 0) || (m.gid() == gid && mode & 0o010 != 0) || mode & 0o001 != 0;
        assert!(
            ok,
            "uid {uid} cannot reach {} (mode {:o} on {}): put the test's directory elsewhere",
            dir.display(),
            mode & 0o7777,
            d.display()
        );
    }
}

/// GET over HTTP/1.0 on loopback: status and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let status_line = String::from_utf8_lossy(&response[..head_end])
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    Ok((status, response[head_end + 4..].to_vec()))
}

/// An HTTP error Synapse answered (`status` None: the client failed otherwise).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: Option<u16>,
    pub errcode: Option<String>,
    pub error: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s} {}: {}", self.errcode.as_deref().unwrap_or("-"), self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

/// `tests/synapse_api.py` with `args` (the subcommand first); its JSON output.
pub fn api(args: &[&str]) -> Result<Value, ApiError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/synapse_api.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => Ok(serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("synapse_api.py {args:?}: not JSON ({e}): {stdout}"))),
        Some(2) => {
            let v: Value = serde_json::from_str(&stdout).unwrap();
            Err(ApiError {
                status: v["status"].as_u64().map(|s| s as u16),
                errcode: v["errcode"].as_str().map(str::to_string),
                error: v["error"].as_str().unwrap_or_default().to_string(),
            })
        }
        _ => Err(ApiError {
            status: None,
            errcode: None,
            error: format!(
                "synapse_api.py {} failed ({}): {}",
                args.first().unwrap_or(&""),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub access_token: String,
}

impl Session {
    fn from_json(v: &Value) -> Session {
        Session {
            user_id: v["user_id"].as_str().unwrap().to_string(),
            access_token: v["access_token"].as_str().unwrap().to_string(),
        }
    }
}

/// Downloaded media or thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub sha256: String,
    pub size: u64,
    pub content_type: Option<String>,
}

impl Fetched {
    fn from_json(v: &Value) -> Fetched {
        Fetched {
            sha256: v["sha256"].as_str().unwrap().to_string(),
            size: v["size"].as_u64().unwrap(),
            content_type: v["content_type"].as_str().map(str::to_string),
        }
    }
}

/// One upload of [`Synapse::populate`].
#[derive(Debug, Clone, Deserialize)]
pub struct Media {
    /// mxc://server/media_id
    pub mxc: String,
    pub sha256: String,
    pub size: u64,
    /// the 32x32 crop Synapse served right after the upload
    pub thumbnail_sha256: String,
}

/// What [`Synapse::populate`] made.
#[derive(Debug, Clone, Deserialize)]
pub struct Populated {
    pub user_id: String,
    pub user: String,
    pub password: String,
    /// the token registration gave (valid as long as the database is)
    pub access_token: String,
    pub room_id: String,
    /// the bodies sent, in order
    pub messages: Vec<String>,
    pub media: Vec<Media>,
    /// key id → base64 public key, from /_matrix/key/v2/server
    pub verify_keys: BTreeMap<String, String>,
}

impl Populated {
    pub fn session(&self) -> Session {
        Session {
            user_id: self.user_id.clone(),
            access_token: self.access_token.clone(),
        }
    }

    /// Panics unless `synapse` serves everything populated: the same verify keys (signing key),
    /// the old access token and a password login (database), the room's messages in order, every
    /// upload's bytes and its 32x32 thumbnail (media store).
    pub fn assert_served_by(&self, synapse: &Synapse) {
        let tail = || synapse.log_tail(40);
        assert_eq!(synapse.verify_keys(), self.verify_keys, "verify keys (the signing key)");
        assert_eq!(
            synapse
                .whoami(&self.access_token)
                .unwrap_or_else(|e| panic!("the old token: {e}\n{}", tail())),
            self.user_id
        );
        let fresh = synapse
            .login(&self.user, &self.password)
            .unwrap_or_else(|e| panic!("password login: {e}\n{}", tail()));
        assert_eq!(fresh.user_id, self.user_id);
        let bodies = synapse
            .messages(&fresh, &self.room_id, self.messages.len() + 20)
            .unwrap_or_else(|e| panic!("messages: {e}\n{}", tail()));
        assert_eq!(bodies, self.messages, "the room's messages");
        for m in &self.media {
            let got = synapse
                .download(&fresh, &m.mxc)
                .unwrap_or_else(|e| panic!("download {}: {e}\n{}", m.mxc, tail()));
            assert_eq!(
                (got.sha256.as_str(), got.size),
                (m.sha256.as_str(), m.size),
                "{}",
                m.mxc
            );
            let thumb = synapse
                .thumbnail(&fresh, &m.mxc, 32, 32, "crop")
                .unwrap_or_else(|e| panic!("thumbnail {}: {e}\n{}", m.mxc, tail()));
            assert_eq!(thumb.sha256, m.thumbnail_sha256, "{}'s thumbnail", m.mxc);
        }
    }
}

/// Messages sent on another thread while `during` runs (at most `max`: a server with Synapse's
/// default rate limits takes about ten at once): what `during` returned, and the messages sent.
pub fn under_a_writer<T>(s: &Synapse, p: &Populated, max: usize, during: impl FnOnce() -> T) -> (T, Vec<String>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let (base, token, room) = (s.base_url(), p.access_token.clone(), p.room_id.clone());
    let stop = done.clone();
    let writer = std::thread::spawn(move || {
        let mut sent = Vec::new();
        for i in 0..max {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let body = format!("live message {i}");
            api(&["send", &base, &token, &room, &body]).expect("Synapse takes the message");
            sent.push(body);
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(300)); // a few messages in before `during` starts
    let out = during();
    done.store(true, Ordering::SeqCst);
    (out, writer.join().unwrap())
}
