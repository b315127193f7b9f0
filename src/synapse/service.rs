//! Stopping and starting Synapse around a restore (replacing its database or signing key under a
//! running server corrupts it). Backups never stop it.
//!
//! Which Synapse to control is a [`ServiceSpec`], the `synapse_service` option (and the CLI's
//! `--service`): `pebble:<service>[@<socket>]` for a Kubernetes sidecar charm (Pebble's HTTP API on
//! the workload container's unix socket), `systemd:<unit>` for machine deployments, or `none`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use super::pebble::PebbleClient;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

pub trait ServiceControl {
    /// For messages: `pebble:synapse`, `systemd:matrix-synapse.service`, `none`.
    fn describe(&self) -> String;
    fn stop(&self) -> Result<(), ServiceError>;
    fn start(&self) -> Result<(), ServiceError>;
    /// Does this really stop and start Synapse? (`none` does not: nothing is started after a
    /// restore, and Synapse must be seen not to run before one.)
    fn controls_synapse(&self) -> bool {
        true
    }
}

/// Synapse is not ours to control (the operator stopped it, or it runs elsewhere).
pub struct NoService;

impl ServiceControl for NoService {
    fn describe(&self) -> String {
        "none".into()
    }
    fn stop(&self) -> Result<(), ServiceError> {
        Ok(())
    }
    fn start(&self) -> Result<(), ServiceError> {
        Ok(())
    }
    fn controls_synapse(&self) -> bool {
        false
    }
}

/// Where the workload container's Pebble listens, seen from a Kubernetes sidecar charm's container.
pub const DEFAULT_PEBBLE_SOCKET: &str = "/charm/containers/synapse/pebble.socket";
/// Pebble's own variable for its socket; used when the spec names no socket.
pub const PEBBLE_SOCKET_ENV: &str = "PEBBLE_SOCKET";

/// How Synapse is run, parsed from `pebble:<service>[@<socket>]`, `systemd:<unit>` or `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceSpec {
    Pebble { service: String, socket: PathBuf },
    Systemd { unit: String },
    None,
}

impl ServiceSpec {
    /// Parses with `pebble_socket` as the socket for a spec that names none (`$PEBBLE_SOCKET`, else
    /// [`DEFAULT_PEBBLE_SOCKET`]).
    pub fn parse_with_default_socket(s: &str, pebble_socket: &Path) -> Result<Self, ServiceError> {
        let s = s.trim();
        let invalid = |why: &str| {
            ServiceError(format!(
                "invalid Synapse service {s:?}: {why} (expected pebble:<service>[@<socket path>], systemd:<unit> or none)"
            ))
        };
        if s == "none" {
            return Ok(ServiceSpec::None);
        }
        if let Some(rest) = s.strip_prefix("pebble:") {
            let (service, socket) = match rest.split_once('@') {
                Some((service, socket)) => (service, PathBuf::from(socket)),
                None => (rest, pebble_socket.to_path_buf()),
            };
            if !is_plain_name(service) {
                return Err(invalid("the Pebble service name is empty or has spaces, commas or '@'"));
            }
            if !socket.is_absolute() {
                return Err(invalid("the Pebble socket must be an absolute path"));
            }
            return Ok(ServiceSpec::Pebble {
                service: service.to_string(),
                socket,
            });
        }
        if let Some(unit) = s.strip_prefix("systemd:") {
            if !is_plain_name(unit) || unit.starts_with('-') {
                return Err(invalid("the systemd unit name is empty, starts with '-' or has spaces"));
            }
            return Ok(ServiceSpec::Systemd { unit: unit.to_string() });
        }
        Err(invalid("unknown kind"))
    }
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '@')
}

impl FromStr for ServiceSpec {
    type Err = ServiceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let socket = std::env::var_os(PEBBLE_SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PEBBLE_SOCKET));
        Self::parse_with_default_socket(s, &socket)
    }
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceSpec::Pebble { service, socket } => write!(f, "pebble:{service}@{}", socket.display()),
            ServiceSpec::Systemd { unit } => write!(f, "systemd:{unit}"),
            ServiceSpec::None => f.write_str("none"),
        }
    }
}

pub fn from_spec(spec: &ServiceSpec) -> Box<dyn ServiceControl> {
    match spec {
        ServiceSpec::Pebble { service, socket } => Box::new(Pebble::new(socket, service)),
        ServiceSpec::Systemd { unit } => Box::new(Systemd { unit: unit.clone() }),
        ServiceSpec::None => Box::new(NoService),
    }
}

/// A service in a Pebble plan, stopped and started through Pebble's HTTP API on its unix socket
/// (see [`super::pebble`]): each action is a change, waited for until it is ready.
pub struct Pebble {
    client: PebbleClient,
    service: String,
}

impl Pebble {
    pub fn new(socket: impl Into<PathBuf>, service: impl Into<String>) -> Self {
        Pebble {
            client: PebbleClient::new(socket),
            service: service.into(),
        }
    }

    fn act(&self, action: &str) -> Result<(), ServiceError> {
        self.client.service_action(action, &self.service)
    }
}

impl ServiceControl for Pebble {
    fn describe(&self) -> String {
        format!("pebble:{}", self.service)
    }
    fn stop(&self) -> Result<(), ServiceError> {
        self.act("stop")
    }
    fn start(&self) -> Result<(), ServiceError> {
        self.act("start")
    }
}

/// A systemd unit, stopped and started with `systemctl` (which waits for the job to finish).
pub struct Systemd {
    unit: String,
}

impl Systemd {
    fn systemctl(&self, verb: &str) -> Result<(), ServiceError> {
        let out = Command::new("systemctl")
            .args([verb, "--", &self.unit])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| ServiceError(format!("cannot run systemctl: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.trim();
        Err(ServiceError(format!(
            "systemctl {verb} {} failed ({}){}{why}",
            self.unit,
            out.status,
            if why.is_empty() { "" } else { ": " }
        )))
    }
}

impl ServiceControl for Systemd {
    fn describe(&self) -> String {
        format!("systemd:{}", self.unit)
    }
    fn stop(&self) -> Result<(), ServiceError> {
        self.systemctl("stop")
    }
    fn start(&self) -> Result<(), ServiceError> {
        self.systemctl("start")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ServiceSpec, ServiceError> {
        ServiceSpec::parse_with_default_socket(s, Path::new("/run/pebble.socket"))
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(parse("none").unwrap(), ServiceSpec::None);
        assert_eq!(
            parse("pebble:synapse").unwrap(),
            ServiceSpec::Pebble {
                service: "synapse".into(),
                socket: "/run/pebble.socket".into()
            }
        );
        assert_eq!(
            parse("pebble:synapse@/charm/containers/other/pebble.socket").unwrap(),
            ServiceSpec::Pebble {
                service: "synapse".into(),
                socket: "/charm/containers/other/pebble.socket".into()
            }
        );
        assert_eq!(
            parse(" systemd:matrix-synapse.service ").unwrap(),
            ServiceSpec::Systemd {
                unit: "matrix-synapse.service".into()
            }
        );
        let spec = parse("pebble:synapse").unwrap();
        assert_eq!(parse(&spec.to_string()).unwrap(), spec);
    }

    #[test]
    fn refuses_what_it_cannot_control_with_a_hint() {
        for bad in [
            "",
            "synapse",
            "pebble:",
            "pebble:a b",
            "pebble:synapse@relative.sock",
            "systemd:",
            "systemd:--now",
            "docker:synapse",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected pebble:<service>"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn works_when_called_from_async_code_too() {
        let dir = tempfile::tempdir().unwrap();
        let pebble = Pebble::new(dir.path().join("missing.socket"), "synapse");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let e = rt.block_on(async { pebble.stop() }).unwrap_err().to_string();
        assert!(e.contains("cannot connect"), "{e}");
    }

    #[test]
    fn the_default_socket_is_the_sidecar_charms() {
        if std::env::var_os(PEBBLE_SOCKET_ENV).is_none() {
            assert_eq!(
                "pebble:synapse".parse::<ServiceSpec>().unwrap().to_string(),
                "pebble:synapse@/charm/containers/synapse/pebble.socket"
            );
        }
    }
}
