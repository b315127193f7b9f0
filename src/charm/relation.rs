//! The `backup` relation with s3-integrator, as requirer: ask the provider for credentials in the
//! way both of its generations understand, and keep the unit's status saying whether backups can
//! work (the bucket is checked on every change).
//!
//! What we write (leader only, never in `-relation-broken`): `requested-secrets` and `lib-version`
//! for track-2 providers, which then send the credentials in a Juju secret named by
//! `secret-extra`. Track-1 providers ignore those and answer only once a `bucket` appears (or
//! when the operator pushes credentials with `sync-s3-credentials`), but a track-2 provider
//! creates whatever bucket we write, made up or not. So, as the track-2 library itself does, a
//! made-up bucket is written only as a nudge: when the provider's databag is non-empty (it has
//! answered something) and has no `lib-version` (so it is track 1), and again in any later hook
//! whenever that provider's data still names no bucket. An empty databag may be a track-2
//! provider that has not written yet: it is never nudged.

use std::collections::BTreeMap;

use super::state::{BackupRelation, CharmState, PassphraseProblem, S3Settings, ENDPOINT};
use crate::commands::owner;
use crate::juju::{Event, HookTools, JujuContext, LogLevel, Status, StatusKind, ToolError};
use crate::store::s3::S3Store;
use crate::store::ObjectStore;

pub const INVALID_CONFIG: &str = "Backup: S3 configuration is invalid";
pub const BUCKET_UNUSABLE: &str = "Backup: S3 bucket does not exist or cannot be accessed";

const REQUESTED_SECRETS: &str = r#"["access-key", "secret-key"]"#;
const LIB_VERSION: &str = "1.0";

/// Writes what the provider needs, then sets the status: the workload's (Kubernetes: the Synapse
/// the charm runs) while it is not active, else whether backups can work.
pub fn reconcile(
    tools: &HookTools,
    ctx: &JujuContext,
    event: &Event,
    state: &CharmState,
    workload: Option<Status>,
) -> Result<(), ToolError> {
    if let Some(relation) = &state.backup {
        if state.leader && !is_broken(event) {
            request_credentials(tools, ctx, relation)?;
        }
    }
    let status = match workload {
        Some(w) if w.kind != StatusKind::Active => w,
        _ => status(tools, state),
    };
    tools.status_set(&status)
}

fn is_broken(event: &Event) -> bool {
    matches!(event, Event::Hook(h) if h == &format!("{ENDPOINT}-relation-broken"))
}

fn request_credentials(tools: &HookTools, ctx: &JujuContext, relation: &BackupRelation) -> Result<(), ToolError> {
    let own = relation.own.clone().unwrap_or_default();
    let mut wanted = BTreeMap::from([
        ("requested-secrets".to_string(), REQUESTED_SECRETS.to_string()),
        ("lib-version".to_string(), LIB_VERSION.to_string()),
    ]);
    let needs_nudge = !relation.provider_is_empty && !relation.provider_is_track2 && !relation.provider_has_bucket;
    if needs_nudge {
        let bucket = nudge_bucket_name(&ctx.model_name, ctx.app_name());
        tools.log(
            LogLevel::Info,
            &format!("the provider looks like s3-integrator track 1: asking for bucket {bucket}"),
        )?;
        wanted.insert("bucket".to_string(), bucket);
    }
    wanted.retain(|k, v| own.get(k) != Some(v));
    if wanted.is_empty() {
        return Ok(());
    }
    tools.relation_set_app(&relation.id, &wanted)
}

/// A bucket name for track-1 providers that wait for one: `<model>-<app>-backups`, made to fit
/// S3's rules (lowercase letters, digits and '-', 3..63 characters). The provider's own `bucket`
/// setting wins over it.
pub fn nudge_bucket_name(model: &str, app: &str) -> String {
    let raw = format!("{model}-{app}-backups").to_ascii_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').to_string();
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// What the unit's status should say now.
pub fn status(tools: &HookTools, state: &CharmState) -> Status {
    let mut shared = String::new();
    if let Some(relation) = &state.backup {
        match &relation.s3 {
            S3Settings::AwaitingCredentials => {
                let from = relation.remote_app.as_deref().unwrap_or("the S3 integrator");
                return Status::new(
                    StatusKind::Waiting,
                    format!("Backup: waiting for S3 credentials from {from}"),
                );
            }
            S3Settings::Invalid(detail) => {
                return Status::new(StatusKind::Blocked, format!("{INVALID_CONFIG} ({detail})"));
            }
            S3Settings::Ready(params) => {
                let checked = S3Store::new((**params).clone()).map_err(|e| (INVALID_CONFIG, e.to_string()));
                let checked = checked.and_then(|store| {
                    store.check().map_err(|e| (BUCKET_UNUSABLE, e.to_string()))?;
                    Ok(store)
                });
                if let Ok(store) = &checked {
                    shared = shared_path_note(tools, state, store);
                }
                if let Err((what, detail)) = checked {
                    let _ = tools.log(LogLevel::Warning, &format!("{what}: {detail}"));
                    let message = if what == INVALID_CONFIG {
                        format!("{INVALID_CONFIG} ({detail})")
                    } else {
                        BUCKET_UNUSABLE.to_string()
                    };
                    return Status::new(StatusKind::Blocked, message);
                }
            }
        }
    }
    match &state.passphrase {
        Err(p @ (PassphraseProblem::SecretUnreadable { .. } | PassphraseProblem::SecretWithoutPassphrase { .. })) => {
            Status::new(StatusKind::Blocked, format!("Backup: {p}"))
        }
        _ => Status::new(StatusKind::Active, shared),
    }
}

/// Sharing a bucket path is legitimate, but the operator should know whose backups are there:
/// retention and delete leave them alone. Empty when only this server's are.
fn shared_path_note(tools: &HookTools, state: &CharmState, store: &dyn ObjectStore) -> String {
    let paths = crate::synapse::config::parse_path_list(&state.synapse_config);
    let (Ok(synapse), Ok(list)) = (crate::synapse::SynapseConfig::load(&paths), store.list()) else {
        return String::new();
    };
    let others = owner::other_servers(&list, &synapse.server_name);
    if others.is_empty() {
        return String::new();
    }
    let names = owner::names(&others);
    let _ = tools.log(
        LogLevel::Info,
        &format!(
            "the bucket path {} also holds backups of other servers ({names}); retention and delete-backup leave them alone",
            store.location()
        ),
    );
    format!("Backup: the bucket path also holds backups of {names}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nudge_bucket_names_fit_s3_rules() {
        assert_eq!(nudge_bucket_name("prod", "synapse"), "prod-synapse-backups");
        assert_eq!(nudge_bucket_name("My_Model", "synapse"), "my-model-synapse-backups");
        let long = nudge_bucket_name(&"m".repeat(80), "synapse");
        assert!(long.len() <= 63 && !long.ends_with('-'));
    }
}
