//! How the charm stops and starts Synapse around a restore, and which backups it keeps: the one
//! place that builds these from the charm's state.

use super::state::{option, CharmState, S3Settings};
use crate::commands::create::Choice;
use crate::commands::prune::Policy;
use crate::synapse::service::{from_spec, ServiceControl, ServiceSpec};

/// The service a restore stops and starts (`synapse_service`).
pub fn synapse_service(state: &CharmState) -> Result<Box<dyn ServiceControl>, String> {
    let spec: ServiceSpec = state.synapse_service.parse().map_err(|e| {
        format!(
            "{e} (check the {} option: `juju config {} {}=pebble:synapse`)",
            option::SYNAPSE_SERVICE,
            state.app,
            option::SYNAPSE_SERVICE
        )
    })?;
    Ok(from_spec(&spec))
}

/// How long a restore waits for Synapse's health check (`synapse_health_timeout`).
pub fn health_timeout(state: &CharmState) -> Result<std::time::Duration, String> {
    u64::try_from(state.health_timeout)
        .map(std::time::Duration::from_secs)
        .map_err(|_| {
            format!(
                "{} must be a number of seconds (0 turns the check off), not {}",
                option::HEALTH_TIMEOUT,
                state.health_timeout
            )
        })
}

/// create-backup's `type` (default `auto`), with `backup_full_every_days` for `auto`.
pub fn backup_choice(state: &CharmState, kind: Option<&str>) -> Result<Choice, String> {
    let days = u64::try_from(state.full_every_days)
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| {
            format!(
                "{} must be a positive number of days, not {}",
                option::FULL_EVERY_DAYS,
                state.full_every_days
            )
        })?;
    match kind.unwrap_or("auto").parse()? {
        Choice::Auto { .. } => Ok(Choice::Auto {
            full_every: std::time::Duration::from_secs(days * 86400),
        }),
        other => Ok(other),
    }
}

/// Retention: `backup_keep_last`, and the s3-integrator's `delete-older-than-days`.
pub fn retention(state: &CharmState) -> Result<Policy, String> {
    let keep_last = u32::try_from(state.keep_last).map_err(|_| {
        format!(
            "{} must be 0 (keep all) or a positive number, not {}",
            option::KEEP_LAST,
            state.keep_last
        )
    })?;
    let older_than_days = match state.backup.as_ref().map(|r| &r.s3) {
        Some(S3Settings::Ready(params)) => params.delete_older_than_days,
        _ => None,
    };
    Ok(Policy {
        keep_last,
        older_than_days,
    })
}
