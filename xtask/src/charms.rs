//! The two charms built from the one binary, and the files each is packed with.
//!
//! - `synapse` (`charms/synapse/`): the Kubernetes charm, a sidecar that runs Synapse;
//! - `synapse-backup` (`charms/synapse-backup/`): the machine charm, a subordinate beside a
//!   Debian-packaged Synapse.
//!
//! Each has its own `metadata.yaml`, `config.yaml` and `charmcraft.yaml`; both share
//! `charms/actions.yaml`.

use std::path::{Path, PathBuf};

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
