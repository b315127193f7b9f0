//! The backup actions: each builds the command's inputs from [`CharmState`], runs the shared
//! command, and answers with `action-set` (kebab-case keys, stable: scripts parse them) or, for a
//! problem the user can fix, `action-fail` with a sentence saying what to do — then exits 0, as a
//! handled failure must.
//!
//! Inputs are checked cheapest first (parameters, passphrase, Synapse's config, then the store),
//! so a mistake is reported before any network traffic. Long actions (create, restore, verify)
//! show a maintenance status while they run and put the previous status back after; their
//! progress goes to `action-log` every few seconds.

use std::time::Duration;

use serde_json::{Map, Value};

use super::service::{backup_choice, retention, synapse_service};
use super::state::{option, CharmState, S3Settings};
use crate::backup_id::BackupId;
use crate::commands::{self, leftovers, owner, prune, restore::left_synapse_stopped, Create, Restore, Verify};
use crate::error::Error;
use crate::juju::{HookTools, LogLevel, Status, StatusKind, ToolError};
use crate::progress::{Progress, ProgressSink, Throttled};
use crate::secret::Passphrase;
use crate::store::s3::S3Store;
use crate::store::{ObjectInfo, ObjectStore, StoreError};
use crate::synapse::config::parse_path_list;
use crate::synapse::SynapseConfig;
use crate::units::{human_bytes, rfc3339};

/// How often a long action reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What an action answers: results, and a failure message when it failed.
#[derive(Debug, Default)]
struct Outcome {
    results: Vec<(String, String)>,
    failure: Option<String>,
}

impl Outcome {
    fn ok(results: Vec<(String, String)>) -> Self {
        Outcome { results, failure: None }
    }
}

impl From<String> for Outcome {
    fn from(failure: String) -> Self {
        Outcome {
            results: Vec::new(),
            failure: Some(failure),
        }
    }
}

fn kv(key: &str, value: impl ToString) -> (String, String) {
    (key.to_string(), value.to_string())
}

pub fn handle(name: &str, tools: &HookTools, state: &CharmState) -> Result<(), ToolError> {
    let params = tools.action_get()?;
    let outcome = match name {
        "create-backup" => create(tools, state, &params),
        "list-backups" => list(state, &params),
        "restore-backup" => restore(tools, state, &params),
        "delete-backup" => delete(state, &params),
        "verify-backup" => verify(tools, state, &params),
        other => Err(format!("unknown action {other:?}")),
    }
    .unwrap_or_else(Outcome::from);
    if !outcome.results.is_empty() {
        tools.action_set(&outcome.results)?;
    }
    if let Some(failure) = &outcome.failure {
        tools.log(LogLevel::Warning, &format!("{name} failed: {failure}"))?;
        tools.action_fail(failure)?;
    }
    Ok(())
}

fn create(tools: &HookTools, state: &CharmState, params: &Map<String, Value>) -> Result<Outcome, String> {
    let policy = retention(state)?;
    let kind = backup_choice(state, params.get("type").and_then(Value::as_str))?;
    let passphrase = passphrase(state)?;
    let synapse = load_synapse(state)?;
    let store = open_store(state, "create-backup")?;
    let report = with_maintenance(tools, "Backup: creating a backup", || {
        Create {
            synapse: &synapse,
            passphrase,
            store: store.as_ref(),
            abandoned_after: leftovers::DEFAULT_ABANDONED_AFTER,
            kind,
        }
        .run(&action_log(tools))
    })?
    .map_err(|e| failure("create-backup", e))?;
    for note in report.notes.iter().chain(&report.skipped_lines()) {
        tools.action_log(&format!("note: {note}")).map_err(|e| e.to_string())?;
    }
    let _ = tools.action_log(&format!(
        "stored {} ({} files, {} in) in {:.1}s",
        human_bytes(report.stored_bytes),
        report.files,
        human_bytes(report.source_bytes),
        report.elapsed.as_secs_f64()
    ));
    let mut results = vec![
        kv("backup-id", &report.id),
        kv("size", report.stored_bytes),
        kv("files", report.files),
        kv("server-name", &report.server_name),
        kv("type", report.kind),
        kv("result", "correct"),
        // entries left out because a restore would refuse them (the log lines above name them)
        kv("skipped", report.skipped_count),
        // what killed creates left, removed (the notes above said so)
        kv("cleaned", ids_or_none(report.cleaned.iter().map(|l| l.id.to_string()))),
        kv("cleaned-bytes", leftovers::known_bytes(&report.cleaned)),
    ];
    if let Some(base) = &report.base {
        results.push(kv("base", base));
        results.push(kv("inherited", report.inherited));
    }
    if !policy.keeps_everything() {
        // the backup is made: a pruning problem is a note, not a failed action
        match prune::run(store.as_ref(), &policy, false, &synapse.server_name) {
            Ok(pruned) => {
                let ids: Vec<String> = pruned.pruned.iter().map(ToString::to_string).collect();
                results.push(kv(
                    "pruned",
                    if ids.is_empty() {
                        "none".to_string()
                    } else {
                        ids.join(",")
                    },
                ));
                for (id, e) in &pruned.failed {
                    let _ = tools.action_log(&format!("note: could not delete expired backup {id}: {e}"));
                }
                if !pruned.other_servers.is_empty() {
                    let _ = tools.action_log(&format!(
                        "note: retention left alone the backups of other servers on this bucket path ({})",
                        pruned.other_servers.join(", ")
                    ));
                }
            }
            Err(e) => {
                let _ = tools.action_log(&format!("note: old backups were not pruned: {e}"));
            }
        }
    }
    Ok(Outcome::ok(results))
}

fn list(state: &CharmState, params: &Map<String, Value>) -> Result<Outcome, String> {
    let all = flag(params, "all");
    let store = open_store(state, "list-backups")?;
    let mut backups = commands::list::run(store.as_ref()).map_err(|e| failure("list-backups", e))?;
    let mut results = Vec::new();
    if let (false, Ok(synapse)) = (all, load_synapse(state)) {
        let others = owner::other_servers(&backups, &synapse.server_name);
        if !others.is_empty() {
            results.push(kv("other-servers", owner::names(&others)));
        }
        backups = owner::visible(backups, &synapse.server_name);
    }
    for b in &backups {
        let prefix = format!("backups.{}", b.id);
        results.push(kv(&format!("{prefix}.last-modified"), rfc3339(b.last_modified)));
        results.push(kv(&format!("{prefix}.size"), b.size));
        if let Some(name) = &b.meta.server_name {
            results.push(kv(&format!("{prefix}.server-name"), name));
        }
        results.push(kv(&format!("{prefix}.type"), b.meta.kind.as_deref().unwrap_or("full")));
        if let Some(base) = &b.meta.base {
            results.push(kv(&format!("{prefix}.base"), base));
        }
    }
    results.push(kv("formatted", formatted_table(&backups)));
    match store.leftovers() {
        Ok(found) => {
            results.push(kv("incomplete-uploads", found.len()));
            results.push(kv("incomplete-bytes", leftovers::known_bytes(&found)));
            let unknown = leftovers::unknown_sizes(&found);
            if unknown > 0 {
                results.push(kv("incomplete-sizes-unknown", unknown));
            }
        }
        Err(e) => {
            results.push(kv("incomplete-uploads", "unknown"));
            results.push(kv("incomplete-note", leftovers::listing_note(e)));
        }
    }
    if let Ok(policy) = retention(state) {
        results.push(kv("retention", policy));
    }
    Ok(Outcome::ok(results))
}

/// `a,b,c`, or `none`.
fn ids_or_none(ids: impl Iterator<Item = String>) -> String {
    let ids: Vec<String> = ids.collect();
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(",")
    }
}

/// A single command-line argument is capped at 128 KiB (Linux's MAX_ARG_STRLEN): past that, the
/// table shows the newest backups and says how many older ones it leaves out (the `backups.*`
/// results still list them all).
const FORMATTED_MAX: usize = 96 * 1024;

fn formatted_table(backups: &[ObjectInfo]) -> String {
    let mut shown = backups;
    let mut table = crate::cli::format_table(shown);
    while table.len() > FORMATTED_MAX && shown.len() > 1 {
        shown = &shown[shown.len() / 2..];
        table = crate::cli::format_table(shown);
    }
    if shown.len() < backups.len() {
        table.push_str(&format!("\n… {} older backups not shown", backups.len() - shown.len()));
    }
    table
}

fn restore(tools: &HookTools, state: &CharmState, params: &Map<String, Value>) -> Result<Outcome, String> {
    let id = backup_id(params)?;
    let passphrase = passphrase(state)?;
    let synapse = load_synapse(state)?;
    let store = open_store(state, "restore-backup")?;
    let service = synapse_service(state)?;
    let health_timeout = super::service::health_timeout(state)?;
    let result = with_maintenance(tools, &format!("Backup: restoring {id}"), || {
        Restore {
            id: &id,
            synapse: &synapse,
            passphrase,
            store: store.as_ref(),
            service: service.as_ref(),
            force: false,
            health_timeout,
            even_if_running: false,
        }
        .run(&action_log(tools))
    })?;
    let report = result.map_err(|e| {
        if left_synapse_stopped(&e) {
            let _ = tools.status_set(&Status::new(
                StatusKind::Blocked,
                format!("Backup: restore of {id} failed and Synapse could not be started; see the action's output"),
            ));
        }
        failure("restore-backup", e)
    })?;
    for note in &report.notes {
        let _ = tools.action_log(&format!("note: {note}"));
    }
    Ok(Outcome::ok(vec![
        kv("backup-id", &report.id),
        kv("files", report.files),
        kv("result", "correct"),
    ]))
}

fn delete(state: &CharmState, params: &Map<String, Value>) -> Result<Outcome, String> {
    let id = backup_id(params)?;
    let force = flag(params, "force");
    let synapse = if force { None } else { Some(load_synapse(state)?) };
    let store = open_store(state, "delete-backup")?;
    let ours = synapse.as_ref().map(|s| s.server_name.as_str());
    match commands::delete::run(store.as_ref(), &id, ours, force) {
        Err(Error::Refused(m)) => Err(m.replace("force the deletion", "run it with force=true")),
        Ok(()) => Ok(Outcome::ok(vec![kv("result", "correct")])),
        Err(e @ Error::Store(StoreError::NotFound(_))) => Ok(Outcome {
            results: vec![kv("result", &e)],
            failure: Some(e.to_string()),
        }),
        Err(e) => Err(failure("delete-backup", e)),
    }
}

/// A boolean action parameter (Juju gives JSON booleans; absent is false).
fn flag(params: &Map<String, Value>, name: &str) -> bool {
    params.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn verify(tools: &HookTools, state: &CharmState, params: &Map<String, Value>) -> Result<Outcome, String> {
    let id = backup_id(params)?;
    let passphrase = passphrase(state)?;
    let store = open_store(state, "verify-backup")?;
    // for an archive without a manifest, the file names this server gives its key and database
    let synapse = load_synapse(state).ok();
    let report = with_maintenance(tools, &format!("Backup: verifying {id}"), || {
        Verify {
            id: &id,
            passphrase,
            store: store.as_ref(),
            synapse: synapse.as_ref(),
        }
        .run(&action_log(tools))
    })?
    .map_err(|e| failure("verify-backup", e))?;
    if !report.manifest_checked {
        let _ =
            tools.action_log("the backup has no manifest (made by another tool): only OpenPGP's integrity check ran");
    }
    Ok(Outcome::ok(vec![
        kv("backup-id", &report.id),
        kv("files", report.files),
        kv("bytes", report.bytes),
        kv(
            "base",
            report.base.as_ref().map_or("none".to_string(), ToString::to_string),
        ),
        kv("result", "correct"),
    ]))
}

// --- inputs ---

fn backup_id(params: &Map<String, Value>) -> Result<BackupId, String> {
    match params.get("backup-id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().parse::<BackupId>().map_err(|e| e.to_string()),
        _ => Err("the backup-id parameter is required: `backup-id=backup-…` (see list-backups)".into()),
    }
}

fn passphrase(state: &CharmState) -> Result<&Passphrase, String> {
    state.passphrase.as_ref().map_err(|p| p.to_string())
}

fn load_synapse(state: &CharmState) -> Result<SynapseConfig, String> {
    SynapseConfig::load(&parse_path_list(&state.synapse_config)).map_err(|e| {
        format!(
            "{e} (check the {} option: `juju config {} {}=…`)",
            option::SYNAPSE_CONFIG,
            state.app,
            option::SYNAPSE_CONFIG
        )
    })
}

/// The store the `backup` relation points at, or why there is none.
fn open_store(state: &CharmState, action: &str) -> Result<Box<dyn ObjectStore>, String> {
    let wrong = |detail: &str| format!("Wrong S3 configuration on {action} action. Check S3 integration: {detail}.");
    let Some(relation) = &state.backup else {
        return Err(format!(
            "No S3 integration: integrate one with `juju integrate {}:backup s3-integrator`.",
            state.app
        ));
    };
    match &relation.s3 {
        S3Settings::AwaitingCredentials => Err(wrong(&format!(
            "{} has not sent credentials yet",
            relation.remote_app.as_deref().unwrap_or("the S3 integrator")
        ))),
        S3Settings::Invalid(detail) => Err(wrong(detail)),
        S3Settings::Ready(params) => match S3Store::new((**params).clone()) {
            Ok(store) => Ok(Box::new(store)),
            Err(e) => Err(wrong(&e.to_string())),
        },
    }
}

/// The sentence an action fails with; store access problems point at the S3 integration.
fn failure(action: &str, e: Error) -> String {
    match &e {
        Error::Store(
            StoreError::BucketMissing(_)
            | StoreError::AccessDenied(_)
            | StoreError::Unreachable(_)
            | StoreError::InvalidConfig(_),
        ) => format!("Wrong S3 configuration on {action} action. Check S3 integration: {e}."),
        _ => e.to_string(),
    }
}

// --- status and progress around long actions ---

/// Runs `f` under a maintenance status, then puts the previous status back (whatever `f` did).
fn with_maintenance<T>(tools: &HookTools, message: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let previous = tools.status_get().ok();
    tools
        .status_set(&Status::new(StatusKind::Maintenance, message))
        .map_err(|e| e.to_string())?;
    let out = f();
    let back = match previous {
        Some(s) if s.kind != StatusKind::Other => s,
        _ => Status::active(),
    };
    tools.status_set(&back).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Progress lines to `juju run`'s terminal:
/// `backing up: 45%, 1200 files, 3.2 GiB of 7.1 GiB (85.0 MiB/s), about 1 min left`.
struct ActionLog<'a>(&'a HookTools);

impl ProgressSink for ActionLog<'_> {
    fn report(&self, p: &Progress) {
        let _ = self.0.action_log(&p.line());
    }
}

fn action_log(tools: &HookTools) -> Throttled<ActionLog<'_>> {
    Throttled::new(ActionLog(tools), crate::progress::every(PROGRESS_EVERY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn a_huge_listing_still_fits_one_argument() {
        let backups: Vec<ObjectInfo> = (0..5000u32)
            .map(|i| ObjectInfo {
                id: format!("backup-2024010100000000{i:04}").parse().unwrap(),
                size: 1 << 30,
                last_modified: SystemTime::UNIX_EPOCH,
                meta: Default::default(),
            })
            .collect();
        let table = formatted_table(&backups);
        assert!(table.len() <= FORMATTED_MAX + 100, "{}", table.len());
        assert!(table.contains("backup-20240101000000004999"));
        assert!(table.ends_with("older backups not shown"));
        assert_eq!(formatted_table(&backups[..3]).lines().count(), 4);
    }
}
