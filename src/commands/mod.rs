//! The operations, one file each, shared by both front doors (the CLI and the charm's actions):
//! typed inputs, a progress sink, typed reports. Nothing here knows about Juju.

pub mod create;
pub mod delete;
pub mod leftovers;
pub mod list;
pub mod owner;
pub mod prune;
pub mod recover;
pub mod restore;
pub mod verify;

pub use create::{Create, CreateReport};
pub use prune::{Policy, PruneReport};
pub use restore::{Restore, RestoreReport};
pub use verify::{Verify, VerifyReport};
