//! Stopping and starting Synapse around a restore (replacing its database or signing key under a
//! running server corrupts it). Backups never stop it.

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

pub trait ServiceControl {
    /// For messages: `pebble:synapse`, `systemd:matrix-synapse.service`, `none`.
    fn describe(&self) -> String;
    fn stop(&self) -> Result<(), ServiceError>;
    fn start(&self) -> Result<(), ServiceError>;
}

/// Synapse is not ours to control (the operator stopped it, or it runs elsewhere).
pub struct NoService;

impl ServiceControl for NoService {
    fn describe(&self) -> String {
        "none".into()
    }
    fn stop(&self) -> Result<(), ServiceError> {
        Ok(())
    }
    fn start(&self) -> Result<(), ServiceError> {
        Ok(())
    }
}
