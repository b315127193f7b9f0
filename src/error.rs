//! The one error every command returns. Each layer makes its own typed error; this is where they
//! meet, and its `Display` is the sentence a user reads (an action's failure message, the CLI's
//! last line). No variant ever carries a secret.

use crate::archive::ArchiveError;
use crate::backup_id::InvalidBackupId;
use crate::store::StoreError;
use crate::synapse::config::ConfigError;
use crate::synapse::service::ServiceError;
use crate::synapse::sqlite::SqliteError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A restore failed and Synapse could not be started again: the unit's status must say so.
    #[error("{0}")]
    SynapseDown(String),
    #[error(transparent)]
    BackupId(#[from] InvalidBackupId),
    /// The command would do something harmful and was not forced.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Usage(String),
}
