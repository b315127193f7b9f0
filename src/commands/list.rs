//! `list`: every backup in the store, oldest first.

use crate::error::Error;
use crate::store::{ObjectInfo, ObjectStore};

pub fn run(store: &dyn ObjectStore) -> Result<Vec<ObjectInfo>, Error> {
    Ok(store.list()?)
}
