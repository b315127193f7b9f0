//! `delete`: remove one backup of this server's (an unknown id is an error that says so).
//! Another server's backup, or one whose owner is unknown, is deleted only when forced; so is a
//! full backup that differentials build on (they could not be restored without it).

use super::owner::{owner, Owner};
use crate::backup_id::BackupId;
use crate::error::Error;
use crate::store::{ObjectStore, StoreError};

/// `server_name`: this Synapse's, when known; `force`: delete whoever's it is.
pub fn run(store: &dyn ObjectStore, id: &BackupId, server_name: Option<&str>, force: bool) -> Result<(), Error> {
    let Some(info) = store.head(id)? else {
        return Err(StoreError::NotFound(id.clone()).into());
    };
    if !force {
        let Some(ours) = server_name else {
            return Err(Error::Refused(format!(
                "cannot tell whether backup {id} is this server's without its Synapse config; give the config, or force the deletion"
            )));
        };
        match owner(&info, ours) {
            Owner::Ours => {}
            Owner::Other(theirs) => {
                return Err(Error::Refused(format!(
                    "backup {id} belongs to server {theirs:?}, not to this Synapse ({ours:?}); nothing was deleted (force the deletion if that is what you want)"
                )))
            }
            Owner::Unknown => {
                return Err(Error::Refused(format!(
                    "backup {id} records no server (made by another tool, such as the reference charm), so it may be another server's; nothing was deleted (force the deletion if that is what you want)"
                )))
            }
        }
    }
    if !force && !info.meta.is_differential() {
        let list = store.list().map_err(|e| {
            Error::Refused(format!(
                "cannot list the backups to see whether differentials need {id}, so it was not deleted: {e}"
            ))
        })?;
        let dependents: Vec<String> = list
            .iter()
            .filter(|b| b.meta.is_differential() && b.meta.base.as_deref() == Some(id.as_str()))
            .map(|b| b.id.to_string())
            .collect();
        if !dependents.is_empty() {
            return Err(Error::Refused(format!(
                "backup {id} is the full backup of {} differential(s) ({}), which cannot be restored without it; nothing was deleted (delete them first, or force the deletion)",
                dependents.len(),
                dependents.join(", ")
            )));
        }
    }
    store.delete(id)?;
    Ok(())
}
