//! What an interrupted or unfinished restore left, dealt with before any command touches this
//! Synapse again: a half swap is rolled back, a finished one's kept previous data is dropped once
//! the next command succeeds, and staging directories no journal needs are removed.
//!
//! Also the `recover` command itself (`--commit` drops kept previous data now, `--rollback` puts it
//! back), which the charm runs on every hook.

use std::time::Duration;

use super::restore::NOT_STARTED;
use crate::archive::swap::{self, Found};
use crate::error::Error;
use crate::synapse::health;
use crate::synapse::lock::Lock;
use crate::synapse::service::ServiceControl;
use crate::synapse::{Database, SynapseConfig};

/// How long a stopped Synapse may keep answering before we call the stop a failure.
pub const STOP_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses while Synapse runs: answering on its listener, or (where this process can see the
/// others) a process holding its database open. Its data must not change under it.
pub fn refuse_if_running(cfg: &SynapseConfig, what: &str, how_to_stop: &str) -> Result<(), Error> {
    refuse_if_answering(cfg, what, how_to_stop)?;
    refuse_if_holding_the_database(cfg, what, how_to_stop)
}

/// Refuses while something answers on Synapse's listener.
pub fn refuse_if_answering(cfg: &SynapseConfig, what: &str, how_to_stop: &str) -> Result<(), Error> {
    if let Some(listener) = &cfg.listener {
        if health::probe(listener).is_listening() {
            return Err(Error::Refused(format!(
                "Synapse is answering on {}: {what} would replace its data while it runs; stop it first, or {how_to_stop}",
                listener.url()
            )));
        }
    }
    Ok(())
}

/// Refuses while a process holds Synapse's SQLite database open.
pub fn refuse_if_holding_the_database(cfg: &SynapseConfig, what: &str, how_to_stop: &str) -> Result<(), Error> {
    if let Database::Sqlite(db) = &cfg.database {
        if let Some((pid, name)) = holder_of(db) {
            return Err(Error::Refused(format!(
                "{} is open in process {pid} ({name}), so Synapse may be running: {what} would replace its data under it; stop it first, or {how_to_stop}",
                db.display()
            )));
        }
    }
    Ok(())
}

/// A process (not this one) with `path` open, from `/proc/*/fd`: its pid and command name. Only
/// what this process may read is seen (all of it as root, in the same PID namespace).
fn holder_of(path: &std::path::Path) -> Option<(u32, String)> {
    let me = std::process::id();
    let target = std::fs::canonicalize(path).ok()?;
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target))
        {
            let name = std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
            return Some((pid, name.trim().to_string()));
        }
    }
    None
}

/// Rolls back a half swap (refused while Synapse runs on the half-swapped data); reports a
/// finished one that still keeps its previous data.
fn find(cfg: &SynapseConfig) -> Result<Option<Found>, Error> {
    if let Some(j) = swap::load(cfg)? {
        if j.phase != swap::Phase::Swapped {
            refuse_if_running(
                cfg,
                &format!("rolling back the interrupted restore of {}", j.backup_id),
                "run `synapse-backup recover` once it is stopped",
            )?;
        }
    }
    Ok(swap::recover(cfg)?)
}

/// Before a command that reads or replaces this Synapse's data: what it found, as notes.
/// `supersede`: a new restore drops a finished restore's kept previous data at once.
pub fn before(cfg: &SynapseConfig, supersede: bool) -> Result<Vec<String>, Error> {
    let mut notes = Vec::new();
    match find(cfg)? {
        Some(found @ Found::RolledBack { .. }) => notes.push(found.describe()),
        Some(Found::Swapped { backup_id, .. }) if supersede => {
            swap::commit_pending(cfg)?;
            notes.push(format!("dropped the data that the restore of {backup_id} had replaced"));
        }
        _ => {}
    }
    for dir in swap::remove_stale_staging(cfg)? {
        notes.push(format!("removed {}, left by an interrupted restore", dir.display()));
    }
    for note in &notes {
        tracing::warn!("{note}");
    }
    Ok(notes)
}

/// After a command succeeded: a finished restore's kept previous data is no longer needed.
pub fn after_success(cfg: &SynapseConfig) -> Vec<String> {
    match swap::commit_pending(cfg) {
        Ok(Some(id)) => vec![format!("dropped the data that the restore of {id} had replaced")],
        Ok(None) => Vec::new(),
        Err(e) => vec![format!("could not drop the data an earlier restore replaced: {e}")],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Roll back a half swap; leave a finished one as it is.
    Check,
    /// Also drop the previous data a finished restore kept.
    Commit,
    /// Put back the previous data a finished restore kept (stopping Synapse around it).
    Rollback,
}

pub struct Recover<'a> {
    pub synapse: &'a SynapseConfig,
    pub service: &'a dyn ServiceControl,
    pub mode: Mode,
    /// For finishing a restore that was killed after its swap (see [`Finish`]).
    pub health_timeout: Duration,
}

/// The end of a restore whose data is swapped in: start Synapse, wait for its health check, and
/// put the previous data back if it does not come up.
pub struct Finish<'a> {
    pub synapse: &'a SynapseConfig,
    pub service: &'a dyn ServiceControl,
    pub health_timeout: Duration,
}

impl Finish<'_> {
    /// Starts Synapse and waits for its health check; a note on what could not be checked.
    pub fn start_healthy(&self) -> Result<Option<String>, String> {
        let service = self.service.describe();
        self.service
            .start()
            .map_err(|e| format!("{NOT_STARTED} ({service}): {e}"))?;
        match (&self.synapse.listener, self.health_timeout.is_zero()) {
            (Some(listener), false) => {
                let took = health::wait_healthy(listener, self.health_timeout)?;
                tracing::info!("Synapse answered GET /health after {:.1}s", took.as_secs_f64());
                Ok(None)
            }
            (None, false) => Ok(Some(
                "homeserver.yaml has no plain HTTP listener: Synapse was started but its health could not be checked"
                    .into(),
            )),
            (_, true) => Ok(Some(
                "Synapse was started; its health check was turned off (timeout 0)".into(),
            )),
        }
    }

    /// The restored data did not start: stop Synapse, `put_back` the previous data, start it.
    pub fn roll_back(&self, put_back: impl FnOnce() -> Result<(), String>, why: &str) -> Error {
        let service = self.service.describe();
        let stopped = self
            .service
            .stop()
            .map_err(|e| e.to_string())
            .and_then(|()| match &self.synapse.listener {
                Some(listener) => health::wait_down(listener, STOP_CONFIRM_TIMEOUT),
                None => Ok(()),
            });
        if let Err(e) = stopped {
            // never put data back under a Synapse that may still run on it
            return Error::SynapseDown(format!(
                "the restored data did not start: {why}; and Synapse could not be stopped to put the previous data back ({service}: {e}): the restored data is in place, the previous data is kept (`synapse-backup recover --rollback` once Synapse is stopped)"
            ));
        }
        if let Err(e) = put_back() {
            return Error::SynapseDown(format!(
                "the restored data did not start: {why}; putting the previous data back failed ({e}), and Synapse is stopped"
            ));
        }
        match self.start_healthy() {
            Ok(_) => Error::Refused(format!(
                "the restored data did not start: {why}; the previous data is back and Synapse is running"
            )),
            Err(e) => Error::SynapseDown(format!(
                "the restored data did not start: {why}; the previous data is back but it did not come up either ({service}): {e}"
            )),
        }
    }
}

impl Recover<'_> {
    /// What was found and done, one sentence each (empty: nothing to recover).
    pub fn run(&self) -> Result<Vec<String>, Error> {
        let cfg = self.synapse;
        let _lock = Lock::acquire(cfg, "recover")?;
        let rolled_back_half = matches!(swap::load(cfg)?, Some(j) if j.phase != swap::Phase::Swapped);
        let mut said = before(cfg, false)?;
        if rolled_back_half {
            // a restore stops Synapse before it swaps: it is ours to start again
            self.start_after_rollback(&mut said);
        }
        let Some(Found::Swapped { backup_id, previous }) = swap::recover(cfg)? else {
            return Ok(said);
        };
        match self.mode {
            Mode::Check if self.service.controls_synapse() => {
                // killed after its swap, maybe before Synapse was started: finish the restore
                let finish = Finish {
                    synapse: cfg,
                    service: self.service,
                    health_timeout: self.health_timeout,
                };
                match finish.start_healthy() {
                    Ok(note) => {
                        swap::commit_pending(cfg)?;
                        said.push(format!(
                            "finished the interrupted restore of {backup_id}: Synapse runs on the restored data"
                        ));
                        said.extend(note);
                    }
                    Err(why) => {
                        let put_back = || swap::rollback_pending(cfg).map(drop).map_err(|e| e.to_string());
                        return Err(finish.roll_back(put_back, &why));
                    }
                }
            }
            Mode::Check => said.push(Found::Swapped { backup_id, previous }.describe()),
            Mode::Commit => {
                swap::commit_pending(cfg)?;
                said.push(format!("dropped the data that the restore of {backup_id} had replaced"));
            }
            Mode::Rollback => {
                let service = self.service.describe();
                if !self.service.controls_synapse() {
                    refuse_if_running(cfg, "the rollback", "pass --service to have it stopped")?;
                }
                self.service.stop().map_err(|e| {
                    Error::Refused(format!("could not stop Synapse ({service}), nothing was changed: {e}"))
                })?;
                if let Some(l) = &cfg.listener {
                    if let Err(e) = health::wait_down(l, STOP_CONFIRM_TIMEOUT) {
                        let _ = self.service.start();
                        return Err(Error::Refused(format!("{e}; nothing was changed")));
                    }
                }
                swap::rollback_pending(cfg)?;
                said.push(format!(
                    "put back the data that the restore of {backup_id} had replaced"
                ));
                self.start_after_rollback(&mut said);
            }
        }
        Ok(said)
    }

    fn start_after_rollback(&self, said: &mut Vec<String>) {
        let service = self.service.describe();
        if !self.service.controls_synapse() {
            return;
        }
        match self.service.start() {
            Ok(()) => said.push(format!("started Synapse ({service})")),
            Err(e) => said.push(format!("Synapse could not be started ({service}): {e}")),
        }
    }
}
