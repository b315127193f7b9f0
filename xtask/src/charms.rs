//! The two charms built from the one binary, and the files each is packed with.
//!
//! - `synapse` (`charms/synapse/`): the Kubernetes charm, a sidecar that runs Synapse;
//! - `synapse-backup` (`charms/synapse-backup/`): the machine charm, a subordinate beside a
//!   Debian-packaged Synapse.
//!
//! Each has its own `metadata.yaml`, `config.yaml` and `charmcraft.yaml`; both share
//! `charms/actions.yaml`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charm {
    Synapse,
    SynapseBackup,
}

pub const ALL: [Charm; 2] = [Charm::Synapse, Charm::SynapseBackup];

impl Charm {
    pub fn name(self) -> &'static str {
        match self {
            Charm::Synapse => "synapse",
            Charm::SynapseBackup => "synapse-backup",
        }
    }

    pub fn parse(name: &str) -> Option<Charm> {
        ALL.into_iter().find(|c| c.name() == name)
    }

    /// What it is, for people choosing one.
    pub fn describe(self) -> &'static str {
        match self {
            Charm::Synapse => "Kubernetes: the Synapse application (runs Synapse in its workload container)",
            Charm::SynapseBackup => "machines: a subordinate beside a Debian-packaged Synapse",
        }
    }

    /// The charm's YAML files: (name in the charm, path in the repository).
    pub fn files(self, root: &Path) -> Vec<(&'static str, PathBuf)> {
        let dir = root.join("charms").join(self.name());
        vec![
            ("metadata.yaml", dir.join("metadata.yaml")),
            ("config.yaml", dir.join("config.yaml")),
            ("actions.yaml", root.join("charms/actions.yaml")),
        ]
    }

    pub fn charmcraft_yaml(self, root: &Path) -> PathBuf {
        root.join("charms").join(self.name()).join("charmcraft.yaml")
    }
}

/// The bases the charm declares: (Ubuntu channel, the glibc it ships).
pub const BASES: [(&str, (u32, u32)); 2] = [("22.04", (2, 35)), ("24.04", (2, 39))];

/// `synapse_ubuntu-22.04-amd64_ubuntu-24.04-amd64.charm`, as charmcraft names a multi-base charm.
pub fn charm_file_name(charm: Charm) -> String {
    let bases: Vec<String> = BASES.iter().map(|(c, _)| format!("ubuntu-{c}-amd64")).collect();
    format!("{}_{}.charm", charm.name(), bases.join("_"))
}

fn manifest_yaml() -> String {
    let mut out = String::from("# written by `cargo xtask pack`\nbases:\n");
    for (channel, _) in BASES {
        out.push_str(&format!(
            "- name: ubuntu\n  channel: \"{channel}\"\n  architectures:\n  - amd64\n"
        ));
    }
    out
}

/// Writes the .charm: `dispatch` (0755) and the charm's YAML files (0644).
pub fn pack(root: &Path, charm: Charm, binary: &[u8], output: &Path) -> Result<(), String> {
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let partial = output.with_extension("charm.partial");
    let file = fs::File::create(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let mut zip = ZipWriter::new(file);
    let zip_err = |e: zip::result::ZipError| format!("cannot write {}: {e}", partial.display());
    let io_err = |e: std::io::Error| format!("cannot write {}: {e}", partial.display());
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);

    zip.start_file("dispatch", options.unix_permissions(0o755))
        .map_err(zip_err)?;
    zip.write_all(binary).map_err(io_err)?;
    for (name, path) in charm.files(root) {
        let text = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        zip.start_file(name, options.unix_permissions(0o644)).map_err(zip_err)?;
        zip.write_all(&text).map_err(io_err)?;
    }
    zip.start_file("manifest.yaml", options.unix_permissions(0o644))
        .map_err(zip_err)?;
    zip.write_all(manifest_yaml().as_bytes()).map_err(io_err)?;
    zip.finish().map_err(zip_err)?;
    fs::rename(&partial, output).map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    Ok(())
}

/// Unpacks a .charm into `dir` as Juju does (`dispatch` keeps its mode from the archive).
pub fn unpack(charm_file: &Path, dir: &Path) -> Result<(), String> {
    let file = fs::File::open(charm_file).map_err(|e| format!("cannot open {}: {e}", charm_file.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", charm_file.display()))?;
    zip.extract(dir)
        .map_err(|e| format!("cannot unpack {}: {e}", charm_file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_elf() -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[18] = 62;
        b
    }

    #[test]
    fn packs_dispatch_executable_with_the_charm_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("x.charm");
        pack(root, Charm::Synapse, &fake_elf(), &out).unwrap();
        let mut zip = zip::ZipArchive::new(fs::File::open(&out).unwrap()).unwrap();
        let mut names: Vec<String> = zip.file_names().map(String::from).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "actions.yaml",
                "config.yaml",
                "dispatch",
                "manifest.yaml",
                "metadata.yaml"
            ]
        );
        assert_eq!(zip.by_name("dispatch").unwrap().unix_mode().unwrap() & 0o777, 0o755);
        assert_eq!(
            zip.by_name("metadata.yaml").unwrap().unix_mode().unwrap() & 0o777,
            0o644
        );
        let mut manifest = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("manifest.yaml").unwrap(), &mut manifest).unwrap();
        assert!(manifest.contains("channel: \"22.04\"") && manifest.contains("channel: \"24.04\""));
        assert!(manifest.contains("- amd64"));
    }
}
