//! One operation at a time on one Synapse: an advisory lock (`flock`) on a file beside its data.
//! The kernel releases it when the holder exits, however it exits, so a killed command never
//! leaves a stale lock; the file's text only names the holder for the message a second command
//! prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use super::SynapseConfig;
use crate::error::Error;

pub const LOCK_NAME: &str = ".synapse-backup.lock";

/// Held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
}

/// Where the lock of this Synapse lives: beside its signing key, which every layout has.
pub fn lock_path(cfg: &SynapseConfig) -> PathBuf {
    cfg.signing_key_path.parent().unwrap_or(Path::new("/")).join(LOCK_NAME)
}

impl Lock {
    /// Takes the lock for `what` ("restore of backup-…"), or fails at once naming its holder.
    pub fn acquire(cfg: &SynapseConfig, what: &str) -> Result<Lock, Error> {
        let path = lock_path(cfg);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
        };
        let mut file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // a lost server whose signing key's directory is gone too: a restore makes it
                let dir = path.parent().unwrap_or(Path::new("/"));
                std::fs::create_dir_all(dir).map_err(|e| lock_error(&path, e))?;
                open().map_err(|e| lock_error(&path, e))?
            }
            Err(e) => return Err(lock_error(&path, e)),
        };
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another synapse-backup"
            } else {
                holder
            };
            return Err(Error::Refused(format!(
                "another operation is running on this Synapse ({holder}; lock {}): wait for it to finish and try again",
                path.display()
            )));
        }
        let pid = std::process::id();
        let since = crate::units::rfc3339(std::time::SystemTime::now());
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{what}, pid {pid}, since {since}");
        Ok(Lock { _file: file, path })
    }
}

fn lock_error(path: &Path, e: std::io::Error) -> Error {
    Error::Refused(format!("cannot take the lock {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name() {
        let d = tempfile::tempdir().unwrap();
        let cfg = SynapseConfig {
            server_name: "x".into(),
            signing_key_path: d.path().join("keys/x.signing.key"),
            media_store_path: d.path().join("media"),
            database: crate::synapse::Database::Postgres,
            listener: None,
            files: vec![],
        };
        let first = Lock::acquire(&cfg, "restore of backup-1").unwrap();
        let second = Lock::acquire(&cfg, "create").unwrap_err().to_string();
        assert!(
            second.contains("restore of backup-1") && second.contains("another operation"),
            "{second}"
        );
        drop(first);
        Lock::acquire(&cfg, "create").unwrap();
    }
}
