//! The charm: one process per Juju event. Read the world once into a [`state::CharmState`], then
//! hand the event to the handler for its concern: relation and config events set the status
//! ([`relation`]), actions run the shared commands ([`actions`]). Hooks we do not handle exit 0.
//!
//! Exit status matters to Juju: a hook that exits non-zero puts the unit in error and discards
//! its relation writes, so conditions an operator can fix become a blocked status and exit 0;
//! only a hook tool failing unexpectedly exits 1.

pub mod actions;
pub mod relation;
pub mod service;
pub mod state;
pub mod workload;

use std::process::ExitCode;

use crate::juju::{Event, HookTools, JujuContext, LogLevel, ToolError};
use state::{CharmState, ENDPOINT};

/// Hooks whose outcome is the backup status: each re-reads the world and re-checks the bucket.
fn is_status_hook(hook: &str) -> bool {
    const HOOKS: [&str; 11] = [
        "install",
        "start",
        "config-changed",
        "upgrade-charm",
        "leader-elected",
        "update-status",
        "secret-changed",
        // the Kubernetes charm's workload container and storage
        "synapse-pebble-ready",
        "synapse-pebble-check-failed",
        "synapse-pebble-check-recovered",
        "data-storage-attached",
    ];
    const RELATION: [&str; 5] = ["created", "joined", "changed", "departed", "broken"];
    HOOKS.contains(&hook)
        || hook
            .strip_prefix(ENDPOINT)
            .and_then(|h| h.strip_prefix("-relation-"))
            .is_some_and(|h| RELATION.contains(&h))
}

pub fn main() -> ExitCode {
    init_logging();
    let ctx = JujuContext::from_env();
    use_charm_proxy(&ctx);
    let Some(event) = JujuContext::event() else {
        eprintln!("synapse-backup: JUJU_DISPATCH_PATH names no hook or action; nothing to do");
        return ExitCode::SUCCESS;
    };
    let tools = HookTools::new();
    match run(&tools, &ctx, &event) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{} failed: {e}", event.name());
            eprintln!("synapse-backup: {message}");
            let _ = tools.log(LogLevel::Error, &message);
            // An action is failed with a message rather than an exit status the user cannot read.
            if matches!(event, Event::Action(_)) && tools.action_fail(&message).is_ok() {
                return ExitCode::SUCCESS;
            }
            ExitCode::FAILURE
        }
    }
}

fn run(tools: &HookTools, ctx: &JujuContext, event: &Event) -> Result<(), ToolError> {
    match event {
        Event::Hook(hook) if is_status_hook(hook) => {
            let state = CharmState::load(tools, ctx, event)?;
            recover_interrupted_restore(tools, &state);
            // on Kubernetes the charm runs Synapse: its state comes first in the status
            let workload = (state.flavour == state::Flavour::Sidecar).then(|| workload::reconcile(tools, &state));
            relation::reconcile(tools, ctx, event, &state, workload)
        }
        Event::Hook(_) => Ok(()),
        Event::Action(name) => {
            let state = CharmState::load(tools, ctx, event)?;
            actions::handle(name, tools, &state)
        }
    }
}

/// A restore killed mid-swap (an action timeout, an evicted pod) is rolled back on the next hook,
/// and Synapse started again; what was found goes to the unit's log. Nothing here fails the hook.
fn recover_interrupted_restore(tools: &HookTools, state: &CharmState) {
    use crate::commands::recover::{Mode, Recover};
    let paths = crate::synapse::config::parse_path_list(&state.synapse_config);
    let Ok(synapse) = crate::synapse::SynapseConfig::load(&paths) else {
        return; // no Synapse config yet: nothing can have been restored
    };
    let Ok(service) = service::synapse_service(state) else {
        return;
    };
    let said = Recover {
        synapse: &synapse,
        service: service.as_ref(),
        mode: Mode::Check,
        health_timeout: service::health_timeout(state).unwrap_or(crate::commands::restore::DEFAULT_HEALTH_TIMEOUT),
    }
    .run();
    let (level, lines) = match said {
        Ok(lines) => (LogLevel::Warning, lines),
        Err(e) => (LogLevel::Error, vec![format!("recovering an interrupted restore: {e}")]),
    };
    for line in lines {
        eprintln!("synapse-backup: {line}");
        let _ = tools.log(level, &line);
    }
}

/// Juju gives the model's proxy settings as `JUJU_CHARM_*_PROXY`; the S3 client reads the
/// conventional variables.
fn use_charm_proxy(ctx: &JujuContext) {
    for (name, value) in [
        ("HTTP_PROXY", &ctx.http_proxy),
        ("HTTPS_PROXY", &ctx.https_proxy),
        ("NO_PROXY", &ctx.no_proxy),
    ] {
        if let Some(v) = value {
            // single-threaded here: nothing else reads the environment yet
            std::env::set_var(name, v);
        }
    }
}

/// Warnings from the engine go to stderr, which Juju puts in the unit's log.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNAPSE_BACKUP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
