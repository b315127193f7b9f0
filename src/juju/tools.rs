//! Every hook tool the charm uses, and the only code that runs them.
//!
//! Each call spawns the tool Juju put first on `PATH`, asks for `--format=json` where the tool
//! takes it, and turns the exit code (0 ok, 1 failed, 2 bad arguments; `ERROR …` on stderr) into a
//! typed [`ToolError`]. Free text (status and log messages, action failures) goes after `--`, so a
//! message starting with `-` is never read as a flag. Nothing secret is ever put in an argument:
//! relation data goes in on stdin (`relation-set --file -`), secret values only come out of
//! `secret-get`'s stdout and are wrapped in [`Secret`] at once.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run the hook tool {tool}: {source}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and said no (exit 1), or refused its arguments (exit 2).
    #[error("{tool}: {message}")]
    Failed {
        tool: &'static str,
        code: i32,
        message: String,
    },
    #[error("{tool} printed something unexpected: {reason}")]
    Output { tool: &'static str, reason: String },
    #[error("{key:?} cannot be an action result key: {reason}")]
    ResultKey { key: String, reason: &'static str },
}

impl ToolError {
    /// Juju's own words (without `ERROR `), for messages that pass them on.
    pub fn message(&self) -> String {
        match self {
            ToolError::Failed { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    Active,
    Blocked,
    Waiting,
    Maintenance,
    /// `unknown`, `error`, …: what `status-get` may report but a charm cannot set.
    Other,
}

impl StatusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Active => "active",
            StatusKind::Blocked => "blocked",
            StatusKind::Waiting => "waiting",
            StatusKind::Maintenance => "maintenance",
            StatusKind::Other => "unknown",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "active" => StatusKind::Active,
            "blocked" => StatusKind::Blocked,
            "waiting" => StatusKind::Waiting,
            "maintenance" => StatusKind::Maintenance,
            _ => StatusKind::Other,
        }
    }
}

/// A unit's workload status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub kind: StatusKind,
    pub message: String,
}

impl Status {
    pub fn new(kind: StatusKind, message: impl Into<String>) -> Self {
        Status {
            kind,
            message: message.into(),
        }
    }

    pub fn active() -> Self {
        Status::new(StatusKind::Active, "")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind.as_str(), self.message)
    }
}

#[derive(Clone, Copy, Debug)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warning => "WARNING",
            LogLevel::Error => "ERROR",
        }
    }
}

/// action-set takes every result on its command line: past this many bytes, split into calls
/// (results merge across calls).
const ACTION_SET_ARGV_BUDGET: usize = 64 * 1024;

/// Result keys Juju keeps for itself, in any segment of a dotted key.
const RESERVED_RESULT_KEYS: [&str; 4] = ["stdout", "stderr", "stdout-encoding", "stderr-encoding"];

/// The hook tools of the running event.
#[derive(Clone, Debug, Default)]
pub struct HookTools;

impl HookTools {
    pub fn new() -> Self {
        HookTools
    }

    fn run(&self, tool: &'static str, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, ToolError> {
        let mut cmd = Command::new(tool);
        cmd.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ToolError::Spawn { tool, source })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input)
                .map_err(|source| ToolError::Spawn { tool, source })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| ToolError::Spawn { tool, source })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr
            .lines()
            .map(|l| l.trim().trim_start_matches("ERROR ").to_string())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(ToolError::Failed {
            tool,
            code: out.status.code().unwrap_or(-1),
            message: if message.is_empty() {
                format!("exit status {}", out.status.code().unwrap_or(-1))
            } else {
                message
            },
        })
    }

    fn json<T: DeserializeOwned>(&self, tool: &'static str, args: &[&str]) -> Result<T, ToolError> {
        let out = self.run(tool, args, None)?;
        serde_json::from_slice(&out).map_err(|e| ToolError::Output {
            tool,
            reason: format!("not the JSON expected: {e}"),
        })
    }

    // --- configuration and leadership ---

    /// Every config option that has a value (typed; `secret` options as their `secret:…` URI).
    pub fn config_get(&self) -> Result<Map<String, Value>, ToolError> {
        let v: Option<Map<String, Value>> = self.json("config-get", &["--format=json"])?;
        Ok(v.unwrap_or_default())
    }

    pub fn is_leader(&self) -> Result<bool, ToolError> {
        self.json("is-leader", &["--format=json"])
    }

    // --- relations ---

    /// `["backup:3"]` for the relations on an endpoint.
    pub fn relation_ids(&self, endpoint: &str) -> Result<Vec<String>, ToolError> {
        let v: Option<Vec<String>> = self.json("relation-ids", &["--format=json", endpoint])?;
        Ok(v.unwrap_or_default())
    }

    /// The application at the other end of a relation.
    pub fn relation_remote_app(&self, relation_id: &str) -> Result<Option<String>, ToolError> {
        let v: Option<String> = self.json("relation-list", &["--format=json", "-r", relation_id, "--app"])?;
        Ok(v.filter(|s| !s.is_empty()))
    }

    /// An application's databag (the remote app's, or our own when we are the leader).
    pub fn relation_get_app(&self, relation_id: &str, app: &str) -> Result<BTreeMap<String, String>, ToolError> {
        let v: Option<BTreeMap<String, Value>> =
            self.json("relation-get", &["--format=json", "-r", relation_id, "--app", "-", app])?;
        Ok(v.unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Null => None,
                other => Some((k, other.to_string())),
            })
            .collect())
    }

    /// Writes our application's databag (leader only); an empty value deletes the key. The data
    /// goes in on stdin, never on the command line.
    pub fn relation_set_app(&self, relation_id: &str, data: &BTreeMap<String, String>) -> Result<(), ToolError> {
        let body = serde_json::to_vec(data).map_err(|e| ToolError::Output {
            tool: "relation-set",
            reason: e.to_string(),
        })?;
        self.run(
            "relation-set",
            &["-r", relation_id, "--app", "--file", "-"],
            Some(&body),
        )?;
        Ok(())
    }

    // --- secrets ---

    /// The content of a secret, every value wrapped as a [`Secret`] at once. `refresh` moves us
    /// to the latest revision (in `secret-changed`; otherwise Juju keeps serving the one we track).
    pub fn secret_get(&self, uri: &str, refresh: bool) -> Result<BTreeMap<String, Secret>, ToolError> {
        let mut args = vec!["--format=json", uri];
        if refresh {
            args.push("--refresh");
        }
        let out = self.run("secret-get", &args, None)?;
        let map: BTreeMap<String, Value> = serde_json::from_slice(&out).map_err(|_| ToolError::Output {
            tool: "secret-get",
            reason: "the secret's content is not a JSON map".into(),
        })?;
        Ok(map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, Secret::new(s))),
                _ => None,
            })
            .collect())
    }

    // --- status and logs ---

    pub fn status_get(&self) -> Result<Status, ToolError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            status: String,
            #[serde(default)]
            message: String,
        }
        let raw: Raw = self.json("status-get", &["--format=json", "--include-data"])?;
        Ok(Status::new(StatusKind::parse(&raw.status), raw.message))
    }

    pub fn status_set(&self, status: &Status) -> Result<(), ToolError> {
        self.run("status-set", &[status.kind.as_str(), "--", &status.message], None)?;
        Ok(())
    }

    /// The workload's version, shown by `juju status`.
    pub fn application_version_set(&self, version: &str) -> Result<(), ToolError> {
        self.run("application-version-set", &["--", version], None)?;
        Ok(())
    }

    /// A line in the model's debug log (`juju debug-log`).
    pub fn log(&self, level: LogLevel, message: &str) -> Result<(), ToolError> {
        self.run("juju-log", &["--log-level", level.as_str(), "--", message], None)?;
        Ok(())
    }

    // --- actions ---

    /// The action's parameters (defaults already filled in by Juju).
    pub fn action_get(&self) -> Result<Map<String, Value>, ToolError> {
        let v: Option<Map<String, Value>> = self.json("action-get", &["--format=json"])?;
        Ok(v.unwrap_or_default())
    }

    /// Sets results; dotted keys nest (`backups.<id>.size`). Every key is checked against Juju's
    /// grammar first, so a bad key is our error, not a rejected call.
    pub fn action_set(&self, results: &[(String, String)]) -> Result<(), ToolError> {
        for (key, _) in results {
            check_result_key(key)?;
        }
        let mut batch: Vec<String> = Vec::new();
        let mut size = 0;
        for (key, value) in results {
            let arg = format!("{key}={value}");
            if !batch.is_empty() && size + arg.len() > ACTION_SET_ARGV_BUDGET {
                self.action_set_args(&batch)?;
                batch.clear();
                size = 0;
            }
            size += arg.len();
            batch.push(arg);
        }
        if !batch.is_empty() {
            self.action_set_args(&batch)?;
        }
        Ok(())
    }

    fn action_set_args(&self, args: &[String]) -> Result<(), ToolError> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run("action-set", &args, None)?;
        Ok(())
    }

    /// Marks the action failed with a message for the user (the process goes on).
    pub fn action_fail(&self, message: &str) -> Result<(), ToolError> {
        self.run("action-fail", &["--", message], None)?;
        Ok(())
    }

    /// A progress line, shown live by `juju run`.
    pub fn action_log(&self, message: &str) -> Result<(), ToolError> {
        self.run("action-log", &["--", message], None)?;
        Ok(())
    }
}

/// Juju's grammar for a result key: dot-separated segments of lowercase letters, digits and
/// inner hyphens, none of them reserved.
pub fn check_result_key(key: &str) -> Result<(), ToolError> {
    let bad = |reason| ToolError::ResultKey {
        key: key.to_string(),
        reason,
    };
    for segment in key.split('.') {
        if segment.is_empty() {
            return Err(bad("empty segment"));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("only lowercase letters, digits and '-' are allowed"));
        }
        if segment.starts_with('-') || segment.ends_with('-') {
            return Err(bad("a segment must start and end with a letter or digit"));
        }
        if RESERVED_RESULT_KEYS.contains(&segment) {
            return Err(bad("reserved by Juju"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_keys() {
        for ok in ["backup-id", "backups.backup-20240206153012123456.size", "a", "x1.2y"] {
            assert!(check_result_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Backup",
            "-a",
            "a-",
            "a..b",
            "a.stdout",
            "stderr-encoding",
            "a_b",
            "a=b",
        ] {
            assert!(check_result_key(bad).is_err(), "{bad}");
        }
    }
}
