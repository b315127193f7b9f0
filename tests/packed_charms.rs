//! Both packed charms are what Juju and charmcraft accept: the zip's files and modes, metadata by
//! Juju's rules (names, a subordinate's container-scoped relation, a sidecar's containers,
//! resources, storage and mounts), config and actions by their schemas, and `charmcraft.yaml` in
//! the `platforms` form charmcraft needs for Ubuntu 24.04.

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml_ng::Value;
use xtask::charms::{Charm, ALL};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| m.keys().filter_map(|k| k.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Juju's charm and endpoint names: lowercase words joined by '-', starting with a letter.
fn is_juju_name(s: &str) -> bool {
    let mut words = s.split('-');
    words
        .next()
        .is_some_and(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
        && s.split('-')
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && s.split('-').all(|w| w.chars().any(|c| c.is_ascii_lowercase()))
}

fn packed(charm: Charm) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(xtask::charms::charm_file_name(charm));
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    xtask::charms::pack(root(), charm, &elf, &file).unwrap();
    (tmp, file)
}

#[test]
fn each_charm_packs_dispatch_executable_and_its_own_files() {
    for charm in ALL {
        let (_tmp, file) = packed(charm);
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&file).unwrap()).unwrap();
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
            ],
            "{charm:?}"
        );
        for name in &names {
            let mode = zip.by_name(name).unwrap().unix_mode().unwrap() & 0o777;
            let want = if name == "dispatch" { 0o755 } else { 0o644 };
            assert_eq!(mode, want, "{charm:?} {name}");
        }
        let mut metadata = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("metadata.yaml").unwrap(), &mut metadata).unwrap();
        assert_eq!(yaml(&metadata)["name"].as_str(), Some(charm.name()));
        assert!(file
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!("{}_", charm.name())));
    }
}

#[test]
fn metadata_follows_jujus_rules() {
    for charm in ALL {
        let files = charm.files(root());
        let m = yaml(&std::fs::read_to_string(&files[0].1).unwrap());
        let name = m["name"].as_str().unwrap();
        assert!(is_juju_name(name), "{name}");
        assert!(m["summary"].as_str().is_some_and(|s| !s.is_empty()));
        let assumes: Vec<&str> = m["assumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            assumes.contains(&"juju >= 3.3"),
            "user secrets need Juju 3.3: {assumes:?}"
        );
        let requires = &m["requires"];
        for endpoint in keys(requires) {
            assert!(is_juju_name(&endpoint), "{endpoint}");
            assert!(
                requires[endpoint.as_str()]["interface"].as_str().is_some(),
                "{endpoint}"
            );
        }
        assert_eq!(requires["backup"]["interface"].as_str(), Some("s3"));
        match charm {
            Charm::Synapse => {
                assert!(assumes.contains(&"k8s-api"));
                assert_ne!(m["subordinate"].as_bool(), Some(true));
                let containers = &m["containers"];
                assert_eq!(keys(containers), BTreeSet::from(["synapse".to_string()]));
                let resource = containers["synapse"]["resource"].as_str().unwrap();
                assert_eq!(m["resources"][resource]["type"].as_str(), Some("oci-image"));
                assert!(m["resources"][resource]["upstream-source"].as_str().is_some());
                for mount in containers["synapse"]["mounts"].as_sequence().unwrap() {
                    let storage = mount["storage"].as_str().unwrap();
                    assert_eq!(m["storage"][storage]["type"].as_str(), Some("filesystem"));
                    assert_eq!(mount["location"].as_str(), Some("/data"));
                }
            }
            Charm::SynapseBackup => {
                assert_eq!(m["subordinate"].as_bool(), Some(true));
                assert!(m.get("containers").is_none());
                // a subordinate needs a container-scoped relation to its principal
                assert_eq!(requires["host"]["scope"].as_str(), Some("container"));
                assert_eq!(requires["host"]["interface"].as_str(), Some("juju-info"));
            }
        }
    }
}

#[test]
fn config_and_actions_follow_their_schemas() {
    for charm in ALL {
        let files = charm.files(root());
        let config = yaml(&std::fs::read_to_string(&files[1].1).unwrap());
        let options = &config["options"];
        for name in keys(options) {
            let o = &options[name.as_str()];
            let kind = o["type"].as_str().unwrap();
            assert!(
                ["string", "int", "float", "boolean", "secret"].contains(&kind),
                "{name}: {kind}"
            );
            assert!(o["description"].as_str().is_some_and(|d| !d.is_empty()), "{name}");
            if let Some(default) = o.get("default") {
                let fits = match kind {
                    "string" => default.is_string(),
                    "int" => default.is_i64(),
                    "float" => default.is_f64() || default.is_i64(),
                    "boolean" => default.is_bool(),
                    _ => false,
                };
                assert!(fits, "{charm:?} {name}: default {default:?} is not a {kind}");
            }
        }
        let k8s_only = ["server_name", "report_stats"];
        for o in k8s_only {
            assert_eq!(options.get(o).is_some(), charm == Charm::Synapse, "{charm:?} {o}");
        }
        let actions = yaml(&std::fs::read_to_string(&files[2].1).unwrap());
        for action in keys(&actions) {
            assert!(is_juju_name(&action), "{action}");
            let a = &actions[action.as_str()];
            assert!(a["description"].as_str().is_some(), "{action}");
            for param in keys(&a["params"]) {
                assert!(
                    a["params"][param.as_str()]["type"].as_str().is_some(),
                    "{action}.{param}"
                );
            }
        }
    }
}

#[test]
fn charmcraft_yaml_uses_platforms_for_both_bases() {
    for charm in ALL {
        let c = yaml(&std::fs::read_to_string(charm.charmcraft_yaml(root())).unwrap());
        assert_eq!(c["type"].as_str(), Some("charm"));
        assert!(c.get("bases").is_none(), "`bases:` cannot name 24.04");
        assert!(c.get("base").is_none(), "a multi-base charm has no top-level base");
        let platforms = keys(&c["platforms"]);
        assert_eq!(
            platforms,
            BTreeSet::from(["ubuntu@22.04:amd64".to_string(), "ubuntu@24.04:amd64".to_string()])
        );
        let part = &c["parts"]["charm"];
        assert_eq!(part["plugin"].as_str(), Some("nil"));
        assert!(part["override-build"]
            .as_str()
            .unwrap()
            .contains("$CRAFT_PART_INSTALL/dispatch"));
    }
}
