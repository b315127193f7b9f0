//! `delete`: remove one backup of this server's (an unknown id is an error that says so).
//! Another server's backup, or one whose owner is unknown, is deleted only when forced.

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
    store.delete(id)?;
    Ok(())
}
