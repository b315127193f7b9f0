//! `restore`: put a backup back, so that a failure at any point leaves Synapse's data as it was.
//!
//! Order: every check we can make first (the object exists, its server_name matches); then
//! download, decrypt and stage the whole backup beside its targets with Synapse still running
//! (a wrong passphrase, a truncated or tampered object, a hostile entry all fail here, with the live
//! data untouched); only then stop Synapse, swap the staged data in with renames (rolled back if a
//! rename fails), and start Synapse again — whatever happened.

use std::time::{Duration, Instant};

use crate::archive::{self, staging, staging::Stager};
use crate::backup_id::BackupId;
use crate::error::Error;
use crate::progress::ProgressSink;
use crate::secret::Passphrase;
use crate::store::{ObjectStore, StoreError};
use crate::synapse::service::{ServiceControl, ServiceError};
use crate::synapse::SynapseConfig;

pub struct Restore<'a> {
    pub id: &'a BackupId,
    pub synapse: &'a SynapseConfig,
    pub passphrase: &'a Passphrase,
    pub store: &'a dyn ObjectStore,
    pub service: &'a dyn ServiceControl,
    /// Restore even when the backup's server_name differs from the current config's.
    pub force: bool,
}

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
        let info = self
            .store
            .head(self.id)?
            .ok_or_else(|| StoreError::NotFound(self.id.clone()))?;
        if let Some(name) = &info.meta.server_name {
            staging::check_server_name(self.id, name, &self.synapse.server_name, self.force)?;
        }
        let mut stager = Stager::new(self.synapse, self.id, self.force)?;
        let summary = archive::read(self.store.get(self.id)?, self.passphrase, &mut stager, progress)?;
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
        let mut notes = staged.notes().to_vec();

        self.service.stop().map_err(|e| {
            ServiceError(format!(
                "could not stop Synapse ({}), nothing was restored: {e}",
                self.service.describe()
            ))
        })?;
        let swapped = staged.swap();
        tracing::info!("swapped in at {:.1}s", started.elapsed().as_secs_f64());
        let started_again = self.service.start();
        let previous = match (swapped, started_again) {
            (Ok(previous), Ok(())) => previous,
            (Ok(previous), Err(e)) => {
                previous.remove();
                return Err(ServiceError(format!(
                    "the backup was restored but Synapse could not be started ({}): {e}",
                    self.service.describe()
                ))
                .into());
            }
            (Err(e), Ok(())) => return Err(e.into()),
            (Err(e), Err(s)) => {
                return Err(ServiceError(format!(
                    "{e}; the previous data was put back but Synapse could not be started ({}): {s}",
                    self.service.describe()
                ))
                .into())
            }
        };
        previous.remove();
        tracing::info!("removed the replaced data at {:.1}s", started.elapsed().as_secs_f64());
        if !summary.manifest_checked {
            notes.push("the backup has no manifest (made by another tool): only OpenPGP's integrity check ran".into());
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
}
