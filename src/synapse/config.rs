//! Synapse's configuration, read the way Synapse reads its `-c` arguments: each path is a file or
//! a directory (whose `*.yaml` files are read in sorted order), and later files replace earlier
//! files' top-level keys. From it we take the four things a backup needs: `server_name`,
//! `signing_key_path`, `media_store_path` and `database`.
//!
//! Relative paths are resolved against the directory of the last config file (Synapse resolves
//! them against its working directory, which a backup tool cannot know; the official image and
//! the Debian package both use absolute paths).

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no Synapse config file given")]
    NoFiles,
    #[error("cannot read Synapse config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("Synapse config {path} is not valid YAML: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("Synapse config ({files}) has no server_name")]
    NoServerName { files: String },
    #[error("Synapse config key {key} is not valid: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// SQLite, the file Synapse writes (with `-wal`/`-shm` beside it).
    Sqlite(PathBuf),
    /// PostgreSQL (`psycopg2`): backed up by PostgreSQL's own tools, not by us.
    Postgres,
}

impl Database {
    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite3",
            Database::Postgres => "psycopg2",
        }
    }
}

/// Where a Synapse keeps what a backup must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynapseConfig {
    pub server_name: String,
    pub signing_key_path: PathBuf,
    pub media_store_path: PathBuf,
    pub database: Database,
    /// Synapse's first plain-HTTP listener, where its `/health` answers (none: not checked).
    pub listener: Option<HttpListener>,
    pub files: Vec<PathBuf>,
}

/// A TCP listener of Synapse's, as `homeserver.yaml` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpListener {
    pub port: u16,
    /// Where to reach it from this machine: a bind address of `0.0.0.0` or `::` means loopback.
    pub hosts: Vec<std::net::IpAddr>,
}

impl HttpListener {
    pub fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.hosts
            .iter()
            .map(|h| std::net::SocketAddr::new(*h, self.port))
            .collect()
    }

    /// For messages: `http://127.0.0.1:8008`.
    pub fn url(&self) -> String {
        match self.addrs().first() {
            Some(a) => format!("http://{a}"),
            None => format!("port {}", self.port),
        }
    }
}

/// Splits the comma-separated list the charm's `synapse_config` option and the CLI take.
pub fn parse_path_list(list: &str) -> Vec<PathBuf> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

impl SynapseConfig {
    pub fn load(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        let files = config_files(paths)?;
        let mut merged = Mapping::new();
        for file in &files {
            let text = fs::read_to_string(file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Yaml {
                path: file.clone(),
                reason: e.to_string(),
            })?;
            // Synapse ignores a file that is empty or not a mapping.
            if let Value::Mapping(map) = value {
                for (k, v) in map {
                    merged.insert(k, v);
                }
            }
        }
        let last = files.last().ok_or(ConfigError::NoFiles)?;
        let base = absolute(last.parent().unwrap_or(Path::new(".")));
        Self::from_mapping(&merged, &base, files)
    }

    fn from_mapping(map: &Mapping, base: &Path, files: Vec<PathBuf>) -> Result<Self, ConfigError> {
        let server_name = match map.get("server_name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                let files = files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ConfigError::NoServerName { files });
            }
        };
        let path_key = |key: &'static str, default: &str| -> Result<PathBuf, ConfigError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(resolve(base, default)),
                Some(Value::String(s)) if !s.is_empty() => Ok(resolve(base, s)),
                Some(_) => Err(ConfigError::Invalid {
                    key,
                    reason: "expected a path".into(),
                }),
            }
        };
        let signing_key_path = path_key("signing_key_path", &format!("{server_name}.signing.key"))?;
        let media_store_path = path_key("media_store_path", "media_store")?;
        let database = database(map.get("database"), base)?;
        let listener = http_listener(map.get("listeners"));
        Ok(SynapseConfig {
            server_name,
            signing_key_path,
            media_store_path,
            database,
            listener,
            files,
        })
    }
}

fn database(value: Option<&Value>, base: &Path) -> Result<Database, ConfigError> {
    let default = || Database::Sqlite(resolve(base, "homeserver.db"));
    let Some(Value::Mapping(db)) = value else {
        return match value {
            None | Some(Value::Null) => Ok(default()),
            Some(_) => Err(ConfigError::Invalid {
                key: "database",
                reason: "expected a mapping".into(),
            }),
        };
    };
    let name = db.get("name").and_then(Value::as_str).unwrap_or("sqlite3");
    match name {
        "sqlite3" => match db.get("args").and_then(|a| a.get("database")) {
            None | Some(Value::Null) => Ok(default()),
            Some(Value::String(p)) if p == ":memory:" => Err(ConfigError::Invalid {
                key: "database.args.database",
                reason: "an in-memory database cannot be backed up".into(),
            }),
            Some(Value::String(p)) => Ok(Database::Sqlite(resolve(base, p))),
            Some(_) => Err(ConfigError::Invalid {
                key: "database.args.database",
                reason: "expected a path".into(),
            }),
        },
        "psycopg2" | "psycopg" => Ok(Database::Postgres),
        other => Err(ConfigError::Invalid {
            key: "database.name",
            reason: format!("unknown database engine {other:?} (expected sqlite3 or psycopg2)"),
        }),
    }
}

/// The first `type: http` listener without TLS on a TCP port (Synapse's default bind addresses
/// are `::` and `0.0.0.0`). Anything else (TLS, unix sockets, replication) is not probed.
fn http_listener(value: Option<&Value>) -> Option<HttpListener> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let Some(Value::Sequence(listeners)) = value else {
        return None;
    };
    listeners.iter().find_map(|l| {
        let is_http = l.get("type").and_then(Value::as_str) == Some("http");
        let tls = l.get("tls").and_then(Value::as_bool).unwrap_or(false);
        let port = l
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())?;
        if !is_http || tls || port == 0 {
            return None;
        }
        let mut binds: Vec<String> = match (l.get("bind_addresses"), l.get("bind_address")) {
            (Some(Value::Sequence(v)), _) => v.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            (_, Some(Value::String(s))) => vec![s.clone()],
            _ => Vec::new(),
        };
        if binds.is_empty() {
            binds = vec!["::".into(), "0.0.0.0".into()];
        }
        let mut hosts: Vec<IpAddr> = Vec::new();
        for b in binds {
            let host = match b.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                Ok(IpAddr::V6(a)) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                Ok(a) => a,
                Err(_) => continue, // a host name: not ours to resolve
            };
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        // IPv4 loopback first: it answers wherever Synapse listens on `::` with dual stack too
        hosts.sort_by_key(|h| !h.is_ipv4());
        (!hosts.is_empty()).then_some(HttpListener { port, hosts })
    })
}

/// The files Synapse would read for these `-c` paths, in order.
fn config_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = fs::read_dir(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let mut yaml: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
                .collect();
            yaml.sort();
            files.extend(yaml);
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        return Err(ConfigError::NoFiles);
    }
    Ok(files)
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    normalize(&base.join(p))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p)
        .map(|p| normalize(&p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Removes `.` and resolves `..` lexically, so entry names and targets compare as written.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn merges_files_and_directories_in_synapse_order() {
        let d = tempfile::tempdir().unwrap();
        let main = write(
            d.path(),
            "homeserver.yaml",
            "server_name: a.org\nmedia_store_path: /m1\nreport_stats: false\n",
        );
        write(
            d.path(),
            "conf.d/20-db.yaml",
            "database:\n  name: sqlite3\n  args:\n    database: /var/lib/s/h.db\n",
        );
        write(
            d.path(),
            "conf.d/10-name.yaml",
            "server_name: b.org\nmedia_store_path: /m2\n",
        );
        write(d.path(), "conf.d/notes.txt", "server_name: ignored\n");
        let c = SynapseConfig::load(&[main, d.path().join("conf.d")]).unwrap();
        assert_eq!(c.server_name, "b.org");
        assert_eq!(c.media_store_path, PathBuf::from("/m2"));
        assert_eq!(c.database, Database::Sqlite("/var/lib/s/h.db".into()));
        // default signing key: beside the last config file, named after the server
        assert_eq!(c.signing_key_path, d.path().join("conf.d/b.org.signing.key"));
    }

    #[test]
    fn postgres_and_missing_server_name() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "h.yaml",
            "server_name: x\ndatabase:\n  name: psycopg2\n  args: {user: s}\n",
        );
        assert_eq!(SynapseConfig::load(&[p]).unwrap().database, Database::Postgres);
        let p = write(d.path(), "n.yaml", "report_stats: false\n");
        assert!(matches!(
            SynapseConfig::load(&[p]),
            Err(ConfigError::NoServerName { .. })
        ));
    }

    #[test]
    fn finds_the_first_plain_http_listener() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "h.yaml",
            "server_name: x\nlisteners:\n  - {port: 8448, type: http, tls: true}\n  - {port: 9000, type: metrics}\n  - {port: 8008, type: http, bind_addresses: ['::', '0.0.0.0']}\n",
        );
        let l = SynapseConfig::load(&[p]).unwrap().listener.unwrap();
        assert_eq!(l.port, 8008);
        assert_eq!(l.url(), "http://127.0.0.1:8008");
        assert_eq!(l.addrs().len(), 2);
        let p = write(d.path(), "n.yaml", "server_name: x\n");
        assert_eq!(SynapseConfig::load(&[p]).unwrap().listener, None);
        let p = write(
            d.path(),
            "b.yaml",
            "server_name: x\nlisteners: [{port: 8080, type: http, bind_addresses: ['10.1.2.3']}]\n",
        );
        assert_eq!(
            SynapseConfig::load(&[p]).unwrap().listener.unwrap().url(),
            "http://10.1.2.3:8080"
        );
    }

    #[test]
    fn splits_the_option() {
        assert_eq!(
            parse_path_list(" /a.yaml, /conf.d ,"),
            vec![PathBuf::from("/a.yaml"), PathBuf::from("/conf.d")]
        );
    }
}
