//! What each fuzz target does with its input. The cargo-fuzz targets (`fuzz/targets/fuzz_targets/`) call
//! these with libFuzzer's bytes; `tests/regressions.rs` calls them with every committed seed and
//! every input a fuzzer once found, so a fixed finding stays fixed in the normal test run.
//!
//! Each function returns normally for any input, however bad: an `Err` from the code under test is
//! the expected answer to garbage. What must never happen is a panic, an abort, unbounded memory, or
//! (for [`restore`]) a change anywhere outside the data directory being restored — that one is
//! checked here and turned into a panic, so libFuzzer reports it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use synapse_backup::archive::{self, staging::Stager, swap};
use synapse_backup::backup_id::BackupId;
use synapse_backup::secret::Secret;
use synapse_backup::store::s3::S3Params;
use synapse_backup::synapse::SynapseConfig;

/// The passphrase of the seeds' encrypted objects (`decrypt`).
pub const PASSPHRASE: &str = "fuzzing passphrase";

/// A decrypted backup (gzip'd or plain tar) restored, as `restore-backup` would, into a fresh
/// Synapse data directory: staged, checked, swapped in. Afterwards nothing outside that data
/// directory may have changed, whatever the archive held.
pub fn restore(data: &[u8]) {
    let Ok(server) = Server::new() else { return };
    let before = server.outside();
    let restored = (|| -> Result<(), archive::ArchiveError> {
        let id: BackupId = "backup-20240101000000000000"
            .parse()
            .map_err(|_| archive::ArchiveError::Refused("id".into()))?;
        let mut stager = Stager::new(&server.config, &id, true)?;
        archive::reader::read_plain(data, &mut stager)?;
        let staged = stager.finish()?;
        staged.swap(&swap::journal_path(&server.config), id.as_str())?.commit();
        Ok(())
    })();
    let after = server.outside();
    assert!(
        before == after,
        "the restore changed files outside the data directory (restore result: {restored:?})\nbefore: {before:?}\nafter: {after:?}"
    );
}

/// An object opened with the passphrase and read to its end: OpenPGP framing, SKESK and S2K,
/// SEIPD with its MDC.
pub fn decrypt(data: &[u8]) {
    let secret = Secret::new(PASSPHRASE);
    if let Ok(mut plain) = archive::crypto::decrypt(data, &secret) {
        let mut sink = [0u8; 8192];
        while let Ok(n) = plain.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
}

/// The manifest's entries as the reader parses them (header, file chunks, summary).
pub fn manifest(data: &[u8]) {
    let _ = serde_json::from_slice::<archive::manifest::Header>(data);
    let _ = serde_json::from_slice::<archive::manifest::FileChunk>(data);
    let _ = serde_json::from_slice::<archive::manifest::Summary>(data);
}

/// A homeserver.yaml (and a conf.d file after it) loaded as the tool loads Synapse's config.
pub fn homeserver_yaml(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let (main, extra) = split_in_two(data);
    let main_path = dir.path().join("homeserver.yaml");
    let conf_d = dir.path().join("conf.d");
    if fs::write(&main_path, main).is_err()
        || fs::create_dir(&conf_d).is_err()
        || fs::write(conf_d.join("extra.yaml"), extra).is_err()
    {
        return;
    }
    let _ = SynapseConfig::load(&[main_path, conf_d]);
}

/// The `backup` relation's data as s3-integrator writes it (relation-get's JSON), turned into
/// S3 settings.
pub fn relation(data: &[u8]) {
    if let Ok(map) = serde_json::from_slice::<BTreeMap<String, String>>(data) {
        let _ = S3Params::from_map(&map);
    }
}

fn split_in_two(data: &[u8]) -> (&[u8], &[u8]) {
    const SEPARATOR: &[u8] = b"\n---8<---\n";
    match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(i) => (&data[..i], &data[i + SEPARATOR.len()..]),
        None => (data, &[]),
    }
}

/// A throwaway server: `root/data` is Synapse's data directory (config, signing key, a media
/// file), `root/outside` a neighbour no restore may touch.
struct Server {
    root: tempfile::TempDir,
    config: SynapseConfig,
}

impl Server {
    fn new() -> std::io::Result<Self> {
        let root = tempfile::tempdir()?;
        let data = root.path().join("data");
        let media = data.join("media_store/local_content/ab/cd");
        fs::create_dir_all(&media)?;
        fs::write(media.join("efgh"), b"old media")?;
        fs::write(data.join("example.com.signing.key"), b"ed25519 a_old oldkey\n")?;
        let outside = root.path().join("outside");
        fs::create_dir_all(outside.join("dir"))?;
        fs::write(outside.join("file"), b"not yours")?;
        let config = data.join("homeserver.yaml");
        fs::write(
            &config,
            format!(
                "server_name: example.com\nsigning_key_path: {d}/example.com.signing.key\nmedia_store_path: {d}/media_store\ndatabase:\n  name: sqlite3\n  args:\n    database: {d}/homeserver.db\n",
                d = data.display()
            ),
        )?;
        let config = SynapseConfig::load(&[config]).map_err(std::io::Error::other)?;
        Ok(Server { root, config })
    }

    /// Every path outside the data directory, with its type, mode, size and content.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut seen = BTreeMap::new();
        walk(self.root.path(), &self.root.path().join("data"), &mut seen);
        seen
    }
}

fn walk(dir: &Path, skip: &Path, seen: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == skip {
            continue;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let content = if meta.is_file() {
            fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        use std::os::unix::fs::MetadataExt;
        seen.insert(path.clone(), format!("{:o} {} {}", meta.mode(), meta.len(), content));
        if meta.is_dir() {
            walk(&path, skip, seen);
        }
    }
}
