//! Project chores behind `cargo xtask`, as a library so the root crate's tests can call them
//! in-process: [`fixture`] makes, churns and digests fixture Synapse trees.

pub mod charms;
pub mod fixture;
