//! synapse-backup: back up and restore a Synapse homeserver (signing key, SQLite database, local
//! media) to S3-compatible object storage or a local directory, as one encrypted stream.
//!
//! Two front doors, one house: [`charm`] answers Juju events (the binary is the charm's
//! `dispatch`), [`cli`] serves operators without Juju. Both end in [`commands`], which drive the
//! [`archive`] pipeline over an [`store::ObjectStore`], using what [`synapse`] knows about the
//! server. Data flows down, reports flow back up.

pub mod archive;
pub mod backup_id;
pub mod charm;
pub mod cli;
pub mod commands;
pub mod error;
pub mod juju;
pub mod progress;
pub mod secret;
pub mod store;
pub mod synapse;
pub mod units;

pub use error::Error;

/// `synapse-backup <version>`, recorded in every backup.
pub const TOOL_VERSION: &str = concat!("synapse-backup ", env!("CARGO_PKG_VERSION"));
