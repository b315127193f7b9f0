//! On Kubernetes the charm *is* the Synapse application: a sidecar whose workload container runs
//! the official Synapse image under Pebble, with the `data` storage at `/data` in both containers.
//! Only the pod that owns `/data` can back it up, so the charm that backs Synapse up also runs it.
//!
//! On every status hook (and `synapse-pebble-ready`, `data-storage-attached`):
//! 1. the first time, write `homeserver.yaml` (SQLite, local media, one HTTP listener on 8008, its
//!    own secrets) and a signing key, owned so that Synapse's user (991) can use them; an existing
//!    config is never rewritten, and a `server_name` option that disagrees with it is refused
//!    (it would change the server's identity);
//! 2. add the Pebble layer (service `synapse` as 991:991, an HTTP check on `/health`) and replan:
//!    layers live in Pebble's memory only, so this is done again after every container restart;
//! 3. wait a little for `/health`, then report: active once Synapse answers, maintenance while it
//!    starts. The workload version comes from Synapse itself.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::state::{option, CharmState};
use crate::archive::handle::DirHandle;
use crate::juju::{HookTools, LogLevel, Status, StatusKind};
use crate::synapse::pebble::PebbleClient;
use crate::synapse::service::{ServiceSpec, DEFAULT_PEBBLE_SOCKET};
use crate::synapse::{generate, health, SynapseConfig};

/// The Pebble service and check the layer defines.
pub const SERVICE: &str = "synapse";
pub const READY_CHECK: &str = "synapse-ready";
const LAYER_LABEL: &str = "synapse";
/// Synapse's user and group in the official image.
pub const SYNAPSE_UID: u32 = 991;
pub const SYNAPSE_GID: u32 = 991;
/// The official image's Python.
pub const IMAGE_PYTHON: &str = "/usr/local/bin/python";
/// How long a hook waits for a starting Synapse before it leaves the status to a later hook.
const START_WAIT: Duration = Duration::from_secs(60);

/// Brings the workload to the configured state; the workload's part of the unit status.
pub fn reconcile(tools: &HookTools, state: &CharmState) -> Status {
    match Sidecar::new(state).and_then(|s| s.reconcile(tools, state)) {
        Ok(status) | Err(status) => status,
    }
}

struct Sidecar {
    pebble: PebbleClient,
    config_path: PathBuf,
    data_dir: PathBuf,
}

impl Sidecar {
    fn new(state: &CharmState) -> Result<Self, Status> {
        let socket = match state.synapse_service.parse::<ServiceSpec>() {
            Ok(ServiceSpec::Pebble { socket, .. }) => socket,
            _ => PathBuf::from(DEFAULT_PEBBLE_SOCKET),
        };
        let paths = crate::synapse::config::parse_path_list(&state.synapse_config);
        let Some(config_path) = paths.first().cloned() else {
            return Err(blocked(format!("{} is empty", option::SYNAPSE_CONFIG)));
        };
        let data_dir = config_path.parent().unwrap_or(Path::new("/")).to_path_buf();
        Ok(Sidecar {
            pebble: PebbleClient::new(socket),
            config_path,
            data_dir,
        })
    }

    fn reconcile(&self, tools: &HookTools, state: &CharmState) -> Result<Status, Status> {
        if !self.pebble.socket().exists() || self.pebble.services(&[]).is_err() {
            return Err(Status::new(
                StatusKind::Waiting,
                "waiting for the Synapse container (its Pebble is not answering yet)",
            ));
        }
        if !self.data_dir.is_dir() {
            return Err(Status::new(
                StatusKind::Waiting,
                format!("waiting for the data storage at {}", self.data_dir.display()),
            ));
        }
        let cfg = self.ensure_config(tools, state)?;
        let layer = layer(&self.config_path);
        self.pebble
            .add_layer(LAYER_LABEL, &layer)
            .and_then(|()| self.pebble.replan())
            .map_err(|e| {
                let _ = tools.log(LogLevel::Error, &format!("starting Synapse: {e}"));
                blocked(format!("Synapse could not be started through Pebble: {e}"))
            })?;
        let Some(listener) = &cfg.listener else {
            return Ok(Status::active());
        };
        match health::wait_healthy(listener, START_WAIT) {
            Ok(_) => {
                if let Some(version) = health::version(listener) {
                    let _ = tools.application_version_set(&version);
                }
                Ok(Status::active())
            }
            Err(why) => {
                let _ = tools.log(LogLevel::Info, &why);
                Err(Status::new(
                    StatusKind::Maintenance,
                    "Synapse is starting (it answers /health once its database is ready)",
                ))
            }
        }
    }

    /// The existing config, or the one written now for a new server.
    fn ensure_config(&self, tools: &HookTools, state: &CharmState) -> Result<SynapseConfig, Status> {
        let wanted = state.server_name.as_deref();
        if self.config_path.exists() {
            let cfg = SynapseConfig::load(std::slice::from_ref(&self.config_path))
                .map_err(|e| blocked(format!("cannot read {}: {e}", self.config_path.display())))?;
            if let Some(wanted) = wanted.filter(|w| *w != cfg.server_name) {
                return Err(blocked(format!(
                    "server_name is {:?} but this Synapse is {:?}: changing it would change the server's identity; set it back with `juju config {} server_name={}`",
                    wanted, cfg.server_name, state.app, cfg.server_name
                )));
            }
            return Ok(cfg);
        }
        let Some(server_name) = wanted else {
            return Err(blocked(format!(
                "set the server's name to start Synapse: `juju config {} server_name=<domain>` (it names the server for good)",
                state.app
            )));
        };
        self.write_new_server(server_name, state.report_stats).map_err(|e| {
            blocked(format!(
                "cannot write Synapse's first config in {}: {e}",
                self.data_dir.display()
            ))
        })?;
        let _ = tools.log(
            LogLevel::Info,
            &format!(
                "wrote {} and a signing key for {server_name}",
                self.config_path.display()
            ),
        );
        SynapseConfig::load(std::slice::from_ref(&self.config_path))
            .map_err(|e| blocked(format!("cannot read {}: {e}", self.config_path.display())))
    }

    /// A new server's files, owned so that Synapse's user can use them; the config last (its
    /// presence means "configured").
    fn write_new_server(&self, server_name: &str, report_stats: bool) -> std::io::Result<()> {
        let as_root = rustix::process::geteuid().is_root();
        let synapse = as_root.then_some((SYNAPSE_UID, SYNAPSE_GID));
        let dir = DirHandle::open(&self.data_dir)?;
        // Synapse makes its database and media shards here
        if let Some(owner) = synapse {
            dir.set_owner_and_mode(Some(owner), 0o755)?;
        }
        let (media, _) = dir.make_child(OsStr::new("media_store"), 0o755)?;
        media.set_owner_and_mode(synapse, 0o755)?;
        let key = generate::signing_key_path(server_name, &self.data_dir);
        if !key.exists() {
            let name = key.file_name().unwrap_or_default();
            write_file(&dir, name, generate::signing_key()?.as_bytes(), synapse, 0o600)?;
        }
        // secrets inside: readable by Synapse's group only
        let yaml = generate::homeserver_yaml(server_name, &self.data_dir, report_stats)?;
        let config_owner = as_root.then_some((0, SYNAPSE_GID));
        let name = self.config_path.file_name().unwrap_or_default();
        write_file(&dir, name, yaml.as_bytes(), config_owner, 0o640)
    }
}

/// Writes `name` in `dir` whole or not at all (a fresh temporary file renamed over it).
fn write_file(dir: &DirHandle, name: &OsStr, body: &[u8], owner: Option<(u32, u32)>, mode: u32) -> std::io::Result<()> {
    let mut tmp = name.to_os_string();
    tmp.push(".charm-tmp");
    if dir.exists(&tmp)? {
        dir.remove_file(&tmp)?;
    }
    let mut f = dir.create_file(&tmp, 0o600)?;
    f.write_all(body)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    dir.rename(&tmp, dir, name)?;
    dir.sync()
}

/// The Pebble layer that runs Synapse from the official image as its own user. The ready check
/// is patient (a first start or an upgrade migrates the database): Pebble restarts Synapse only
/// after ten minutes without an answer.
pub fn layer(config: &Path) -> String {
    let config = config.display();
    format!(
        "summary: Synapse
services:
  {SERVICE}:
    override: replace
    summary: Synapse homeserver
    command: {IMAGE_PYTHON} -m synapse.app.homeserver --config-path {config}
    startup: enabled
    user-id: {SYNAPSE_UID}
    group-id: {SYNAPSE_GID}
    environment:
      SYNAPSE_CONFIG_PATH: {config}
    on-check-failure:
      {READY_CHECK}: restart
checks:
  {READY_CHECK}:
    override: replace
    level: ready
    period: 1m
    timeout: 10s
    threshold: 10
    http:
      url: http://localhost:{port}/health
",
        port = generate::HTTP_PORT
    )
}

fn blocked(message: String) -> Status {
    Status::new(StatusKind::Blocked, message)
}
