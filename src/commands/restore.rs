//! `restore`: put a backup back, so that a failure at any point leaves Synapse's data as it was.
//!
//! Order: every check we can make first (the object exists, its server_name matches, there is room
//! to stage it); then
//! download, decrypt and stage the whole backup beside its targets with Synapse still running
//! (a wrong passphrase, a truncated or tampered object, a hostile entry all fail here, with the live
//! data untouched); only then stop Synapse (and see it stop answering), swap the staged data in
//! through the restore journal, start Synapse and wait for its health check. The previous data is
//! deleted only once Synapse answers; if it does not, the previous data is put back and started.
//! With no service control nothing is started, and the previous data is kept until the next
//! successful command (see [`recover`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::recover;
use crate::archive::{self, staging, staging::Stager, swap};
use crate::backup_id::BackupId;
use crate::error::Error;
use crate::progress::{CountInto, Gauge, Measure, ProgressSink, WithGauge};
use crate::secret::Passphrase;
use crate::store::{ObjectInfo, ObjectStore, StoreError};
use crate::synapse::health;
use crate::synapse::lock::Lock;
use crate::synapse::service::{ServiceControl, ServiceError};
use crate::synapse::{Database, SynapseConfig};
use crate::units::human_bytes;

pub struct Restore<'a> {
    pub id: &'a BackupId,
    pub synapse: &'a SynapseConfig,
    pub passphrase: &'a Passphrase,
    pub store: &'a dyn ObjectStore,
    pub service: &'a dyn ServiceControl,
    /// Restore even when the backup's server_name differs from the current config's.
    pub force: bool,
    /// How long Synapse may take to answer `GET /health` after the start (zero: not checked).
    pub health_timeout: Duration,
    /// Swap even though Synapse answers and nothing stops it (the operator knows better).
    pub even_if_running: bool,
}

/// The default of `--health-timeout` and the charm's `synapse_health_timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub id: BackupId,
    pub files: u64,
    pub bytes: u64,
    pub server_name: Option<String>,
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

impl Restore<'_> {
    pub fn run(&self, progress: &dyn ProgressSink) -> Result<RestoreReport, Error> {
        let started = Instant::now();
        let cfg = self.synapse;
        let _lock = Lock::acquire(cfg, &format!("restore of {}", self.id))?;
        let mut notes = recover::before(cfg, true)?;
        let info = self
            .store
            .head(self.id)?
            .ok_or_else(|| StoreError::NotFound(self.id.clone()))?;
        if let Some(name) = &info.meta.server_name {
            staging::check_server_name(self.id, name, &cfg.server_name, self.force)?;
        }
        let service = self.service.describe();
        let controlled = self.service.controls_synapse();
        self.refuse_if_running()?;
        // a differential needs its full: make sure it is there before anything is downloaded
        let base_info = match &info.meta.base {
            Some(base) if info.meta.is_differential() => Some(self.base_info(base)?),
            _ => None,
        };
        let base_size = base_info.as_ref().map_or(0, |b| b.size);
        self.check_free_space(info.size + base_size)?;
        let mut stager = Stager::new(cfg, self.id, self.force)?;
        // how far along: the share of the object (and its base) downloaded
        let gauge = Gauge::new();
        gauge.set_total(info.size + base_size);
        let object = Box::new(CountInto::new(self.store.get(self.id)?, gauge.clone()));
        let progress = WithGauge::new(progress, gauge.clone(), Measure::GaugeCount);
        let summary = archive::read(object, self.passphrase, &mut stager, &progress)?;
        // the manifest inside says whether it is a differential (the store's metadata may be lost)
        if let Some(base) = summary.header.as_ref().and_then(|h| h.base.as_deref()) {
            let base = match &base_info {
                Some(known) if known.id.as_str() == base => known.clone(),
                _ => self.base_info(base)?,
            };
            let object = Box::new(CountInto::new(self.store.get(&base.id)?, gauge.clone()));
            let mut from_base = stager.from_base(base.id.clone())?;
            archive::read(object, self.passphrase, &mut from_base, &progress)?;
            from_base.finish()?;
            notes.push(format!(
                "a differential: {} unchanged files ({}) came from its full backup {}",
                summary.inherited,
                human_bytes(summary.inherited_bytes),
                base.id
            ));
        }
        tracing::info!(
            "read and staged {} files in {:.1}s",
            summary.files,
            started.elapsed().as_secs_f64()
        );
        let staged = stager.finish()?;
        tracing::info!(
            "staged data checked and synced at {:.1}s",
            started.elapsed().as_secs_f64()
        );
        notes.extend(staged.notes().iter().cloned());
        if !summary.manifest_checked {
            notes.push("the backup has no manifest (made by another tool): only OpenPGP's integrity check ran".into());
        }

        if let Err(e) = self.service.stop() {
            // it may be half-stopped: make sure it runs, since nothing was changed
            return Err(match self.service.start() {
                Ok(()) => ServiceError(format!("could not stop Synapse ({service}), nothing was restored: {e}")).into(),
                Err(s) => Error::SynapseDown(format!(
                    "could not stop Synapse ({service}), nothing was restored: {e}; and {NOT_STARTED}: {s}"
                )),
            });
        }
        if let (true, Some(listener)) = (controlled, &cfg.listener) {
            if let Err(e) = health::wait_down(listener, recover::STOP_CONFIRM_TIMEOUT) {
                return Err(Error::Refused(format!(
                    "Synapse was stopped through {service} but {e}: nothing was restored"
                )));
            }
        }
        // staging may take hours: a Synapse nobody stopped may have been started meanwhile
        self.refuse_if_running()?;
        let swapped = match staged.swap(&swap::journal_path(cfg), self.id.as_str()) {
            Ok(s) => s,
            Err(e) if swap::load(cfg).ok().flatten().is_some() => {
                // the undo itself failed: the journal says what is where; start nothing on it
                return Err(Error::SynapseDown(format!(
                    "{e}; Synapse was left stopped ({service}): run `synapse-backup recover` to finish the rollback"
                )));
            }
            Err(e) => {
                return Err(match self.service.start() {
                    Ok(()) => e.into(),
                    Err(s) => Error::SynapseDown(format!(
                        "{e}; the previous data was put back but {NOT_STARTED} ({service}): {s}"
                    )),
                })
            }
        };
        tracing::info!("swapped in at {:.1}s", started.elapsed().as_secs_f64());
        if !controlled {
            let kept = swapped.keep();
            notes.push(format!(
                "Synapse was not started (--service none): start it yourself. The data it replaced is kept in {} until the next successful command; `synapse-backup recover --commit` drops it now, `recover --rollback` puts it back",
                kept.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        } else {
            let finish = recover::Finish {
                synapse: cfg,
                service: self.service,
                health_timeout: self.health_timeout,
            };
            match finish.start_healthy() {
                Ok(note) => {
                    swapped.commit();
                    notes.extend(note);
                    tracing::info!("removed the replaced data at {:.1}s", started.elapsed().as_secs_f64());
                }
                Err(why) => return Err(finish.roll_back(|| swapped.rollback(), &why)),
            }
        }
        Ok(RestoreReport {
            id: self.id.clone(),
            files: summary.files,
            bytes: summary.bytes,
            server_name: summary.header.map(|h| h.server_name),
            notes,
            elapsed: started.elapsed(),
        })
    }

    /// With no service control, Synapse must not be running (its listener answering — unless the
    /// operator says it is not Synapse's — or a process holding its database).
    fn refuse_if_running(&self) -> Result<(), Error> {
        if self.service.controls_synapse() {
            return Ok(());
        }
        let how =
            "pass --service systemd:<unit> or pebble:<service> to have it stopped and started (nothing was changed)";
        if !self.even_if_running {
            recover::refuse_if_answering(self.synapse, "the restore", how)?;
        }
        recover::refuse_if_holding_the_database(self.synapse, "the restore", how)
    }

    /// Staging holds a whole unpacked copy beside the live data until the swap: refuse early, with
    /// Synapse untouched, when the filesystems it goes to cannot hold even the stored size.
    /// A differential's full backup, which must be in the store.
    fn base_info(&self, base: &str) -> Result<ObjectInfo, Error> {
        let missing = || {
            Error::Refused(format!(
                "{} is a differential backup and its full backup {base} is not in the store: it cannot be restored; nothing was changed",
                self.id
            ))
        };
        let base_id: BackupId = base.parse().map_err(|_| missing())?;
        self.store.head(&base_id)?.ok_or_else(missing)
    }

    fn check_free_space(&self, stored: u64) -> Result<(), Error> {
        // the signing key is a few hundred bytes: its filesystem needs no check
        let mut dirs = vec![self.synapse.media_store_path.clone()];
        if let Database::Sqlite(db) = &self.synapse.database {
            dirs.push(db.parent().unwrap_or(Path::new("/")).to_path_buf());
        }
        let mut filesystems: Vec<(u64, PathBuf, u64)> = Vec::new();
        for dir in dirs {
            let existing = staging::nearest_existing(&dir);
            let (dev, free) = match (std::fs::metadata(&existing), rustix::fs::statvfs(&existing)) {
                (Ok(md), Ok(vfs)) => (md.dev(), vfs.f_bavail.saturating_mul(vfs.f_frsize)),
                (Err(e), _) => {
                    tracing::warn!("cannot check the free space at {}: {e}", existing.display());
                    continue;
                }
                (_, Err(e)) => {
                    tracing::warn!("cannot check the free space at {}: {e}", existing.display());
                    continue;
                }
            };
            if !filesystems.iter().any(|(d, _, _)| *d == dev) {
                filesystems.push((dev, existing, free));
            }
        }
        if filesystems.is_empty() {
            return Ok(());
        }
        let free: u64 = filesystems.iter().map(|(_, _, f)| f).sum();
        let needed = space_needed(stored);
        if free >= needed {
            return Ok(());
        }
        let places: Vec<String> = filesystems
            .iter()
            .map(|(_, p, f)| format!("{} has {} free", p.display(), human_bytes(*f)))
            .collect();
        Err(Error::Refused(format!(
            "not enough disk space to restore {}: {}, but staging it needs at least {} (its stored size {} plus a margin for unpacking); free some space and try again — nothing was changed",
            self.id,
            places.join(", "),
            human_bytes(needed),
            human_bytes(stored)
        )))
    }
}

pub(crate) const NOT_STARTED: &str = "Synapse could not be started";

/// Did a restore fail leaving Synapse stopped? (The charm says so in the unit's status.)
pub fn left_synapse_stopped(e: &Error) -> bool {
    matches!(e, Error::SynapseDown(_))
}

/// The least free space a restore of a backup of `stored` bytes needs: the stored (compressed)
/// size is a lower bound of what unpacks, so add a tenth and some room for the filesystem.
pub fn space_needed(stored: u64) -> u64 {
    stored.saturating_add(stored / 10).saturating_add(16 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_a_synapse_left_stopped() {
        let stopped = Error::SynapseDown(format!("the backup was restored but {NOT_STARTED} (x): y"));
        assert!(left_synapse_stopped(&stopped));
        let running = Error::from(ServiceError(
            "could not stop Synapse (x), nothing was restored: y".into(),
        ));
        assert!(!left_synapse_stopped(&running));
    }

    #[test]
    fn staging_needs_more_than_the_stored_size() {
        assert_eq!(space_needed(0), 16 << 20);
        assert_eq!(space_needed(1000 << 20), (1100 << 20) + (16 << 20));
        assert_eq!(space_needed(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_wiped_directory_is_measured_at_its_nearest_parent() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            staging::nearest_existing(&dir.path().join("data/media_store")),
            dir.path()
        );
    }
}
