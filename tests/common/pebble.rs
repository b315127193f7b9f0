//! A Pebble double: Pebble's HTTP API on a unix socket (a real HTTP/1.1 server, hyper on a tokio
//! `UnixListener`) in front of a small service manager that really runs what its plan says.
//!
//! Modelled on canonical/pebble (`internals/daemon/api_*.go`, `internals/plan`,
//! `internals/overlord/{planstate,servstate,checkstate}`), in memory only, as layers added
//! through the API are in Pebble:
//!
//! - `POST /v1/layers` (`add`, `label`, `combine`, `format: yaml`): services, checks and log
//!   targets, `override: replace|merge` with Pebble's merge rules, validated as Pebble does
//!   (a service needs a `command`, a check exactly one of `http`/`tcp`/`exec`, …);
//!   `GET /v1/plan?format=yaml` is the combined plan.
//! - `POST /v1/services` `start|stop|restart|replan|autostart` make async changes whose tasks
//!   really spawn and signal processes: the command split as Pebble splits it (shell words, no
//!   shell, `[ … ]` default arguments), the plan's `environment` over the double's own,
//!   `working-dir`, `user-id`/`group-id`/`user`/`group` (set in the child; HOME and USER from
//!   `/etc/passwd`), its own process group. A start is done once the process has run for the
//!   1 s okay delay, in error if it exits before (`service start attempt: exited quickly with
//!   code N, will restart`, its last output lines in the task's log). A stop is SIGTERM to the
//!   group, SIGKILL after `kill-delay` (5 s). An unexpected exit is handled by `on-success` /
//!   `on-failure` (default `restart`, with Pebble's backoff: `backoff-delay` 500 ms, factor 2,
//!   limit 30 s). `replan` stops and starts what changed and starts every `startup: enabled`
//!   service, as Pebble's `Replan` does.
//! - `GET /v1/services`, `GET /v1/changes[/{id}[/wait?timeout=…]]` (504 when the wait runs out),
//!   `GET /v1/checks`, `GET /v1/system-info`.
//! - Checks (`http`, `tcp`) run from the moment they are planned, `up` with `successes: 0` until
//!   their first period has passed, `down` after `threshold` consecutive failures (and back `up`
//!   on the next success); reaching the threshold runs the `on-check-failure` action of the
//!   services naming the check (`restart`: SIGTERM, then a backoff restart).
//!
//! For the tests: services of [`PebbleStandIn::start`] have no command; starting or stopping one
//! only records it (and calls the observer), as the first stand-in did. [`PebbleStandIn::fail`]
//! makes every change of an action end in error without doing anything, [`PebbleStandIn::slow_waits`]
//! makes waits answer 504 at once, [`PebbleStandIn::map_image_path`] rewrites path prefixes in
//! commands (so a layer written for the official Synapse image runs here). Child processes are
//! killed when the double is dropped, and (`PR_SET_PDEATHSIG`) when the thread that spawned them
//! ends with the test binary.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Pebble's `okayDelay`: a start is successful once the process has run this long.
const OKAY_DELAY: Duration = Duration::from_secs(1);
/// Pebble's `killDelayDefault`: SIGTERM, then SIGKILL after this long.
const KILL_DELAY: Duration = Duration::from_secs(5);
/// Pebble's `failDelay`: after SIGKILL, how long before a stop gives up.
const FAIL_DELAY: Duration = Duration::from_secs(5);
const BACKOFF_DELAY: Duration = Duration::from_millis(500);
const BACKOFF_FACTOR: f64 = 2.0;
const BACKOFF_LIMIT: Duration = Duration::from_secs(30);
const CHECK_PERIOD: Duration = Duration::from_secs(10);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
const CHECK_THRESHOLD: u32 = 3;
/// Pebble's `lastLogLines`: output lines put in a failed start's task log.
const LAST_LOG_LINES: usize = 20;
/// Output lines kept per service.
const OUTPUT_LINES: usize = 1000;
/// What `GET /v1/system-info` reports: the Pebble release this double was checked against.
const VERSION: &str = "v1.32.1-double";

type Observer = Arc<dyn Fn(&str) -> String + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// The double's handle
// ---------------------------------------------------------------------------------------------

pub struct PebbleStandIn {
    pub socket: PathBuf,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A check as `GET /v1/checks` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckState {
    pub status: String,
    pub successes: u32,
    pub failures: u32,
}

impl PebbleStandIn {
    /// Pebble with an empty plan on `socket` (`pebble run --hold`, as Juju runs it in a
    /// workload container: nothing starts until asked). Serves until dropped.
    pub fn new(socket: &Path) -> Self {
        Self::launch(socket, Inner::default())
    }

    /// Serves a plan holding `services` without commands on `socket`: starting or stopping one
    /// only records the request (see [`Self::events`]) and calls the observer. A layer adding a
    /// command to one of them makes it a real service.
    pub fn start(socket: &Path, services: &[&str]) -> Self {
        let mut inner = Inner::default();
        let mut base = Layer {
            label: "base".into(),
            ..Default::default()
        };
        for name in services {
            base.services.insert(
                name.to_string(),
                ServiceConfig {
                    override_: Some("replace".into()),
                    ..Default::default()
                },
            );
            inner.commandless.insert(name.to_string());
        }
        inner.plan = combine(std::slice::from_ref(&base)).expect("the stand-in's base layer combines");
        inner.layers.push(base);
        Self::launch(socket, inner)
    }

    fn launch(socket: &Path, mut inner: Inner) -> Self {
        inner.boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "00000000-0000-0000-0000-000000000000".into());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            observer: Mutex::new(None),
            runtime: runtime.handle().clone(),
        });
        let std_listener = std::os::unix::net::UnixListener::bind(socket).expect("bind the Pebble socket");
        std_listener.set_nonblocking(true).unwrap();
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let sh = shared.clone();
        // Every child is spawned on this thread (its runtime's only one): PR_SET_PDEATHSIG fires
        // when it ends, so it must live as long as the double.
        let thread = std::thread::Builder::new()
            .name("pebble-double".into())
            .spawn(move || {
                runtime.block_on(serve(std_listener, sh, stop));
                drop(runtime);
            })
            .unwrap();
        PebbleStandIn {
            socket: socket.to_path_buf(),
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Called at each request to start, stop, restart or replan, with the action, before the
    /// change runs (on the double's thread: it holds up the double while it runs); what it
    /// returns is kept in [`Self::observed`].
    pub fn observe(&self, f: impl Fn(&str) -> String + Send + Sync + 'static) {
        *self.shared.observer.lock().unwrap() = Some(Arc::new(f));
    }

    /// Makes every change of `action` end in error with `err` (Pebble's `result.err`), doing
    /// nothing to the services.
    pub fn fail(&self, action: &str, err: &str) {
        self.shared.lock().failing.insert(action.into(), err.into());
    }

    /// The next `n` waits answer 504 at once, as Pebble does when its wait timeout runs out.
    pub fn slow_waits(&self, n: usize) {
        self.shared.lock().slow_waits = n;
    }

    /// Rewrites `from` (a path, or a path prefix followed by `/`) to `to` in service commands'
    /// arguments, `working-dir` and environment values when they run here: the image is
    /// emulated, the plan (`GET /v1/plan`) keeps what the layer said.
    pub fn map_image_path(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) {
        let from = from.as_ref().to_string_lossy().trim_end_matches('/').to_string();
        let to = to.as_ref().to_string_lossy().trim_end_matches('/').to_string();
        let mut inner = self.shared.lock();
        inner.image_paths.retain(|(f, _)| *f != from);
        inner.image_paths.push((from, to));
        // longest prefix first
        inner.image_paths.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    }

    /// The official Synapse image's interpreter (`/usr/local/bin/python`, `python3`) is the test
    /// setup's virtualenv (`${SYNAPSE_VENV:-/opt/synapse-venv}`).
    pub fn emulate_synapse_image(&self) {
        let venv = super::synapse::venv();
        self.map_image_path("/usr/local/bin/python", venv.join("bin/python"));
        self.map_image_path("/usr/local/bin/python3", venv.join("bin/python3"));
    }

    /// "stop synapse", "start synapse", … in the order asked ("replan", "autostart" as such).
    pub fn events(&self) -> Vec<String> {
        self.shared.lock().events.clone()
    }

    pub fn observed(&self) -> Vec<String> {
        self.shared.lock().observed.clone()
    }

    /// Requests that broke Pebble's rules (no Host header, a wait without a timeout).
    pub fn protocol_errors(&self) -> usize {
        let s = self.shared.lock();
        s.requests_without_host + s.waits_without_timeout
    }

    /// `pebble:<service>@<socket>` for `--service`.
    pub fn spec(&self, service: &str) -> String {
        format!("pebble:{service}@{}", self.socket.display())
    }

    /// The running process of `service`.
    pub fn pid(&self, service: &str) -> Option<u32> {
        self.shared.lock().services.get(service).and_then(|s| s.pid)
    }

    /// `active`, `inactive`, `backoff` or `error`, as `GET /v1/services` says.
    pub fn current(&self, service: &str) -> String {
        let inner = self.shared.lock();
        inner
            .services
            .get(service)
            .map_or("inactive", |s| s.state.current())
            .to_string()
    }

    /// How many processes of `service` were spawned.
    pub fn starts(&self, service: &str) -> u64 {
        self.shared.lock().services.get(service).map_or(0, |s| s.starts)
    }

    /// What `service`'s processes wrote to stdout and stderr (the last 1000 lines).
    pub fn output(&self, service: &str) -> String {
        let inner = self.shared.lock();
        let Some(svc) = inner.services.get(service) else {
            return String::new();
        };
        let out = svc.output.lock().unwrap_or_else(|e| e.into_inner());
        out.last(OUTPUT_LINES).join("\n")
    }

    /// A planned check's state.
    pub fn check(&self, name: &str) -> Option<CheckState> {
        self.shared.lock().checks.get(name).map(|c| CheckState {
            status: c.status.to_string(),
            successes: c.successes,
            failures: c.failures,
        })
    }

    /// The combined plan, as `GET /v1/plan?format=yaml` gives it.
    pub fn plan(&self) -> String {
        serde_yaml_ng::to_string(&self.shared.lock().plan).unwrap()
    }

    /// The daemon shutdowns Pebble would have done (`on-failure: shutdown` and the like): the
    /// double records them and keeps running.
    pub fn shutdowns(&self) -> Vec<String> {
        self.shared.lock().shutdowns.clone()
    }

    // --- a client, as the charm talks to Pebble -------------------------------------------

    /// One request on the socket: the HTTP status and the JSON answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        call(&self.socket, method, path, body)
    }

    /// `POST /v1/layers`; Pebble's message when it refuses the layer.
    pub fn add_layer(&self, label: &str, yaml: &str, combine: bool) -> Result<(), String> {
        let body = json!({"action": "add", "label": label, "combine": combine, "format": "yaml", "layer": yaml});
        match self.call("POST", "/v1/layers", Some(&body)) {
            (200, v) if v["result"] == json!(true) => Ok(()),
            (_, v) => Err(v["result"]["message"].as_str().unwrap_or("").to_string()),
        }
    }

    /// `POST /v1/services`: the change's id, or Pebble's message.
    pub fn act(&self, action: &str, services: &[&str]) -> Result<String, String> {
        let body = json!({"action": action, "services": services});
        match self.call("POST", "/v1/services", Some(&body)) {
            (202, v) => Ok(v["change"].as_str().unwrap_or("").to_string()),
            (_, v) => Err(v["result"]["message"].as_str().unwrap_or("").to_string()),
        }
    }

    /// `GET /v1/changes/{id}/wait?timeout=…` (a Go duration): the status and the answer.
    pub fn wait(&self, change: &str, timeout: &str) -> (u16, Value) {
        self.call("GET", &format!("/v1/changes/{change}/wait?timeout={timeout}"), None)
    }

    /// [`Self::act`], then waits up to a minute: the change (`status`, `err`, `tasks`).
    pub fn act_and_wait(&self, action: &str, services: &[&str]) -> Value {
        let id = self
            .act(action, services)
            .unwrap_or_else(|e| panic!("{action} {services:?}: {e}"));
        let (status, v) = self.wait(&id, "60s");
        assert_eq!(status, 200, "{v}");
        v["result"].clone()
    }
}

impl Drop for PebbleStandIn {
    fn drop(&mut self) {
        let pids: Vec<u32> = {
            let mut inner = self.shared.lock();
            inner.closing = true;
            inner.services.values().filter_map(|s| s.pid).collect()
        };
        for pid in &pids {
            signal_group(*pid, libc::SIGKILL);
        }
        // wait for them to be reaped (their ports closed) before the next test binds them
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.shared.lock().services.values().any(|s| s.pid.is_some()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One HTTP/1.1 request on a unix socket, as a Pebble client sends it.
pub fn call(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    (status, value)
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Shared {
    inner: Mutex<Inner>,
    observer: Mutex<Option<Observer>>,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `f` on the double's thread after `delay` (unless the double is closing).
fn after(sh: &Arc<Shared>, delay: Duration, f: impl FnOnce(&Arc<Shared>, &mut Inner) + Send + 'static) {
    let sh2 = Arc::clone(sh);
    sh.runtime.spawn(async move {
        tokio::time::sleep(delay).await;
        let mut inner = sh2.lock();
        if !inner.closing {
            f(&sh2, &mut inner);
        }
    });
}

#[derive(Default)]
struct Inner {
    layers: Vec<Layer>,
    plan: Plan,
    /// services of [`PebbleStandIn::start`]: in the plan without a command
    commandless: BTreeSet<String>,
    /// every service started at least once, as Pebble's service manager keeps them
    services: BTreeMap<String, Svc>,
    checks: BTreeMap<String, CheckData>,
    changes: BTreeMap<u64, Change>,
    last_change: u64,
    last_task: u64,
    last_check_run: u64,
    image_paths: Vec<(String, String)>,
    events: Vec<String>,
    observed: Vec<String>,
    failing: BTreeMap<String, String>,
    slow_waits: usize,
    requests_without_host: usize,
    waits_without_timeout: usize,
    shutdowns: Vec<String>,
    closing: bool,
    boot_id: String,
}

// ---------------------------------------------------------------------------------------------
// Layers and the plan (pebble internals/plan/plan.go)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Layer {
    label: String,
    summary: Option<String>,
    description: Option<String>,
    services: BTreeMap<String, ServiceConfig>,
    checks: BTreeMap<String, CheckConfig>,
    log_targets: BTreeMap<String, LogTarget>,
}

/// The combined plan; serialised as `GET /v1/plan` gives it.
#[derive(Clone, Debug, Default, Serialize)]
struct Plan {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    services: BTreeMap<String, ServiceConfig>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    checks: BTreeMap<String, CheckConfig>,
    #[serde(rename = "log-targets", skip_serializing_if = "BTreeMap::is_empty")]
    log_targets: BTreeMap<String, LogTarget>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
struct ServiceConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    startup: Option<String>,
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    override_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    after: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    before: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    requires: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<String>,
    #[serde(deserialize_with = "scalar_map", skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_success: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_failure: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    on_check_failure: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_delay: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_limit: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_delay: Option<GoDuration>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
struct CheckConfig {
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    override_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    startup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<HttpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exec: Option<ExecCheck>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HttpCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(deserialize_with = "scalar_map", skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TcpCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
struct ExecCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_context: Option<String>,
    #[serde(deserialize_with = "scalar_map", skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
}

/// Planned and validated, not forwarded to: the double keeps service output to itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LogTarget {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<String>,
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    override_: Option<String>,
    #[serde(deserialize_with = "scalar_map", skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

/// The layer's text: unknown top-level keys and fields are refused, as Pebble decodes with
/// `KnownFields(true)`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LayerText {
    summary: Option<String>,
    description: Option<String>,
    services: Option<BTreeMap<String, Option<ServiceConfig>>>,
    checks: Option<BTreeMap<String, Option<CheckConfig>>>,
    #[serde(rename = "log-targets")]
    log_targets: Option<BTreeMap<String, Option<LogTarget>>>,
}

/// A `map[string]string` as yaml.v3 decodes one: any scalar is its text.
fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error as _;
    let raw: Option<BTreeMap<String, serde_yaml_ng::Value>> = Option::deserialize(d)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_yaml_ng::Value::String(s) => s,
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                serde_yaml_ng::Value::Bool(b) => b.to_string(),
                serde_yaml_ng::Value::Null => String::new(),
                _ => return Err(D::Error::custom(format!("value of {k:?} is not a string"))),
            };
            Ok((k, text))
        })
        .collect()
}

/// A Go `time.Duration` in YAML: `30s`, `1m30s`, `500ms`; written back as Go writes it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct GoDuration(Duration);

impl Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&go_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            _ => return Err(D::Error::custom("duration must be a YAML string")),
        };
        parse_go_duration(&text)
            .map(GoDuration)
            .map_err(|_| D::Error::custom(format!("invalid duration {text:?}")))
    }
}

fn none_if_empty(s: &mut Option<String>) {
    if s.as_deref() == Some("") {
        *s = None;
    }
}

fn merge_opt<T: Clone>(into: &mut Option<T>, from: &Option<T>) {
    if from.is_some() {
        into.clone_from(from);
    }
}

impl ServiceConfig {
    fn normalise(&mut self) {
        for s in [
            &mut self.summary,
            &mut self.description,
            &mut self.startup,
            &mut self.override_,
            &mut self.command,
            &mut self.workload,
            &mut self.user,
            &mut self.group,
            &mut self.working_dir,
            &mut self.on_success,
            &mut self.on_failure,
        ] {
            none_if_empty(s);
        }
    }

    /// Pebble's `Service.Merge` (`override` itself is not merged).
    fn merge(&mut self, o: &ServiceConfig) {
        merge_opt(&mut self.summary, &o.summary);
        merge_opt(&mut self.description, &o.description);
        merge_opt(&mut self.startup, &o.startup);
        merge_opt(&mut self.command, &o.command);
        merge_opt(&mut self.kill_delay, &o.kill_delay);
        merge_opt(&mut self.user_id, &o.user_id);
        merge_opt(&mut self.user, &o.user);
        merge_opt(&mut self.group_id, &o.group_id);
        merge_opt(&mut self.group, &o.group);
        merge_opt(&mut self.working_dir, &o.working_dir);
        self.after.extend(o.after.iter().cloned());
        self.before.extend(o.before.iter().cloned());
        self.requires.extend(o.requires.iter().cloned());
        merge_opt(&mut self.workload, &o.workload);
        self.environment
            .extend(o.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
        merge_opt(&mut self.on_success, &o.on_success);
        merge_opt(&mut self.on_failure, &o.on_failure);
        self.on_check_failure
            .extend(o.on_check_failure.iter().map(|(k, v)| (k.clone(), v.clone())));
        merge_opt(&mut self.backoff_delay, &o.backoff_delay);
        merge_opt(&mut self.backoff_factor, &o.backoff_factor);
        merge_opt(&mut self.backoff_limit, &o.backoff_limit);
    }
}

impl CheckConfig {
    fn normalise(&mut self) {
        none_if_empty(&mut self.override_);
        none_if_empty(&mut self.level);
        none_if_empty(&mut self.startup);
        if self.threshold == Some(0) {
            self.threshold = None;
        }
        if let Some(h) = &mut self.http {
            none_if_empty(&mut h.url);
        }
        if let Some(t) = &mut self.tcp {
            none_if_empty(&mut t.host);
            if t.port == Some(0) {
                t.port = None;
            }
        }
        if let Some(e) = &mut self.exec {
            none_if_empty(&mut e.command);
            none_if_empty(&mut e.service_context);
        }
    }

    /// Pebble's `Check.Merge`.
    fn merge(&mut self, o: &CheckConfig) {
        merge_opt(&mut self.level, &o.level);
        merge_opt(&mut self.startup, &o.startup);
        merge_opt(&mut self.period, &o.period);
        merge_opt(&mut self.timeout, &o.timeout);
        merge_opt(&mut self.threshold, &o.threshold);
        if let Some(h) = &o.http {
            let into = self.http.get_or_insert_with(Default::default);
            merge_opt(&mut into.url, &h.url);
            into.headers
                .extend(h.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(t) = &o.tcp {
            let into = self.tcp.get_or_insert_with(Default::default);
            merge_opt(&mut into.port, &t.port);
            merge_opt(&mut into.host, &t.host);
        }
        if let Some(e) = &o.exec {
            let into = self.exec.get_or_insert_with(Default::default);
            merge_opt(&mut into.command, &e.command);
            merge_opt(&mut into.service_context, &e.service_context);
            into.environment
                .extend(e.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
            merge_opt(&mut into.user_id, &e.user_id);
            merge_opt(&mut into.user, &e.user);
            merge_opt(&mut into.group_id, &e.group_id);
            merge_opt(&mut into.group, &e.group);
            merge_opt(&mut into.working_dir, &e.working_dir);
        }
    }

    fn kind(&self) -> &'static str {
        if self.http.is_some() {
            "HTTP"
        } else if self.tcp.is_some() {
            "TCP"
        } else if self.exec.is_some() {
            "exec"
        } else {
            "<unknown>"
        }
    }

    fn enabled(&self) -> bool {
        self.startup.as_deref() != Some("disabled")
    }
}

impl LogTarget {
    fn merge(&mut self, o: &LogTarget) {
        merge_opt(&mut self.kind, &o.kind);
        merge_opt(&mut self.location, &o.location);
        self.services.extend(o.services.iter().cloned());
        self.labels.extend(o.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// Pebble's `ParseLayer`: the YAML decoded strictly, then `Layer.Validate`.
fn parse_layer(label: &str, text: &str) -> Result<Layer, String> {
    let bad = |e: serde_yaml_ng::Error| format!("cannot parse layer {label:?}: {e}");
    let parsed: LayerText = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).map_err(bad)? {
        serde_yaml_ng::Value::Null => LayerText::default(),
        _ => serde_yaml_ng::from_str(text).map_err(bad)?,
    };
    let mut layer = Layer {
        label: label.to_string(),
        summary: parsed.summary,
        description: parsed.description,
        ..Default::default()
    };
    for (name, service) in parsed.services.unwrap_or_default() {
        let mut service = service.ok_or_else(|| format!("service object cannot be null for service {name:?}"))?;
        service.normalise();
        layer.services.insert(name, service);
    }
    for (name, check) in parsed.checks.unwrap_or_default() {
        let mut check = check.ok_or_else(|| format!("check object cannot be null for check {name:?}"))?;
        check.normalise();
        layer.checks.insert(name, check);
    }
    for (name, target) in parsed.log_targets.unwrap_or_default() {
        let target = target.ok_or_else(|| format!("log target object cannot be null for log target {name:?}"))?;
        layer.log_targets.insert(name, target);
    }
    validate_layer(&layer)?;
    Ok(layer)
}

fn valid_action(action: &Option<String>, also: &str) -> bool {
    match action.as_deref() {
        None | Some("restart") | Some("shutdown") | Some("ignore") => true,
        Some(a) => a == also,
    }
}

/// Pebble's `Layer.Validate`.
fn validate_layer(layer: &Layer) -> Result<(), String> {
    if layer.label.starts_with("pebble-") {
        return Err(r#"cannot use reserved label prefix "pebble-""#.into());
    }
    for (name, s) in &layer.services {
        if name.is_empty() {
            return Err("cannot use empty string as service name".into());
        }
        if name == "pebble" {
            return Err(format!("cannot use reserved service name {name:?}"));
        }
        if name.starts_with('-') {
            return Err(format!(
                r#"cannot use service name {name:?}: starting with "-" not allowed"#
            ));
        }
        if let Some(command) = &s.command {
            parse_command(command).map_err(|e| {
                format!("plan service {name:?} command invalid: cannot parse service {name:?} command: {e}")
            })?;
        }
        if !valid_action(&s.on_success, "failure-shutdown") {
            return Err(format!(
                "plan service {name:?} on-success action {:?} invalid",
                s.on_success.as_deref().unwrap_or("")
            ));
        }
        if !valid_action(&s.on_failure, "success-shutdown") {
            return Err(format!(
                "plan service {name:?} on-failure action {:?} invalid",
                s.on_failure.as_deref().unwrap_or("")
            ));
        }
        for action in s.on_check_failure.values() {
            if !valid_action(&Some(action.clone()), "success-shutdown") {
                return Err(format!(
                    "plan service {name:?} on-check-failure action {action:?} invalid"
                ));
            }
        }
        if let Some(f) = s.backoff_factor {
            if f < 1.0 {
                return Err(format!(
                    "plan service {name:?} backoff-factor must be 1.0 or greater, not {f}"
                ));
            }
        }
    }
    for (name, c) in &layer.checks {
        if name.is_empty() {
            return Err("cannot use empty string as check name".into());
        }
        if !matches!(c.level.as_deref(), None | Some("alive") | Some("ready")) {
            return Err(format!(r#"plan check {name:?} level must be "alive" or "ready""#));
        }
        if !matches!(c.startup.as_deref(), None | Some("enabled") | Some("disabled")) {
            return Err(format!(
                r#"plan check {name:?} startup must be "enabled" or "disabled""#
            ));
        }
        if c.period.is_some_and(|p| p.0.is_zero()) {
            return Err(format!("plan check {name:?} period must not be zero"));
        }
        if c.timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(format!("plan check {name:?} timeout must not be zero"));
        }
        if let Some(command) = c.exec.as_ref().and_then(|e| e.command.as_ref()) {
            shell_split(command).map_err(|e| format!("plan check {name:?} command invalid: {e}"))?;
        }
    }
    for (name, t) in &layer.log_targets {
        if !matches!(
            t.kind.as_deref(),
            None | Some("loki") | Some("opentelemetry") | Some("syslog")
        ) {
            return Err(format!(
                r#"log target {name:?} has unsupported type {:?}, must be "loki", "opentelemetry" or "syslog""#,
                t.kind.as_deref().unwrap_or("")
            ));
        }
    }
    Ok(())
}

/// The plan of `layers`.
fn combine(layers: &[Layer]) -> Result<Plan, String> {
    let combined = combine_layers(layers)?;
    Ok(Plan {
        services: combined.services,
        checks: combined.checks,
        log_targets: combined.log_targets,
    })
}

/// Pebble's `CombineLayers`: later layers replace or merge into earlier ones.
fn combine_layers(layers: &[Layer]) -> Result<Layer, String> {
    fn fold<T: Clone>(
        into: &mut BTreeMap<String, T>,
        from: &BTreeMap<String, T>,
        label: &str,
        what: &str,
        override_of: impl Fn(&T) -> Option<&str>,
        merge: impl Fn(&mut T, &T),
    ) -> Result<(), String> {
        for (name, item) in from {
            match override_of(item) {
                Some("merge") => match into.get_mut(name) {
                    Some(old) => merge(old, item),
                    None => {
                        into.insert(name.clone(), item.clone());
                    }
                },
                Some("replace") => {
                    into.insert(name.clone(), item.clone());
                }
                None => return Err(format!(r#"layer {label:?} must define "override" for {what} {name:?}"#)),
                Some(_) => {
                    return Err(format!(
                        r#"layer {label:?} has invalid "override" value for {what} {name:?}"#
                    ))
                }
            }
        }
        Ok(())
    }
    let mut plan = Layer::default();
    if let Some(last) = layers.last() {
        plan.summary.clone_from(&last.summary);
        plan.description.clone_from(&last.description);
    }
    for layer in layers {
        fold(
            &mut plan.services,
            &layer.services,
            &layer.label,
            "service",
            |s| s.override_.as_deref(),
            ServiceConfig::merge,
        )?;
        fold(
            &mut plan.checks,
            &layer.checks,
            &layer.label,
            "check",
            |c| c.override_.as_deref(),
            CheckConfig::merge,
        )?;
        fold(
            &mut plan.log_targets,
            &layer.log_targets,
            &layer.label,
            "log target",
            |t| t.override_.as_deref(),
            LogTarget::merge,
        )?;
    }
    for check in plan.checks.values_mut() {
        check.threshold.get_or_insert(CHECK_THRESHOLD);
    }
    Ok(plan)
}

/// Pebble's `Plan.Validate` (no cycle check on `after`/`before`, which the double ignores).
fn validate_plan(plan: &Plan, commandless: &BTreeSet<String>) -> Result<(), String> {
    for (name, s) in &plan.services {
        if s.command.is_none() && !commandless.contains(name) {
            return Err(format!(r#"plan must define "command" for service {name:?}"#));
        }
    }
    for (name, c) in &plan.checks {
        let mut kinds = 0;
        if let Some(h) = &c.http {
            if h.url.is_none() {
                return Err(format!(r#"plan must set "url" for http check {name:?}"#));
            }
            kinds += 1;
        }
        if let Some(t) = &c.tcp {
            if t.port.is_none() {
                return Err(format!(r#"plan must set "port" for tcp check {name:?}"#));
            }
            kinds += 1;
        }
        if let Some(e) = &c.exec {
            if e.command.is_none() {
                return Err(format!(r#"plan must set "command" for exec check {name:?}"#));
            }
            if let Some(context) = &e.service_context {
                if !plan.services.contains_key(context) {
                    return Err(format!(
                        "plan check {name:?} service context specifies non-existent service {context:?}"
                    ));
                }
            }
            kinds += 1;
        }
        if kinds != 1 {
            return Err(format!(
                r#"plan must specify one of "http", "tcp", or "exec" for check {name:?}"#
            ));
        }
    }
    for (name, t) in &plan.log_targets {
        if t.kind.is_none() {
            return Err(format!(
                r#"plan must define "type" ("loki", "opentelemetry" or "syslog") for log target {name:?}"#
            ));
        }
        for service in &t.services {
            let service = service.trim_start_matches('-');
            if service != "all" && !plan.services.contains_key(service) {
                return Err(format!("log target {name:?} specifies unknown service {service:?}"));
            }
        }
        if t.location.is_none() {
            return Err(format!(r#"plan must define "location" for log target {name:?}"#));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Go durations and shell words
// ---------------------------------------------------------------------------------------------

/// Go's `time.ParseDuration` (non-negative): `300ms`, `1.5h`, `2h45m`, units ns us µs ms s m h.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {s:?}"))?;
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        total += value * nanos;
        rest = tail;
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Go's `time.Duration.String`: `500ms`, `10s`, `1m30s`, `2h0m0s`.
pub fn go_duration(d: Duration) -> String {
    fn fraction(value: u128, digits: u32) -> String {
        let scale = 10u128.pow(digits);
        let (int, frac) = (value / scale, value % scale);
        if frac == 0 {
            return int.to_string();
        }
        let frac = format!("{frac:0width$}", width = digits as usize);
        format!("{int}.{}", frac.trim_end_matches('0'))
    }
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", fraction(ns, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", fraction(ns, 6));
    }
    let secs = ns / 1_000_000_000;
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    let s = ns - (h * 3600 + m * 60) * 1_000_000_000;
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if h > 0 || m > 0 {
        out += &format!("{m}m");
    }
    out + &format!("{}s", fraction(s, 9))
}

/// Shell-like word splitting as Pebble's (canonical/x-go `strutil/shlex`): blanks separate
/// words; `'…'` is literal; `"…"` and a bare `\` escape the next character; `#` at the start of
/// a word begins a comment. No expansion of any kind.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '#' if word.is_none() => {
                // a comment: up to the end of the line
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\\' => {
                let next = chars.next().ok_or("EOF found after escape character")?;
                word.get_or_insert_with(String::new).push(next);
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("EOF found when expecting closing quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => {
                            w.push(chars.next().ok_or("EOF found after escape character")?);
                        }
                        Some(c) => w.push(c),
                        None => return Err("EOF found when expecting closing quote".into()),
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    Ok(words)
}

/// Pebble's `Service.ParseCommand`: the command and its `[ … ]` default arguments.
fn parse_command(command: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let (mut base, mut extra) = (Vec::new(), Vec::new());
    let (mut in_brackets, mut got_brackets) = (false, false);
    for (i, arg) in shell_split(command)?.into_iter().enumerate() {
        if in_brackets {
            match arg.as_str() {
                "[" => return Err("cannot nest [ ... ] groups".into()),
                "]" => in_brackets = false,
                _ => extra.push(arg),
            }
            continue;
        }
        if got_brackets {
            return Err("cannot have any arguments after [ ... ] group".into());
        }
        match arg.as_str() {
            "[" if i == 0 => return Err("cannot start command with [ ... ] group".into()),
            "[" => {
                in_brackets = true;
                got_brackets = true;
            }
            "]" => return Err("cannot have ] outside of [ ... ] group".into()),
            _ => base.push(arg),
        }
    }
    Ok((base, extra))
}

fn map_path(paths: &[(String, String)], value: &str) -> String {
    for (from, to) in paths {
        if value == from {
            return to.clone();
        }
        if let Some(rest) = value.strip_prefix(from.as_str()) {
            if rest.starts_with('/') {
                return format!("{to}{rest}");
            }
        }
    }
    value.to_string()
}

// ---------------------------------------------------------------------------------------------
// Services (pebble internals/overlord/servstate)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Initial,
    Starting,
    Running,
    Terminating,
    Killing,
    Stopped,
    Backoff,
    Exited,
}

impl St {
    fn name(self) -> &'static str {
        match self {
            St::Initial => "initial",
            St::Starting => "starting",
            St::Running => "running",
            St::Terminating => "terminating",
            St::Killing => "killing",
            St::Stopped => "stopped",
            St::Backoff => "backoff",
            St::Exited => "exited",
        }
    }

    /// Pebble's `stateToStatus`.
    fn current(self) -> &'static str {
        match self {
            St::Starting | St::Running => "active",
            St::Terminating | St::Killing | St::Stopped => "inactive",
            St::Backoff => "backoff",
            St::Initial | St::Exited => "error",
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

struct Svc {
    state: St,
    /// the config it was started with (the plan's may have changed since: `replan` compares)
    config: ServiceConfig,
    since: Option<SystemTime>,
    pid: Option<u32>,
    /// which process: timers and exits of an earlier one are ignored
    run: u64,
    backoff_num: u32,
    backoff_time: Duration,
    backoff_token: u64,
    /// terminating to be restarted (a check failed)
    restarting: bool,
    started: Option<Reply>,
    stopped: Option<Reply>,
    output: Arc<Mutex<Output>>,
    starts: u64,
}

impl Svc {
    fn new(config: ServiceConfig) -> Self {
        Svc {
            state: St::Initial,
            config,
            since: None,
            pid: None,
            run: 0,
            backoff_num: 0,
            backoff_time: Duration::ZERO,
            backoff_token: 0,
            restarting: false,
            started: None,
            stopped: None,
            output: Arc::default(),
            starts: 0,
        }
    }

    fn transition(&mut self, state: St) {
        self.transition_restarting(state, false);
    }

    fn transition_restarting(&mut self, state: St, restarting: bool) {
        if self.state.current() != state.current() || self.since.is_none() {
            self.since = Some(SystemTime::now());
        }
        self.state = state;
        self.restarting = restarting;
    }

    fn kill_delay(&self) -> Duration {
        self.config.kill_delay.map_or(KILL_DELAY, |d| d.0)
    }

    fn reply_started(&mut self, r: Result<(), String>) {
        if let Some(tx) = self.started.take() {
            let _ = tx.send(r);
        }
    }

    fn reply_stopped(&mut self, r: Result<(), String>) {
        if let Some(tx) = self.stopped.take() {
            let _ = tx.send(r);
        }
    }
}

/// A service's stdout and stderr, by lines.
#[derive(Default)]
struct Output {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Output {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                self.push_line(line);
            } else {
                self.partial.push(b);
            }
        }
    }

    fn push_line(&mut self, line: String) {
        self.lines.push_back(line);
        while self.lines.len() > OUTPUT_LINES {
            self.lines.pop_front();
        }
    }

    fn last(&self, n: usize) -> Vec<String> {
        let mut all: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            all.push(String::from_utf8_lossy(&self.partial).into_owned());
        }
        let from = all.len().saturating_sub(n);
        all.split_off(from)
    }

    /// Pebble's `servicelog.LastLines`, indented: `(...)` first when there were more.
    fn last_lines(&self, n: usize) -> String {
        let mut lines = self.last(n + 1);
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        if lines.len() > n {
            lines[0] = "(...)".into();
        }
        lines.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
    }
}

fn signal_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; the group is the child's own (process_group(0)),
    // still unreaped (its waiter reaps only under the state lock, after clearing `pid`).
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// A passwd or group entry: (name, id, primary gid, home) from `/etc/passwd`, `/etc/group`.
fn passwd_entry(by: impl Fn(&str, u32) -> bool) -> Option<(String, u32, u32, String)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        by(f[0], uid).then(|| (f[0].to_string(), uid, gid, f.get(5).unwrap_or(&"").to_string()))
    })
}

fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
    })
}

/// Pebble's `osutil.NormalizeUidGid`.
fn resolve_ids(c: &ServiceConfig) -> Result<Option<(u32, u32)>, String> {
    let mut uid = c.user_id.map(|u| u as u32);
    let mut gid = c.group_id.map(|g| g as u32);
    if uid.is_none() && gid.is_none() && c.user.is_none() && c.group.is_none() {
        return Ok(None);
    }
    if let Some(user) = &c.user {
        let (_, n, _, _) = passwd_entry(|name, _| name == user).ok_or_else(|| format!("user: unknown user {user}"))?;
        if let Some(u) = uid.filter(|u| *u != n) {
            return Err(format!("user {user:?} UID ({n}) does not match user-id ({u})"));
        }
        uid = Some(n);
    }
    if let Some(group) = &c.group {
        let n = group_id(group).ok_or_else(|| format!("group: unknown group {group}"))?;
        if let Some(g) = gid.filter(|g| *g != n) {
            return Err(format!("group {group:?} GID ({n}) does not match group-id ({g})"));
        }
        gid = Some(n);
    }
    if gid.is_none() {
        let Some(u) = uid else {
            return Err("must specify user, not just group".into());
        };
        let (_, _, primary, _) = passwd_entry(|_, id| id == u).ok_or_else(|| format!("user: unknown userid {u}"))?;
        gid = Some(primary);
    }
    match (uid, gid) {
        (Some(u), Some(g)) => Ok(Some((u, g))),
        _ => Err("must specify user, not just group".into()),
    }
}

/// A pipe for the child's stdout and stderr (both ends close-on-exec here).
fn output_pipe() -> std::io::Result<(std::fs::File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors on success; each is owned exactly once below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2, owned by nothing else.
    unsafe { Ok((std::fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

/// Go's wording of a failed exec: `fork/exec /x: no such file or directory`.
fn exec_error(program: &str, e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    let text = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    };
    format!("cannot start service: fork/exec {program}: {text}")
}

/// Pebble's `startInternal`: spawns the service's command (on the double's thread).
fn start_internal(sh: &Arc<Shared>, inner: &mut Inner, name: &str) -> Result<(), String> {
    let paths = inner.image_paths.clone();
    let svc = inner.services.get_mut(name).expect("a known service");
    let config = svc.config.clone();
    let (base, extra) = parse_command(config.command.as_deref().unwrap_or(""))
        .map_err(|e| format!("cannot parse service {name:?} command: {e}"))?;
    let args: Vec<String> = base.iter().chain(&extra).map(|a| map_path(&paths, a)).collect();
    let Some(program) = args.first() else {
        return Err(format!("cannot parse service {name:?} command: empty command"));
    };
    let ids = resolve_ids(&config)?;
    let mut env: BTreeMap<String, String> = config
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), map_path(&paths, v)))
        .collect();
    if let Some((uid, _)) = ids {
        if let Some((user, _, _, home)) = passwd_entry(|_, id| id == uid) {
            env.entry("HOME".into()).or_insert(home);
            env.entry("USER".into()).or_insert(user);
        }
    }
    let (mut reader, writer) = output_pipe().map_err(|e| format!("cannot start service: {e}"))?;
    let mut cmd = Command::new(program);
    cmd.args(&args[1..])
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            writer.try_clone().map_err(|e| format!("cannot start service: {e}"))?,
        ))
        .stderr(Stdio::from(writer))
        .process_group(0);
    if let Some(dir) = &config.working_dir {
        cmd.current_dir(map_path(&paths, dir));
    }
    if let Some((uid, gid)) = ids {
        // SAFETY: getuid/getgid cannot fail.
        let current = unsafe { (libc::getuid(), libc::getgid()) };
        if (uid, gid) != current {
            cmd.uid(uid).gid(gid);
        }
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing here allocates. std runs this
    // after it changed the credentials (which would clear the parent-death signal).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // the test binary is already gone
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| exec_error(program, &e))?;
    drop(cmd); // the pipe's write ends
    svc.pid = Some(child.id());
    svc.run += 1;
    svc.starts += 1;
    let run = svc.run;
    let output = svc.output.clone();
    // the reader's end: the exit is handled once the output is read (or 200 ms later, when a
    // grandchild keeps the pipe open)
    let (read_all, output_read) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _read_all = read_all;
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            output.lock().unwrap_or_else(|e| e.into_inner()).push(&buf[..n]);
        }
    });
    let (sh2, name2) = (sh.clone(), name.to_string());
    std::thread::spawn(move || wait_for_exit(sh2, name2, run, child, output_read));
    let name3 = name.to_string();
    after(
        sh,
        config.backoff_limit.map_or(BACKOFF_LIMIT, |d| d.0),
        move |_, inner| {
            // ran for the backoff limit: the next failure starts its backoff afresh
            if let Some(s) = inner.services.get_mut(&name3) {
                if s.run == run && s.state == St::Running {
                    s.backoff_num = 0;
                    s.backoff_time = Duration::ZERO;
                }
            }
        },
    );
    Ok(())
}

fn wait_for_exit(
    sh: Arc<Shared>,
    name: String,
    run: u64,
    mut child: Child,
    output_read: std::sync::mpsc::Receiver<()>,
) {
    // wait without reaping: the pid stays this child's until the state no longer names it
    loop {
        // SAFETY: waitid fills `info`; WNOWAIT leaves the child to be reaped below.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let _ = output_read.recv_timeout(Duration::from_millis(200));
    let mut inner = sh.lock();
    let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
    exited(&sh, &mut inner, &name, run, code);
}

/// The `on-success` / `on-failure` action (default `restart`) and which it was.
fn exit_action(config: &ServiceConfig, success: bool) -> (String, &'static str) {
    let (action, on) = if success {
        (&config.on_success, "on-success")
    } else {
        (&config.on_failure, "on-failure")
    };
    (action.clone().unwrap_or_else(|| "restart".into()), on)
}

/// Pebble's `serviceData.exited`.
fn exited(sh: &Arc<Shared>, inner: &mut Inner, name: &str, run: u64, code: i32) {
    let closing = inner.closing;
    let Some(svc) = inner.services.get_mut(name) else {
        return;
    };
    if svc.run != run {
        return;
    }
    svc.pid = None;
    if closing {
        svc.transition(St::Stopped);
        return;
    }
    match svc.state {
        St::Starting | St::Running => {
            let (action, on) = exit_action(&svc.config, code == 0);
            if svc.state == St::Starting {
                svc.reply_started(Err(format!("exited quickly with code {code}, will {action}")));
            }
            match action.as_str() {
                "ignore" => svc.transition(if code == 0 { St::Stopped } else { St::Exited }),
                "restart" => do_backoff(sh, svc, name),
                other => {
                    svc.transition(St::Exited);
                    let why = format!("service {name:?} exited with code {code}: {on} action {other:?}");
                    inner.shutdowns.push(why);
                }
            }
        }
        St::Terminating | St::Killing => {
            if svc.restarting {
                do_backoff(sh, svc, name);
            } else {
                svc.reply_stopped(Ok(()));
                svc.transition(St::Stopped);
            }
        }
        _ => {}
    }
}

/// Pebble's `doBackoff`: restart after the next backoff time (plus up to 10% jitter).
fn do_backoff(sh: &Arc<Shared>, svc: &mut Svc, name: &str) {
    let c = &svc.config;
    let (delay, factor, limit) = (
        c.backoff_delay.map_or(BACKOFF_DELAY, |d| d.0),
        c.backoff_factor.unwrap_or(BACKOFF_FACTOR),
        c.backoff_limit.map_or(BACKOFF_LIMIT, |d| d.0),
    );
    svc.backoff_num += 1;
    svc.backoff_time = if svc.backoff_time.is_zero() {
        delay
    } else if svc.backoff_time >= limit {
        limit
    } else {
        svc.backoff_time.mul_f64(factor).min(limit)
    };
    svc.transition(St::Backoff);
    svc.backoff_token += 1;
    let token = svc.backoff_token;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = svc.backoff_time.mul_f64(0.1 * f64::from(nanos % 1000) / 1000.0);
    let name = name.to_string();
    after(sh, svc.backoff_time + jitter, move |sh, inner| {
        let Some(svc) = inner.services.get(&name) else {
            return;
        };
        if svc.state != St::Backoff || svc.backoff_token != token {
            return;
        }
        match start_internal(sh, inner, &name) {
            Ok(()) => inner.services.get_mut(&name).unwrap().transition(St::Running),
            Err(e) => {
                let svc = &inner.services[&name];
                let line = format!("[pebble double] cannot restart {name:?}: {e}");
                svc.output.lock().unwrap_or_else(|e| e.into_inner()).push_line(line);
            }
        }
    });
}

/// SIGTERM to the group; SIGKILL after `kill-delay`; after that, [`FAIL_DELAY`] more.
fn terminate(sh: &Arc<Shared>, svc: &mut Svc, name: &str, restarting: bool) {
    if let Some(pid) = svc.pid {
        signal_group(pid, libc::SIGTERM);
    }
    svc.transition_restarting(St::Terminating, restarting);
    let (run, name) = (svc.run, name.to_string());
    after(sh, svc.kill_delay(), move |sh, inner| {
        let Some(svc) = inner.services.get_mut(&name) else {
            return;
        };
        if svc.run != run || svc.state != St::Terminating {
            return;
        }
        if let Some(pid) = svc.pid {
            signal_group(pid, libc::SIGKILL);
        }
        let restarting = svc.restarting;
        svc.transition_restarting(St::Killing, restarting);
        after(sh, FAIL_DELAY, move |_, inner| {
            let Some(svc) = inner.services.get_mut(&name) else {
                return;
            };
            if svc.run != run || svc.state != St::Killing {
                return;
            }
            if !svc.restarting {
                svc.reply_stopped(Err("process still running after SIGTERM and SIGKILL".into()));
            }
            svc.transition(St::Stopped);
        });
    });
}

/// A start task (Pebble's `doStart`).
async fn do_start(sh: &Arc<Shared>, change: u64, task: usize, name: &str) -> Result<(), String> {
    let started = {
        let mut guard = sh.lock();
        let inner = &mut *guard;
        let Some(config) = inner.plan.services.get(name).cloned() else {
            return Err(format!("cannot find service {name:?} in plan"));
        };
        let svc = inner
            .services
            .entry(name.to_string())
            .or_insert_with(|| Svc::new(config.clone()));
        let fresh = svc.state == St::Initial && svc.starts == 0;
        svc.config = config.clone();
        if config.command.is_none() {
            // a stand-in service: started by saying so
            svc.transition(St::Running);
            return Ok(());
        }
        if svc.pid.is_none() && svc.state == St::Running {
            // started as a stand-in service, before a layer gave it a command
            svc.transition(St::Stopped);
        }
        if !fresh {
            match svc.state {
                St::Initial | St::Starting | St::Running => {
                    inner.task_log(change, task, "INFO", &format!("Service {name:?} already started."));
                    return Ok(());
                }
                St::Backoff | St::Stopped | St::Exited => {
                    svc.backoff_num = 0;
                    svc.backoff_time = Duration::ZERO;
                    svc.backoff_token += 1;
                    svc.transition(St::Initial);
                }
                St::Terminating | St::Killing => {}
            }
        }
        if svc.state != St::Initial {
            return Err(format!("cannot start service while {}", svc.state.name()));
        }
        if let Err(e) = start_internal(sh, inner, name) {
            inner.services.get_mut(name).unwrap().transition(St::Stopped);
            return Err(e);
        }
        let svc = inner.services.get_mut(name).unwrap();
        svc.transition(St::Starting);
        let (tx, rx) = tokio::sync::oneshot::channel();
        svc.started = Some(tx);
        let (run, name2) = (svc.run, name.to_string());
        after(sh, OKAY_DELAY, move |_, inner| {
            if let Some(svc) = inner.services.get_mut(&name2) {
                if svc.run == run && svc.state == St::Starting {
                    svc.reply_started(Ok(()));
                    svc.transition(St::Running);
                }
            }
        });
        rx
    };
    match started.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let mut inner = sh.lock();
            let logs = inner.services.get(name).map(|s| {
                let out = s.output.lock().unwrap_or_else(|e| e.into_inner());
                out.last_lines(LAST_LOG_LINES)
            });
            if let Some(logs) = logs.filter(|l| !l.is_empty()) {
                inner.task_log(change, task, "INFO", &format!("Most recent service output:\n{logs}"));
            }
            Err(format!("service start attempt: {e}"))
        }
        Err(_) => Err("the double closed".into()),
    }
}

/// A stop task (Pebble's `doStop`).
async fn do_stop(sh: &Arc<Shared>, change: u64, task: usize, name: &str) -> Result<(), String> {
    let stopped = {
        let mut guard = sh.lock();
        let inner = &mut *guard;
        let Some(svc) = inner.services.get_mut(name) else {
            if inner.plan.services.get(name).is_some_and(|c| c.command.is_none()) {
                return Ok(()); // a stand-in service
            }
            inner.task_log(
                change,
                task,
                "INFO",
                &format!("Service {name:?} has never been started."),
            );
            return Ok(());
        };
        if svc.pid.is_none() && matches!(svc.state, St::Starting | St::Running) {
            // a stand-in service: stopped by saying so
            svc.transition(St::Stopped);
            return Ok(());
        }
        let note = match svc.state {
            St::Terminating | St::Killing => Some(format!("Service {name:?} already stopping.")),
            St::Stopped => Some(format!("Service {name:?} already stopped.")),
            St::Exited => {
                svc.transition(St::Stopped);
                Some(format!("Service {name:?} had already exited."))
            }
            _ => None,
        };
        if let Some(note) = note {
            inner.task_log(change, task, "INFO", &note);
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        match svc.state {
            St::Starting | St::Running => {
                if svc.state == St::Starting {
                    svc.reply_started(Err(format!(
                        "stopped before the {} okay delay",
                        go_duration(OKAY_DELAY)
                    )));
                }
                svc.stopped = Some(tx);
                terminate(sh, svc, name, false);
            }
            St::Backoff => {
                svc.backoff_token += 1;
                svc.transition(St::Stopped);
                return Ok(());
            }
            other => return Err(format!("cannot stop service while {}", other.name())),
        }
        rx
    };
    match stopped.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot stop service: {e}")),
        Err(_) => Err("the double closed".into()),
    }
}

/// Pebble's `ServiceManager.CheckFailed`: the `on-check-failure` actions naming `check`.
fn check_failed(sh: &Arc<Shared>, inner: &mut Inner, check: &str) {
    let mut shutdowns = Vec::new();
    for (name, svc) in inner.services.iter_mut() {
        let Some(action) = svc.config.on_check_failure.get(check).cloned() else {
            continue;
        };
        if !matches!(svc.state, St::Running | St::Backoff | St::Exited) {
            continue;
        }
        match action.as_str() {
            "ignore" => {}
            "restart" => match svc.state {
                St::Running if svc.pid.is_some() => terminate(sh, svc, name, true),
                St::Exited => do_backoff(sh, svc, name),
                _ => {}
            },
            other => shutdowns.push(format!(
                "check {check:?} failed: service {name:?} on-check-failure action {other:?}"
            )),
        }
    }
    inner.shutdowns.extend(shutdowns);
}

// ---------------------------------------------------------------------------------------------
// Changes and tasks (pebble internals/overlord/state)
// ---------------------------------------------------------------------------------------------

struct Change {
    kind: String,
    summary: String,
    tasks: Vec<Task>,
    spawn: SystemTime,
    ready_time: Option<SystemTime>,
    ready: tokio::sync::watch::Sender<bool>,
    /// [`PebbleStandIn::fail`]: the change's `err`, verbatim
    forced_err: Option<String>,
}

struct Task {
    id: u64,
    kind: String,
    summary: String,
    status: &'static str,
    log: Vec<String>,
    spawn: SystemTime,
    ready_time: Option<SystemTime>,
}

#[derive(Clone)]
enum Step {
    Start(String),
    Stop(String),
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Change {
    fn status(&self) -> &'static str {
        if self.forced_err.is_some() && self.ready_time.is_some() {
            return "Error";
        }
        let has = |s: &str| self.tasks.iter().any(|t| t.status == s);
        if self.tasks.is_empty() {
            return if self.ready_time.is_some() { "Done" } else { "Do" };
        }
        if has("Doing") || (has("Do") && self.tasks.iter().any(|t| t.status != "Do")) {
            return "Doing";
        }
        if has("Do") {
            return "Do";
        }
        if has("Error") {
            return "Error";
        }
        if self.tasks.iter().all(|t| t.status == "Hold") {
            return "Hold";
        }
        "Done"
    }

    /// Pebble's `Change.Err`: the errors logged by the tasks in error.
    fn err(&self) -> Option<String> {
        if let Some(e) = &self.forced_err {
            return Some(e.clone());
        }
        if self.status() != "Error" {
            return None;
        }
        let mut out = String::from("cannot perform the following tasks:");
        for task in self.tasks.iter().filter(|t| t.status == "Error") {
            for entry in &task.log {
                if let Some((_, msg)) = entry.split_once(" ERROR ") {
                    out += &format!("\n- {} ({msg})", task.summary);
                }
            }
        }
        Some(out)
    }

    fn to_json(&self, id: u64) -> Value {
        let tasks: Vec<Value> = self
            .tasks
            .iter()
            .map(|t| {
                let mut v = json!({
                    "id": t.id.to_string(), "kind": t.kind, "summary": t.summary, "status": t.status,
                    "progress": {"label": "", "done": u8::from(t.ready_time.is_some()), "total": 1},
                    "spawn-time": rfc3339(t.spawn),
                });
                if !t.log.is_empty() {
                    v["log"] = json!(t.log);
                }
                if let Some(r) = t.ready_time {
                    v["ready-time"] = json!(rfc3339(r));
                }
                v
            })
            .collect();
        let mut v = json!({
            "id": id.to_string(), "kind": self.kind, "summary": self.summary, "status": self.status(),
            "ready": self.ready_time.is_some(), "spawn-time": rfc3339(self.spawn),
        });
        if !tasks.is_empty() {
            v["tasks"] = json!(tasks);
        }
        if let Some(r) = self.ready_time {
            v["ready-time"] = json!(rfc3339(r));
        }
        if let Some(err) = self.err() {
            v["err"] = json!(err);
        }
        v
    }
}

impl Inner {
    fn new_change(&mut self, kind: &str, summary: String, tasks: Vec<(String, String)>) -> u64 {
        self.last_change += 1;
        let now = SystemTime::now();
        let tasks = tasks
            .into_iter()
            .map(|(kind, summary)| {
                self.last_task += 1;
                Task {
                    id: self.last_task,
                    kind,
                    summary,
                    status: "Do",
                    log: Vec::new(),
                    spawn: now,
                    ready_time: None,
                }
            })
            .collect();
        let (ready, _) = tokio::sync::watch::channel(false);
        self.changes.insert(
            self.last_change,
            Change {
                kind: kind.to_string(),
                summary,
                tasks,
                spawn: now,
                ready_time: None,
                ready,
                forced_err: None,
            },
        );
        self.last_change
    }

    /// A task log entry as Pebble writes one (`<RFC 3339> INFO|ERROR <message>`, ten kept).
    fn task_log(&mut self, change: u64, task: usize, level: &str, message: &str) {
        let Some(t) = self.changes.get_mut(&change).and_then(|c| c.tasks.get_mut(task)) else {
            return;
        };
        let stamp = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        if t.log.len() > 9 {
            t.log.drain(..t.log.len() - 9);
        }
        t.log.push(format!("{stamp} {level} {message}"));
    }

    fn set_task(&mut self, change: u64, task: usize, status: &'static str) {
        if let Some(t) = self.changes.get_mut(&change).and_then(|c| c.tasks.get_mut(task)) {
            t.status = status;
            if matches!(status, "Done" | "Error" | "Hold" | "Undone") {
                t.ready_time = Some(SystemTime::now());
            }
        }
    }

    fn finish_task(&mut self, change: u64, task: usize, result: Result<(), String>) {
        match result {
            Ok(()) => self.set_task(change, task, "Done"),
            Err(e) => {
                self.task_log(change, task, "ERROR", &e);
                self.set_task(change, task, "Error");
            }
        }
    }

    fn finish_change(&mut self, change: u64) {
        if let Some(c) = self.changes.get_mut(&change) {
            c.ready_time = Some(SystemTime::now());
            c.ready.send_replace(true);
        }
    }
}

async fn run_change(sh: Arc<Shared>, change: u64, steps: Vec<Step>) {
    let mut stop_failed = false;
    for (i, step) in steps.iter().enumerate() {
        if matches!(step, Step::Start(_)) && stop_failed {
            sh.lock().set_task(change, i, "Hold");
            continue;
        }
        sh.lock().set_task(change, i, "Doing");
        let result = match step {
            Step::Start(name) => do_start(&sh, change, i, name).await,
            Step::Stop(name) => {
                let r = do_stop(&sh, change, i, name).await;
                stop_failed |= r.is_err();
                r
            }
        };
        sh.lock().finish_task(change, i, result);
    }
    sh.lock().finish_change(change);
}

// ---------------------------------------------------------------------------------------------
// Checks (pebble internals/overlord/checkstate)
// ---------------------------------------------------------------------------------------------

struct CheckData {
    config: CheckConfig,
    status: &'static str,
    successes: u32,
    failures: u32,
    change: Option<u64>,
    prev_change: Option<u64>,
    /// failing past its threshold: a `recover-check` change
    recovering: bool,
    /// which runner: an earlier one stops at its next tick
    run: u64,
}

/// Pebble's `CheckManager.PlanChanged`: a check whose config changed starts afresh (`up`, no
/// successes), an unchanged one keeps running, a new one starts unless `startup: disabled`.
fn plan_changed(sh: &Arc<Shared>, inner: &mut Inner) {
    let planned = inner.plan.checks.clone();
    let mut keep = BTreeSet::new();
    let mut modified = BTreeSet::new();
    for (name, data) in &inner.checks {
        if data.change.is_none() {
            continue;
        }
        match planned.get(name) {
            Some(c) if *c == data.config => {
                keep.insert(name.clone());
            }
            // Pebble leaves a running check running when a layer disables it
            Some(c) if !c.enabled() && data.config.enabled() => {
                keep.insert(name.clone());
            }
            Some(_) => {
                modified.insert(name.clone());
            }
            None => {}
        }
    }
    let stale: Vec<String> = inner.checks.keys().filter(|n| !keep.contains(*n)).cloned().collect();
    for name in stale {
        if let Some(data) = inner.checks.remove(&name) {
            if let Some(change) = data.change {
                abort_change(inner, change);
            }
        }
    }
    for (name, config) in planned {
        if keep.contains(&name) {
            continue;
        }
        if modified.contains(&name) || config.enabled() {
            start_check(sh, inner, &name, config, 0, 0, None);
        } else {
            inner.checks.insert(
                name,
                CheckData {
                    config,
                    status: "inactive",
                    successes: 0,
                    failures: 0,
                    change: None,
                    prev_change: None,
                    recovering: false,
                    run: 0,
                },
            );
        }
    }
}

fn abort_change(inner: &mut Inner, change: u64) {
    if let Some(c) = inner.changes.get_mut(&change) {
        for t in &mut c.tasks {
            if matches!(t.status, "Do" | "Doing") {
                t.status = "Hold";
                t.ready_time = Some(SystemTime::now());
            }
        }
    }
    inner.finish_change(change);
}

fn new_check_change(inner: &mut Inner, kind: &str, verb: &str, name: &str, config: &CheckConfig) -> u64 {
    let summary = format!("{verb} {} check {name:?}", config.kind());
    let id = inner.new_change(kind, summary.clone(), vec![(kind.to_string(), summary)]);
    inner.set_task(id, 0, "Doing");
    id
}

/// A `perform-check` change and its runner; the check is `up` from now on, until it fails.
fn start_check(
    sh: &Arc<Shared>,
    inner: &mut Inner,
    name: &str,
    config: CheckConfig,
    successes: u32,
    failures: u32,
    prev_change: Option<u64>,
) {
    inner.last_check_run += 1;
    let run = inner.last_check_run;
    let change = new_check_change(inner, "perform-check", "Perform", name, &config);
    inner.checks.insert(
        name.to_string(),
        CheckData {
            config: config.clone(),
            status: "up",
            successes,
            failures,
            change: Some(change),
            prev_change,
            recovering: false,
            run,
        },
    );
    sh.runtime.spawn(run_check(sh.clone(), name.to_string(), run, config));
}

/// Pebble's replan of checks: every enabled check that is not running starts.
fn checks_replan(sh: &Arc<Shared>, inner: &mut Inner) {
    let idle: Vec<(String, CheckConfig)> = inner
        .plan
        .checks
        .iter()
        .filter(|(name, c)| c.enabled() && inner.checks.get(*name).is_some_and(|d| d.change.is_none()))
        .map(|(n, c)| (n.clone(), c.clone()))
        .collect();
    for (name, config) in idle {
        start_check(sh, inner, &name, config, 0, 0, None);
    }
}

/// Every `period` (the first one a period after it was planned), the probe, within `timeout`.
async fn run_check(sh: Arc<Shared>, name: String, run: u64, config: CheckConfig) {
    let period = config.period.map_or(CHECK_PERIOD, |d| d.0);
    let timeout = config.timeout.map_or(CHECK_TIMEOUT, |d| d.0).min(period);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let current = |inner: &Inner| !inner.closing && inner.checks.get(&name).is_some_and(|d| d.run == run);
    loop {
        ticker.tick().await;
        if !current(&sh.lock()) {
            return;
        }
        let result = match tokio::time::timeout(timeout, probe(&config)).await {
            Ok(r) => r,
            Err(_) => Err(format!("check timed out after {}", go_duration(timeout))),
        };
        let mut inner = sh.lock();
        if !current(&inner) {
            return;
        }
        on_check_result(&sh, &mut inner, &name, result);
    }
}

fn failures_text(n: u32) -> String {
    if n == 1 {
        "1 failure".into()
    } else {
        format!("{n} failures")
    }
}

/// Pebble's `doPerformCheck` / `doRecoverCheck` after one probe.
fn on_check_result(sh: &Arc<Shared>, inner: &mut Inner, name: &str, result: Result<(), String>) {
    let Some(data) = inner.checks.get_mut(name) else {
        return;
    };
    let threshold = data.config.threshold.unwrap_or(CHECK_THRESHOLD);
    let change = data.change.unwrap_or(0);
    match (data.recovering, result) {
        (false, Ok(())) => {
            data.successes += 1;
            let had = std::mem::take(&mut data.failures);
            data.status = "up";
            if had > 0 {
                inner.task_log(change, 0, "INFO", &format!("succeeded after {}", failures_text(had)));
            }
        }
        (false, Err(e)) => {
            data.failures += 1;
            if data.failures < threshold {
                inner.task_log(change, 0, "ERROR", &e);
                return;
            }
            // the threshold: the perform change fails, a recover change takes over, and the
            // services that asked for it act on the failure
            data.recovering = true;
            data.status = "down";
            let config = data.config.clone();
            inner.task_log(change, 0, "ERROR", &e);
            inner.set_task(change, 0, "Error");
            inner.finish_change(change);
            let recover = new_check_change(inner, "recover-check", "Recover", name, &config);
            let data = inner.checks.get_mut(name).unwrap();
            data.prev_change = Some(change);
            data.change = Some(recover);
            check_failed(sh, inner, name);
        }
        (true, Err(e)) => {
            data.failures += 1;
            data.status = "down";
            inner.task_log(change, 0, "ERROR", &e);
        }
        (true, Ok(())) => {
            data.successes = 1;
            data.failures = 0;
            data.recovering = false;
            data.status = "up";
            let config = data.config.clone();
            inner.set_task(change, 0, "Done");
            inner.finish_change(change);
            let perform = new_check_change(inner, "perform-check", "Perform", name, &config);
            let data = inner.checks.get_mut(name).unwrap();
            data.prev_change = Some(change);
            data.change = Some(perform);
        }
    }
}

/// One check: an HTTP GET answered 2xx, or a TCP connection accepted.
async fn probe(config: &CheckConfig) -> Result<(), String> {
    if let Some(h) = &config.http {
        return http_probe(h.url.as_deref().unwrap_or(""), &h.headers).await;
    }
    if let Some(t) = &config.tcp {
        let host = t.host.as_deref().unwrap_or("localhost");
        let port = t.port.unwrap_or(0);
        return tokio::net::TcpStream::connect((host, port))
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"));
    }
    Err("exec checks are not run by the Pebble double".into())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_probe(url: &str, headers: &BTreeMap<String, String>) -> Result<(), String> {
    let get = |e: String| format!("Get {url:?}: {e}");
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| get("the Pebble double checks only http:// URLs".into()))?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>().map_err(|e| get(e.to_string()))?,
        ),
        _ => (authority.trim_start_matches('[').trim_end_matches(']'), 80),
    };
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| get(format!("dial tcp {authority}: connect: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| get(e.to_string()))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let mut request = Request::builder()
        .method("GET")
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "Go-http-client/1.1");
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let request = request.body(Full::new(Bytes::new())).map_err(|e| get(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| get(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(10 * 1024)]);
    let mut lines: Vec<&str> = text.trim().lines().collect();
    if lines.len() > 5 {
        lines.truncate(5);
        lines.push("(...)");
    }
    let details = lines.join("\n");
    let mut message = format!("non-2xx status code {}", status.as_u16());
    if !details.is_empty() {
        message += &format!("; {details}");
    }
    Err(message)
}

// ---------------------------------------------------------------------------------------------
// The HTTP API (pebble internals/daemon)
// ---------------------------------------------------------------------------------------------

async fn serve(
    listener: std::os::unix::net::UnixListener,
    sh: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::UnixListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let sh = sh.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let sh = sh.clone();
                        async move { Ok::<_, Infallible>(handle(req, &sh).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn sync(result: Value) -> Response<Full<Bytes>> {
    answer(
        StatusCode::OK,
        json!({ "type": "sync", "status-code": 200, "status": "OK", "result": result }),
    )
}

fn accepted(change: u64) -> Response<Full<Bytes>> {
    answer(
        StatusCode::ACCEPTED,
        json!({ "type": "async", "status-code": 202, "status": "Accepted", "change": change.to_string() }),
    )
}

fn error_kind(status: StatusCode, kind: Option<&str>, message: &str) -> Response<Full<Bytes>> {
    let mut result = json!({ "message": message });
    if let Some(kind) = kind {
        result["kind"] = json!(kind);
    }
    answer(
        status,
        json!({
            "type": "error", "status-code": status.as_u16(),
            "status": status.canonical_reason().unwrap_or(""), "result": result,
        }),
    )
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    error_kind(status, None, message)
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    error(StatusCode::BAD_REQUEST, message)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn param<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Pebble's `strutil.MultiCommaSeparatedList` of every `key` parameter.
fn list_param(query: &[(String, String)], key: &str) -> Vec<String> {
    query
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

async fn handle(req: Request<Incoming>, sh: &Arc<Shared>) -> Response<Full<Bytes>> {
    if !req.headers().contains_key(hyper::header::HOST) {
        sh.lock().requests_without_host += 1;
        return bad_request("missing required Host header");
    }
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match (method.as_str(), path.as_str()) {
        ("GET", "/v1/system-info") => {
            let inner = sh.lock();
            sync(json!({ "boot-id": inner.boot_id, "version": VERSION }))
        }
        ("GET", "/v1/plan") => match param(&query, "format").unwrap_or("") {
            "yaml" => sync(json!(serde_yaml_ng::to_string(&sh.lock().plan).unwrap())),
            other => bad_request(&format!("invalid format {other:?}")),
        },
        ("POST", "/v1/layers") => post_layers(sh, &body),
        ("GET", "/v1/services") => get_services(sh, &query),
        ("POST", "/v1/services") => post_services(sh, &body),
        ("GET", "/v1/checks") => get_checks(sh, &query),
        ("GET", "/v1/changes") => get_changes(sh, &query),
        ("GET", p) if p.starts_with("/v1/changes/") => {
            let rest = &p["/v1/changes/".len()..];
            match rest.strip_suffix("/wait") {
                Some(id) => wait_change(sh, id, &query).await,
                None if !rest.contains('/') => {
                    let inner = sh.lock();
                    match rest
                        .parse::<u64>()
                        .ok()
                        .and_then(|n| inner.changes.get(&n).map(|c| c.to_json(n)))
                    {
                        Some(change) => sync(change),
                        None => error(StatusCode::NOT_FOUND, &format!("cannot find change with id {rest:?}")),
                    }
                }
                None => error(StatusCode::NOT_FOUND, "not found"),
            }
        }
        (_, "/v1/system-info" | "/v1/plan" | "/v1/layers" | "/v1/services" | "/v1/checks" | "/v1/changes") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Pebble's `v1PostLayers` and `PlanManager.{Append,Combine}Layer`.
fn post_layers(sh: &Arc<Shared>, body: &[u8]) -> Response<Full<Bytes>> {
    #[derive(Deserialize)]
    struct Payload {
        #[serde(default)]
        action: String,
        #[serde(default)]
        combine: bool,
        #[serde(default)]
        label: String,
        #[serde(default)]
        format: String,
        #[serde(default)]
        layer: String,
    }
    let payload: Payload = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return bad_request(&format!("cannot decode request body: {e}")),
    };
    if payload.action != "add" {
        return bad_request(&format!("invalid action {:?}", payload.action));
    }
    if payload.label.is_empty() {
        return bad_request("label must be set");
    }
    if payload.format != "yaml" {
        return bad_request(&format!("invalid format {:?}", payload.format));
    }
    let layer = match parse_layer(&payload.label, &payload.layer) {
        Ok(l) => l,
        Err(e) => return bad_request(&format!("cannot parse layer YAML: {e}")),
    };
    let mut guard = sh.lock();
    let inner = &mut *guard;
    let mut layers = inner.layers.clone();
    match layers.iter().position(|l| l.label == payload.label) {
        Some(i) if payload.combine => {
            let combined = match combine_layers(&[layers[i].clone(), layer]) {
                Ok(c) => c,
                Err(e) => return bad_request(&e),
            };
            layers[i] = Layer {
                label: payload.label.clone(),
                ..combined
            };
        }
        Some(_) => return bad_request(&format!("layer {:?} already exists", payload.label)),
        None => layers.push(layer),
    }
    let plan = match combine(&layers).and_then(|p| validate_plan(&p, &inner.commandless).map(|()| p)) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    inner.layers = layers;
    inner.plan = plan;
    plan_changed(sh, inner);
    sync(json!(true))
}

fn get_services(sh: &Arc<Shared>, query: &[(String, String)]) -> Response<Full<Bytes>> {
    let names = list_param(query, "names");
    let inner = sh.lock();
    let list: Vec<Value> = inner
        .plan
        .services
        .iter()
        .filter(|(name, _)| names.is_empty() || names.contains(name))
        .map(|(name, config)| {
            let startup = if config.startup.as_deref() == Some("enabled") {
                "enabled"
            } else {
                "disabled"
            };
            let svc = inner.services.get(name);
            let mut v = json!({
                "name": name, "startup": startup,
                "current": svc.map_or("inactive", |s| s.state.current()),
            });
            if let Some(since) = svc.and_then(|s| s.since) {
                v["current-since"] = json!(rfc3339(since));
            }
            v
        })
        .collect();
    sync(json!(list))
}

/// Pebble's `ServiceManager.Replan`: what to stop (its config changed, or it left the plan) and
/// what to start (what was stopped and is still planned, and every `startup: enabled` one).
fn replan(inner: &mut Inner) -> (Vec<String>, Vec<String>) {
    let mut stop = Vec::new();
    for (name, svc) in inner.services.iter_mut() {
        if let Some(config) = inner.plan.services.get(name) {
            if *config == svc.config {
                continue;
            }
            svc.config = config.clone();
        }
        stop.push(name.clone());
    }
    let start = inner
        .plan
        .services
        .iter()
        .filter(|(name, c)| stop.contains(name) || c.startup.as_deref() == Some("enabled"))
        .map(|(name, _)| name.clone())
        .collect();
    (stop, start)
}

fn title(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Pebble's `v1PostServices`.
fn post_services(sh: &Arc<Shared>, body: &[u8]) -> Response<Full<Bytes>> {
    #[derive(Deserialize)]
    struct Payload {
        #[serde(default)]
        action: String,
        #[serde(default)]
        services: Option<Vec<String>>,
    }
    let payload: Payload = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => return bad_request(&format!("cannot decode data from request body: {e}")),
    };
    let action = payload.action;
    let mut names = payload.services.unwrap_or_default();
    match action.as_str() {
        "replan" | "autostart" if !names.is_empty() => {
            return bad_request(&format!("{action} accepts no service names"));
        }
        "replan" | "autostart" => {}
        _ if names.is_empty() => {
            return bad_request(&format!("must specify services for {action} action"));
        }
        _ => {}
    }
    let mut guard = sh.lock();
    let inner = &mut *guard;
    if action == "autostart" {
        names = inner
            .plan
            .services
            .iter()
            .filter(|(_, c)| c.startup.as_deref() == Some("enabled"))
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() {
            return error_kind(
                StatusCode::BAD_REQUEST,
                Some("no-default-services"),
                "no default services",
            );
        }
    }
    if !matches!(action.as_str(), "start" | "stop" | "restart" | "replan" | "autostart") {
        return bad_request(&format!("invalid action {action:?}"));
    }
    if let Some(unknown) = names.iter().find(|n| !inner.plan.services.contains_key(*n)) {
        return bad_request(&format!("cannot {action} services: service {unknown:?} does not exist"));
    }
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let steps: Vec<Step> = match action.as_str() {
        "start" | "autostart" => names.iter().cloned().map(Step::Start).collect(),
        "stop" => names.iter().cloned().map(Step::Stop).collect(),
        "restart" => names
            .iter()
            .cloned()
            .map(Step::Stop)
            .chain(names.iter().cloned().map(Step::Start))
            .collect(),
        _ => {
            let (stop, start) = replan(inner);
            let affected: BTreeSet<String> = stop.iter().chain(&start).cloned().collect();
            names = affected.into_iter().collect();
            stop.into_iter()
                .map(Step::Stop)
                .chain(start.into_iter().map(Step::Start))
                .collect()
        }
    };
    match action.as_str() {
        "start" | "stop" | "restart" => inner.events.extend(names.iter().map(|n| format!("{action} {n}"))),
        _ => inner.events.push(action.clone()),
    }
    drop(guard);
    let observer = sh.observer.lock().unwrap().clone();
    if let Some(f) = observer {
        let seen = f(&action);
        sh.lock().observed.push(seen);
    }
    let mut guard = sh.lock();
    let inner = &mut *guard;
    let id = if steps.is_empty() {
        let id = inner.new_change(&action, format!("{} - no services", title(&action)), Vec::new());
        inner.finish_change(id);
        id
    } else {
        let summary = match names.len() {
            1 => format!("{} service {:?}", title(&action), names[0]),
            n => format!("{} service {:?} and {} more", title(&action), names[0], n - 1),
        };
        let tasks = steps
            .iter()
            .map(|s| match s {
                Step::Start(n) => ("start".to_string(), format!("Start service {n:?}")),
                Step::Stop(n) => ("stop".to_string(), format!("Stop service {n:?}")),
            })
            .collect();
        let id = inner.new_change(&action, summary, tasks);
        if let Some(err) = inner.failing.get(&action).cloned() {
            // injected: nothing is done, the change fails with Pebble's words as given
            inner.task_log(id, 0, "ERROR", &err);
            inner.set_task(id, 0, "Error");
            for i in 1..steps.len() {
                inner.set_task(id, i, "Hold");
            }
            inner.changes.get_mut(&id).unwrap().forced_err = Some(err);
            inner.finish_change(id);
        } else {
            sh.runtime.spawn(run_change(sh.clone(), id, steps));
        }
        id
    };
    if action == "replan" {
        checks_replan(sh, inner);
    }
    accepted(id)
}

fn get_checks(sh: &Arc<Shared>, query: &[(String, String)]) -> Response<Full<Bytes>> {
    let level = param(query, "level").unwrap_or("");
    if !matches!(level, "" | "alive" | "ready") {
        return bad_request(r#"level must be "alive" or "ready""#);
    }
    let names = list_param(query, "names");
    let inner = sh.lock();
    let list: Vec<Value> = inner
        .checks
        .iter()
        .filter(|(name, d)| {
            (level.is_empty() || d.config.level.as_deref() == Some(level)) && (names.is_empty() || names.contains(name))
        })
        .map(|(name, d)| {
            let mut v = json!({
                "name": name,
                "startup": if d.config.enabled() { "enabled" } else { "disabled" },
                "status": d.status, "successes": d.successes,
                "threshold": d.config.threshold.unwrap_or(CHECK_THRESHOLD),
            });
            if let Some(level) = &d.config.level {
                v["level"] = json!(level);
            }
            if d.failures > 0 {
                v["failures"] = json!(d.failures);
            }
            if let Some(c) = d.change {
                v["change-id"] = json!(c.to_string());
            }
            if let Some(c) = d.prev_change {
                v["prev-change-id"] = json!(c.to_string());
            }
            v
        })
        .collect();
    sync(json!(list))
}

fn get_changes(sh: &Arc<Shared>, query: &[(String, String)]) -> Response<Full<Bytes>> {
    let select = param(query, "select").unwrap_or("in-progress");
    let inner = sh.lock();
    let wanted = |c: &Change| match select {
        "all" => Some(true),
        "in-progress" => Some(c.ready_time.is_none()),
        "ready" => Some(c.ready_time.is_some()),
        _ => None,
    };
    let mut list = Vec::new();
    for (id, c) in &inner.changes {
        match wanted(c) {
            None => return bad_request("select should be one of: all,in-progress,ready"),
            Some(true) => list.push(c.to_json(*id)),
            Some(false) => {}
        }
    }
    sync(json!(list))
}

/// Pebble's `v1GetChangeWait`: the change once ready; 504 when `timeout` runs out first.
async fn wait_change(sh: &Arc<Shared>, id: &str, query: &[(String, String)]) -> Response<Full<Bytes>> {
    let text = param(query, "timeout").unwrap_or("").to_string();
    let (number, mut ready, timeout) = {
        let mut inner = sh.lock();
        let parsed = if text.is_empty() {
            Ok(Duration::ZERO)
        } else {
            parse_go_duration(&text)
        };
        if !parsed.as_ref().is_ok_and(|d| !d.is_zero()) {
            // Pebble would wait forever (or refuse): a client should bound its wait
            inner.waits_without_timeout += 1;
        }
        let Some((number, change)) = id
            .parse::<u64>()
            .ok()
            .and_then(|n| inner.changes.get(&n).map(|c| (n, c)))
        else {
            return error(StatusCode::NOT_FOUND, &format!("cannot find change with id {id:?}"));
        };
        let timeout = match parsed {
            Ok(t) => t,
            Err(e) => return bad_request(&format!("invalid timeout: {e}")),
        };
        let ready = change.ready.subscribe();
        if inner.slow_waits > 0 {
            inner.slow_waits -= 1;
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("timed out waiting for change after {}", go_duration(timeout)),
            );
        }
        (number, ready, timeout)
    };
    let until_ready = async move {
        let _ = ready.wait_for(|r| *r).await;
    };
    if timeout.is_zero() {
        until_ready.await;
    } else if tokio::time::timeout(timeout, until_ready).await.is_err() {
        return error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("timed out waiting for change after {}", go_duration(timeout)),
        );
    }
    let inner = sh.lock();
    sync(inner.changes[&number].to_json(number))
}
