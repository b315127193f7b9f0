//! What synapse-backup knows about Synapse: where its data lives (read from its own config), how
//! to snapshot its SQLite database while it runs, and how to stop and start it.

pub mod config;
pub mod generate;
pub mod health;
pub mod lock;
pub mod pebble;
pub mod service;
pub mod sqlite;

pub use config::{Database, SynapseConfig};
