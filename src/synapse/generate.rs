//! A new Synapse's first files: the minimal SQLite `homeserver.yaml` Synapse accepts, and a
//! signing key, as the Kubernetes charm writes them before Synapse's first start.

use std::io::Read;
use std::path::Path;

use base64::Engine;

/// Synapse's HTTP listener in the config we write.
pub const HTTP_PORT: u16 = 8008;

/// `homeserver.yaml` for a new server whose data is all in `data_dir`: SQLite, local media, one
/// plain-HTTP listener (client and federation: the Kubernetes ingress terminates TLS), and its own
/// random secrets. Logs go to stderr (no `log_config`), which Pebble keeps.
pub fn homeserver_yaml(server_name: &str, data_dir: &Path, report_stats: bool) -> std::io::Result<String> {
    let dir = data_dir.display();
    let key = signing_key_path(server_name, data_dir);
    let config = serde_json::json!({
        "server_name": server_name,
        "report_stats": report_stats,
        "pid_file": format!("{dir}/homeserver.pid"),
        "listeners": [{
            "port": HTTP_PORT,
            "type": "http",
            "tls": false,
            "x_forwarded": true,
            "bind_addresses": ["::"],
            "resources": [{"names": ["client", "federation"], "compress": false}],
        }],
        "database": {"name": "sqlite3", "args": {"database": format!("{dir}/homeserver.db")}},
        "media_store_path": format!("{dir}/media_store"),
        "signing_key_path": key.display().to_string(),
        "registration_shared_secret": random_token(32)?,
        "macaroon_secret_key": random_token(32)?,
        "form_secret": random_token(32)?,
        "trusted_key_servers": [{"server_name": "matrix.org"}],
        "suppress_key_server_warning": true,
    });
    let yaml = serde_yaml_ng::to_string(&config).map_err(std::io::Error::other)?;
    Ok(format!(
        "# Written by the synapse charm on the first start; it never rewrites this file.\n{yaml}"
    ))
}

/// Where the config we write keeps the signing key: Synapse's default name.
pub fn signing_key_path(server_name: &str, data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(format!("{server_name}.signing.key"))
}

/// A new ed25519 signing key in Synapse's format: `ed25519 a_<4 letters> <unpadded base64 seed>`.
pub fn signing_key() -> std::io::Result<String> {
    let seed = random_bytes::<32>()?;
    let letters = random_bytes::<4>()?;
    let version: String = letters.iter().map(|b| char::from(b'a' + b % 26)).collect();
    let seed = base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed);
    Ok(format!("ed25519 a_{version} {seed}\n"))
}

fn random_token(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut buf = [0; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_parses_as_ours_and_the_key_as_synapse_writes_it() {
        let d = tempfile::tempdir().unwrap();
        let yaml = homeserver_yaml("chat.example.com", d.path(), false).unwrap();
        let path = d.path().join("homeserver.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let cfg = crate::synapse::SynapseConfig::load(&[path]).unwrap();
        assert_eq!(cfg.server_name, "chat.example.com");
        assert_eq!(cfg.signing_key_path, d.path().join("chat.example.com.signing.key"));
        assert_eq!(cfg.media_store_path, d.path().join("media_store"));
        assert_eq!(cfg.listener.map(|l| l.port), Some(HTTP_PORT));
        assert_ne!(
            yaml,
            homeserver_yaml("chat.example.com", d.path(), false).unwrap(),
            "fresh secrets"
        );
        let key = signing_key().unwrap();
        let parts: Vec<&str> = key.trim_end().split(' ').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "ed25519");
        assert!(parts[1].starts_with("a_") && parts[1].len() == 6);
        assert_eq!(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(parts[2])
                .unwrap()
                .len(),
            32
        );
    }
}
