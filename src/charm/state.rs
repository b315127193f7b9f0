//! The world as this event sees it, read once and validated into one typed [`CharmState`]:
//! config, leadership, the `backup` relation (the provider's databag, with credentials from the
//! Juju secret named by `secret-extra` when the provider sent them that way), and the backup
//! passphrase (from `backup_passphrase`, or from the user secret in `backup_passphrase_secret`,
//! which wins). Handlers then act on this value and never call a hook tool to read.
//!
//! Problems the operator can fix (a bad S3 setting, an ungranted secret) are values here, not
//! errors: handlers turn them into a blocked status or an action failure. Only a hook tool that
//! fails unexpectedly is an error.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::juju::{Event, HookTools, JujuContext, ToolError};
use crate::secret::Passphrase;
use crate::store::s3::{S3ConfigError, S3Params};

/// The endpoint s3-integrator is integrated on (`juju integrate synapse:backup s3-integrator`).
pub const ENDPOINT: &str = "backup";
/// Defaults when the option is unset (Juju fills in config.yaml's defaults, which say the same).
pub const DEFAULT_SYNAPSE_CONFIG: &str = "/data/homeserver.yaml";
pub const DEFAULT_SYNAPSE_SERVICE: &str = "pebble:synapse";
pub const DEBIAN_SYNAPSE_CONFIG: &str = "/etc/matrix-synapse/homeserver.yaml,/etc/matrix-synapse/conf.d";
pub const DEBIAN_SYNAPSE_SERVICE: &str = "systemd:matrix-synapse.service";

/// Config option names, as in `config.yaml`.
pub mod option {
    pub const PASSPHRASE: &str = "backup_passphrase";
    pub const PASSPHRASE_SECRET: &str = "backup_passphrase_secret";
    pub const SYNAPSE_CONFIG: &str = "synapse_config";
    pub const SYNAPSE_SERVICE: &str = "synapse_service";
    pub const KEEP_LAST: &str = "backup_keep_last";
    pub const FULL_EVERY_DAYS: &str = "backup_full_every_days";
    pub const HEALTH_TIMEOUT: &str = "synapse_health_timeout";
    /// Kubernetes charm only: the new server's name, and whether it reports usage statistics.
    pub const SERVER_NAME: &str = "server_name";
    pub const REPORT_STATS: &str = "report_stats";
}

/// Which of the two charms built from this binary is running (its `metadata.yaml` says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The `synapse` application on Kubernetes: a sidecar that runs Synapse in its workload
    /// container (metadata.yaml has `containers`).
    Sidecar,
    /// `synapse-backup` on machines, a subordinate beside a Debian-packaged Synapse.
    Subordinate,
}

impl Flavour {
    /// From the charm's `metadata.yaml`; a charm directory without one is a subordinate (it runs
    /// nothing itself).
    pub fn of_charm(charm_dir: Option<&std::path::Path>) -> Flavour {
        let metadata = charm_dir.and_then(|d| std::fs::read_to_string(d.join("metadata.yaml")).ok());
        let has_containers = metadata
            .and_then(|m| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&m).ok())
            .and_then(|v| v.get("containers").cloned())
            .is_some_and(|c| c.as_mapping().is_some_and(|m| !m.is_empty()));
        if has_containers {
            Flavour::Sidecar
        } else {
            Flavour::Subordinate
        }
    }
}

/// The key of the passphrase inside the user secret named by `backup_passphrase_secret`.
pub const PASSPHRASE_SECRET_KEY: &str = "passphrase";

/// Provider databag keys that are the s3 library's bookkeeping, not S3 settings.
const PROVIDER_BOOKKEEPING: [&str; 3] = ["data", "lib-version", "secret-extra"];
const CREDENTIAL_KEYS: [&str; 2] = ["access-key", "secret-key"];

#[derive(Debug)]
pub struct CharmState {
    /// `synapse` (from the unit name).
    pub app: String,
    pub flavour: Flavour,
    /// `server_name` (Kubernetes): the name a new server is given.
    pub server_name: Option<String>,
    /// `report_stats` (Kubernetes): written into a new server's config.
    pub report_stats: bool,
    pub leader: bool,
    /// `synapse_config`: comma-separated Synapse config files or directories.
    pub synapse_config: String,
    /// `synapse_service`: how a restore stops and starts Synapse (`pebble:…`, `systemd:…`, `none`).
    pub synapse_service: String,
    /// `backup_keep_last`: how many backups to keep after a create (0 = all; negative is invalid).
    pub keep_last: i64,
    /// `backup_full_every_days`: create-backup type=auto makes a full when the newest is this old.
    pub full_every_days: i64,
    /// `synapse_health_timeout`: seconds Synapse may take to answer `/health` after a restore.
    pub health_timeout: i64,
    pub passphrase: Result<Passphrase, PassphraseProblem>,
    pub backup: Option<BackupRelation>,
}

/// Why there is no passphrase; `Display` says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PassphraseProblem {
    #[error(
        "Missing backup_passphrase config option. Set it with `juju config {app} backup_passphrase=…`, or put it in a \
         user secret (key `passphrase`) and set backup_passphrase_secret to the secret's URI."
    )]
    Missing { app: String },
    #[error(
        "cannot read the secret {uri} named by backup_passphrase_secret ({reason}). Grant it to the application: \
         `juju grant-secret {uri} {app}`."
    )]
    SecretUnreadable { uri: String, app: String, reason: String },
    #[error(
        "the secret {uri} named by backup_passphrase_secret has no non-empty key `passphrase`: \
         `juju update-secret {uri} passphrase=…`."
    )]
    SecretWithoutPassphrase { uri: String },
}

/// The `backup` relation with s3-integrator.
#[derive(Debug)]
pub struct BackupRelation {
    /// `backup:3`.
    pub id: String,
    pub remote_app: Option<String>,
    /// The provider runs the track-2 library (it wrote `lib-version`).
    pub provider_is_track2: bool,
    /// The provider's databag holds no setting at all yet.
    pub provider_is_empty: bool,
    /// The provider's databag names a bucket.
    pub provider_has_bucket: bool,
    /// Our own application's databag; read only when we are the leader (Juju allows no one else).
    pub own: Option<BTreeMap<String, String>>,
    pub s3: S3Settings,
}

/// What the provider's databag says about S3.
#[derive(Debug)]
pub enum S3Settings {
    /// No credentials yet: the provider has not answered.
    AwaitingCredentials,
    /// The settings are unusable: `<databag key>: <why>` (never a secret's value).
    Invalid(String),
    Ready(Box<S3Params>),
}

impl CharmState {
    /// Reads everything this event needs, once.
    pub fn load(tools: &HookTools, ctx: &JujuContext, event: &Event) -> Result<CharmState, ToolError> {
        let app = ctx.app_name().to_string();
        let config = tools.config_get()?;
        let leader = tools.is_leader()?;
        let flavour = Flavour::of_charm(ctx.charm_dir.as_deref());
        let (default_config, default_service) = match flavour {
            Flavour::Sidecar => (DEFAULT_SYNAPSE_CONFIG, DEFAULT_SYNAPSE_SERVICE),
            Flavour::Subordinate => (DEBIAN_SYNAPSE_CONFIG, DEBIAN_SYNAPSE_SERVICE),
        };
        let synapse_config =
            string_option(&config, option::SYNAPSE_CONFIG).unwrap_or_else(|| default_config.to_string());
        let synapse_service =
            string_option(&config, option::SYNAPSE_SERVICE).unwrap_or_else(|| default_service.to_string());
        let keep_last = config.get(option::KEEP_LAST).and_then(Value::as_i64).unwrap_or(0);
        let full_every_days = config
            .get(option::FULL_EVERY_DAYS)
            .and_then(Value::as_i64)
            .unwrap_or((crate::commands::create::DEFAULT_FULL_EVERY.as_secs() / 86400) as i64);
        let health_timeout = config
            .get(option::HEALTH_TIMEOUT)
            .and_then(Value::as_i64)
            .unwrap_or(crate::commands::restore::DEFAULT_HEALTH_TIMEOUT.as_secs() as i64);
        let server_name = string_option(&config, option::SERVER_NAME).map(|s| s.trim().to_string());
        let report_stats = config
            .get(option::REPORT_STATS)
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let passphrase = load_passphrase(tools, ctx, &config, &app);
        let backup = load_backup_relation(tools, ctx, event, &app, leader)?;
        Ok(CharmState {
            app,
            flavour,
            server_name,
            report_stats,
            leader,
            synapse_config,
            synapse_service,
            keep_last,
            full_every_days,
            health_timeout,
            passphrase,
            backup,
        })
    }
}

fn string_option(config: &Map<String, Value>, name: &str) -> Option<String> {
    match config.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Is this the `secret-changed` of the secret at `uri`? Then we read its new revision.
fn changed_secret(ctx: &JujuContext, uri: &str) -> bool {
    let id = |u: &str| u.rsplit(['/', ':']).next().unwrap_or_default().to_string();
    ctx.secret_id.as_deref().is_some_and(|changed| id(changed) == id(uri))
}

fn load_passphrase(
    tools: &HookTools,
    ctx: &JujuContext,
    config: &Map<String, Value>,
    app: &str,
) -> Result<Passphrase, PassphraseProblem> {
    if let Some(uri) = string_option(config, option::PASSPHRASE_SECRET) {
        let uri = uri.trim().to_string();
        let content =
            tools
                .secret_get(&uri, changed_secret(ctx, &uri))
                .map_err(|e| PassphraseProblem::SecretUnreadable {
                    uri: uri.clone(),
                    app: app.to_string(),
                    reason: e.message(),
                })?;
        return content
            .get(PASSPHRASE_SECRET_KEY)
            .filter(|p| !p.is_empty())
            .cloned()
            .ok_or(PassphraseProblem::SecretWithoutPassphrase { uri });
    }
    match config.get(option::PASSPHRASE) {
        Some(Value::String(s)) if !s.is_empty() => Ok(Passphrase::new(s)),
        _ => Err(PassphraseProblem::Missing { app: app.to_string() }),
    }
}

fn load_backup_relation(
    tools: &HookTools,
    ctx: &JujuContext,
    event: &Event,
    app: &str,
    leader: bool,
) -> Result<Option<BackupRelation>, ToolError> {
    // In `-relation-broken` Juju still lists the relation being removed: it is gone for us.
    let broken = match event {
        Event::Hook(h) if h == &format!("{ENDPOINT}-relation-broken") => ctx.relation_id.clone(),
        _ => None,
    };
    let Some(id) = tools
        .relation_ids(ENDPOINT)?
        .into_iter()
        .find(|id| Some(id) != broken.as_ref())
    else {
        return Ok(None);
    };
    let remote_app = match (&ctx.relation_id, &ctx.remote_app) {
        (Some(rid), Some(remote)) if rid == &id => Some(remote.clone()),
        _ => tools.relation_remote_app(&id)?,
    };
    let provider = match &remote_app {
        Some(remote) => tools.relation_get_app(&id, remote)?,
        None => BTreeMap::new(),
    };
    let own = if leader {
        Some(tools.relation_get_app(&id, app)?)
    } else {
        None
    };
    let provider_is_track2 = provider.get("lib-version").is_some_and(|v| !v.is_empty());
    let provider_is_empty = provider.values().all(|v| v.is_empty());
    let provider_has_bucket = provider.get("bucket").is_some_and(|v| !v.is_empty());
    let s3 = s3_settings(tools, ctx, provider);
    Ok(Some(BackupRelation {
        id,
        remote_app,
        provider_is_track2,
        provider_is_empty,
        provider_has_bucket,
        own,
        s3,
    }))
}

/// The provider's settings with credentials in place (from the databag, or from the secret
/// named by `secret-extra`), parsed by the S3 store's own parser.
fn s3_settings(tools: &HookTools, ctx: &JujuContext, provider: BTreeMap<String, String>) -> S3Settings {
    let mut settings: BTreeMap<String, String> = provider
        .iter()
        .filter(|(k, v)| !v.is_empty() && !PROVIDER_BOOKKEEPING.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(uri) = provider.get("secret-extra").filter(|v| !v.is_empty()) {
        match tools.secret_get(uri, changed_secret(ctx, uri)) {
            Ok(content) => {
                for key in CREDENTIAL_KEYS {
                    if let Some(value) = content.get(key) {
                        settings.insert(key.to_string(), value.expose(str::to_string));
                    }
                }
            }
            Err(e) => {
                return S3Settings::Invalid(format!(
                    "secret-extra: cannot read the credentials secret ({})",
                    e.message()
                ))
            }
        }
    }
    if CREDENTIAL_KEYS.iter().all(|k| !settings.contains_key(*k)) {
        return S3Settings::AwaitingCredentials;
    }
    match S3Params::from_map(&settings) {
        Ok(params) => S3Settings::Ready(Box::new(params)),
        Err(e) => S3Settings::Invalid(describe_s3_config_error(&e)),
    }
}

/// `<key>: <why>`: the databag key at fault first, as the blocked status shows it.
fn describe_s3_config_error(e: &S3ConfigError) -> String {
    match e {
        S3ConfigError::Missing(key) => format!("{key}: missing"),
        S3ConfigError::Invalid { key, reason } => format!("{key}: {reason}"),
    }
}
