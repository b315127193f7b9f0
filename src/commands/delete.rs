//! `delete`: remove one backup (an unknown id is an error that says so).

use crate::backup_id::BackupId;
use crate::error::Error;
use crate::store::{ObjectStore, StoreError};

pub fn run(store: &dyn ObjectStore, id: &BackupId) -> Result<(), Error> {
    if store.head(id)?.is_none() {
        return Err(StoreError::NotFound(id.clone()).into());
    }
    store.delete(id)?;
    Ok(())
}
