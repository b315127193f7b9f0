//! A local directory as a store: `<dir>/<backup-id>` per backup, with its metadata in a hidden
//! sidecar (`.<backup-id>.meta.json`) and a full's index in `.<backup-id>.index`. For NFS mounts, air-gapped sites and the quick start.
//! An upload goes to a hidden `.partial` file and is renamed into place only once complete and
//! synced, so a crash never leaves something that lists as a backup. A create killed before that
//! (SIGKILL runs no cleanup) leaves the `.partial` file: [`ObjectStore::leftovers`] finds it.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{Leftover, ObjectInfo, ObjectMeta, ObjectStore, StoreError, Upload};
use crate::backup_id::BackupId;

pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Opens (and creates, mode 0700) the directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        if !root.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| StoreError::io(format!("cannot create {}", root.display()), e))?;
        }
        Ok(DirStore { root })
    }

    fn object(&self, id: &BackupId) -> PathBuf {
        self.root.join(id.as_str())
    }

    fn index(&self, id: &BackupId) -> PathBuf {
        // hidden, as the metadata sidecar: a listing of the directory shows backups only
        self.root.join(format!(".{id}{}", super::INDEX_SUFFIX))
    }

    fn sidecar(&self, id: &BackupId) -> PathBuf {
        self.root.join(format!(".{id}.meta.json"))
    }

    /// Where an upload goes until it is complete: `.<backup-id>.partial`.
    fn partial(&self, id: &BackupId) -> PathBuf {
        self.root.join(partial_name(id))
    }

    fn info(&self, id: BackupId) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.object(&id);
        let md = match fs::metadata(&path) {
            Ok(md) if md.is_file() => md,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("cannot read {}", path.display()), e)),
        };
        let meta = fs::read(self.sidecar(&id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Some(ObjectInfo {
            id,
            size: md.len(),
            last_modified: md.modified().unwrap_or(std::time::UNIX_EPOCH),
            meta,
        }))
    }
}

impl ObjectStore for DirStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn check(&self) -> Result<(), StoreError> {
        fs::read_dir(&self.root)
            .map(drop)
            .map_err(|e| StoreError::io(format!("cannot read {}", self.root.display()), e))
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let entries =
            fs::read_dir(&self.root).map_err(|e| StoreError::io(format!("cannot read {}", self.root.display()), e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("cannot list the store", e))?;
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<BackupId>().ok()) else {
                continue;
            };
            if let Some(info) = self.info(id)? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn head(&self, id: &BackupId) -> Result<Option<ObjectInfo>, StoreError> {
        self.info(id.clone())
    }

    fn put(&self, id: &BackupId, meta: &ObjectMeta) -> Result<Box<dyn Upload>, StoreError> {
        let partial = self.partial(id);
        let file = create_private(&partial)?;
        Ok(Box::new(DirUpload {
            // small: the archive's writes are whole 256 KiB chunks, which go straight to the file
            file: Some(BufWriter::with_capacity(64 << 10, file)),
            partial,
            target: self.object(id),
            sidecar: Some((self.sidecar(id), meta.clone())),
            written: 0,
        }))
    }

    fn put_index(&self, id: &BackupId) -> Result<Box<dyn Upload>, StoreError> {
        let partial = self.root.join(format!(".{id}{}.partial", super::INDEX_SUFFIX));
        let file = create_private(&partial)?;
        Ok(Box::new(DirUpload {
            file: Some(BufWriter::with_capacity(64 << 10, file)),
            partial,
            target: self.index(id),
            sidecar: None,
            written: 0,
        }))
    }

    fn get_index(&self, id: &BackupId) -> Result<Option<Box<dyn Read + Send>>, StoreError> {
        match File::open(self.index(id)) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("cannot open the index of {id}"), e)),
        }
    }

    fn get(&self, id: &BackupId) -> Result<Box<dyn Read + Send>, StoreError> {
        match File::open(self.object(id)) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(id.clone())),
            Err(e) => Err(StoreError::io(format!("cannot open {id}"), e)),
        }
    }

    fn delete(&self, id: &BackupId) -> Result<(), StoreError> {
        match fs::remove_file(self.object(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound(id.clone())),
            Err(e) => return Err(StoreError::io(format!("cannot delete {id}"), e)),
        }
        let _ = fs::remove_file(self.sidecar(id));
        let _ = fs::remove_file(self.index(id));
        Ok(())
    }

    fn leftovers(&self) -> Result<Vec<Leftover>, StoreError> {
        let entries =
            fs::read_dir(&self.root).map_err(|e| StoreError::io(format!("cannot read {}", self.root.display()), e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("cannot list the store", e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some(id) = partial_id(&name) else { continue };
            let md = match entry.metadata() {
                Ok(md) if md.is_file() => md,
                Ok(_) => continue,
                // finished or removed since the listing
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("cannot read {}", entry.path().display()), e)),
            };
            out.push(Leftover {
                id,
                since: md.modified().ok(),
                size: Some(md.len()),
                handle: name,
            });
        }
        out.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    fn remove_leftover(&self, leftover: &Leftover) -> Result<(), StoreError> {
        let path = self.partial(&leftover.id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("cannot remove {}", path.display()), e)),
        }
        // killed between writing the sidecar and the rename: the sidecar of no backup goes too
        if !self.object(&leftover.id).exists() {
            let _ = fs::remove_file(self.sidecar(&leftover.id));
        }
        Ok(())
    }
}

fn partial_name(id: &BackupId) -> String {
    format!(".{id}.partial")
}

/// The backup a `.<backup-id>.partial` name is of; `None` for any other name.
fn partial_id(name: &str) -> Option<BackupId> {
    name.strip_prefix('.')?.strip_suffix(".partial")?.parse().ok()
}

fn create_private(path: &Path) -> Result<File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io(format!("cannot create {}", path.display()), e))
}

struct DirUpload {
    file: Option<BufWriter<File>>,
    partial: PathBuf,
    target: PathBuf,
    /// A backup's metadata file (an index has none).
    sidecar: Option<(PathBuf, ObjectMeta)>,
    written: u64,
}

impl Write for DirUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("upload already finished"))?;
        let n = file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl Upload for DirUpload {
    fn finish(mut self: Box<Self>) -> Result<u64, StoreError> {
        let Some(file) = self.file.take() else {
            return Err(StoreError::Other("upload already finished".into()));
        };
        let file = file
            .into_inner()
            .map_err(|e| StoreError::io("cannot write the backup", e.into_error()))?;
        file.sync_all()
            .map_err(|e| StoreError::io("cannot write the backup", e))?;
        if let Some((sidecar, meta)) = &self.sidecar {
            let meta = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::Other(e.to_string()))?;
            let mut side = create_private(sidecar)?;
            side.write_all(&meta)
                .map_err(|e| StoreError::io("cannot write the backup's metadata", e))?;
        }
        fs::rename(&self.partial, &self.target)
            .map_err(|e| StoreError::io(format!("cannot move the backup into {}", self.target.display()), e))?;
        if let Some(dir) = self.target.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(self.written)
    }
}

impl Drop for DirUpload {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_upload_is_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let id = BackupId::now();
        let mut up = store.put(&id, &ObjectMeta::default()).unwrap();
        up.write_all(b"half").unwrap();
        drop(up);
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_partial_file_of_our_naming_is_a_leftover_and_goes_with_its_orphan_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let id = BackupId::now();
        // killed after writing its sidecar, before the rename
        fs::write(dir.path().join(format!(".{id}.partial")), b"half").unwrap();
        fs::write(dir.path().join(format!(".{id}.meta.json")), b"{}").unwrap();
        for other in [
            ".backup-latest.partial",
            ".x.partial",
            "backup-20240101000000000000.partial",
        ] {
            fs::write(dir.path().join(other), b"not ours").unwrap();
        }
        let found = store.leftovers().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((&found[0].id, found[0].size), (&id, Some(4)));
        assert!(found[0].since.is_some());
        store.remove_leftover(&found[0]).unwrap();
        store.remove_leftover(&found[0]).unwrap(); // already gone is fine
        assert!(store.leftovers().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3, "the lookalikes stay");
    }

    #[test]
    fn lists_backups_only_with_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let id = BackupId::now();
        let meta = ObjectMeta {
            server_name: Some("example.com".into()),
            ..Default::default()
        };
        let mut up = store.put(&id, &meta).unwrap();
        up.write_all(b"12345").unwrap();
        assert_eq!(up.finish().unwrap(), 5);
        let list = store.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].id.clone(), list[0].size, list[0].meta.clone()),
            (id.clone(), 5, meta)
        );
        store.delete(&id).unwrap();
        assert!(matches!(store.delete(&id), Err(StoreError::NotFound(_))));
    }
}
