//! A Juju unit without Juju: a charm directory whose `dispatch` is the real binary, the hook-tool
//! double (`tests/juju_double/juju_double.py`, symlinked under every tool's name, first on PATH),
//! and its JSON state file. Each event runs dispatch as the unit agent does — empty stdin, a
//! clean environment with the `JUJU_*` variables — then commits the transactional writes only if
//! dispatch exited 0, and returns everything that was recorded.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

pub const TOOLS: [&str; 17] = [
    "action-get",
    "action-set",
    "action-fail",
    "action-log",
    "relation-ids",
    "relation-list",
    "relation-get",
    "relation-set",
    "config-get",
    "is-leader",
    "status-set",
    "status-get",
    "application-version-set",
    "juju-log",
    "secret-get",
    "state-get",
    "state-set",
];

pub const UNIT: &str = "synapse/0";
pub const MODEL: &str = "test-model";

pub struct Juju {
    _tmp: tempfile::TempDir,
    pub state_path: PathBuf,
    pub tools_dir: PathBuf,
    pub charm_dir: PathBuf,
    context: std::cell::Cell<u32>,
}

fn double_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/juju_double/juju_double.py")
}

impl Juju {
    /// A leader unit `synapse/0` of the machine charm (`synapse-backup`'s files: it runs no
    /// Synapse of its own) with no config set, no relations and no status yet.
    pub fn new() -> Self {
        Self::of(xtask::charms::Charm::SynapseBackup)
    }

    /// The same, of the Kubernetes charm (`synapse`: it runs Synapse through Pebble).
    pub fn sidecar() -> Self {
        Self::of(xtask::charms::Charm::Synapse)
    }

    /// A unit whose charm directory is a packed `.charm` (`xtask::charms::pack`, what
    /// `cargo xtask pack` writes) unpacked as Juju unpacks it. Its `dispatch` is a two-line script
    /// that runs the test build of the binary (hundreds of megabytes unstripped: not worth
    /// deflating in every test); everything else is the packed charm's.
    pub fn packed(charm: xtask::charms::Charm) -> Self {
        let juju = Self::of(charm);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dispatch = format!("#!/bin/sh\nexec {} \"$@\"\n", super::bin());
        let file = juju.charm_dir.with_extension("charm");
        xtask::charms::pack(root, charm, dispatch.as_bytes(), &file).unwrap();
        std::fs::remove_dir_all(&juju.charm_dir).unwrap();
        std::fs::create_dir_all(&juju.charm_dir).unwrap();
        xtask::charms::unpack(&file, &juju.charm_dir).unwrap();
        juju
    }

    fn of(charm: xtask::charms::Charm) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let tools_dir = tmp.path().join("tools");
        let charm_dir = tmp.path().join("charm");
        std::fs::create_dir_all(&tools_dir).unwrap();
        std::fs::create_dir_all(&charm_dir).unwrap();
        for tool in TOOLS {
            std::os::unix::fs::symlink(double_script(), tools_dir.join(tool)).unwrap();
        }
        std::os::unix::fs::symlink(super::bin(), charm_dir.join("dispatch")).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (name, path) in charm.files(root) {
            std::fs::copy(path, charm_dir.join(name)).unwrap();
        }
        let juju = Juju {
            state_path: tmp.path().join("state.json"),
            _tmp: tmp,
            tools_dir,
            charm_dir,
            context: std::cell::Cell::new(0),
        };
        let config_yaml = std::fs::read_to_string(juju.charm_dir.join("config.yaml")).unwrap();
        let config_yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&config_yaml).unwrap();
        let defaults: serde_json::Map<String, Value> = config_yaml["options"]
            .as_mapping()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| {
                let default = serde_json::to_value(v.get("default")?).ok()?;
                Some((k.as_str()?.to_string(), default))
            })
            .collect();
        juju.write(&json!({
            "unit": UNIT,
            "config_defaults": defaults,
            "leader": true,
            "config": {"synapse_config": "/data/homeserver.yaml"},
            "relations": {},
            "secrets": {},
            "calls": [],
        }));
        juju
    }

    pub fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(&self.state_path).unwrap()).unwrap()
    }

    fn write(&self, state: &Value) {
        std::fs::write(&self.state_path, serde_json::to_vec_pretty(state).unwrap()).unwrap();
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut state = self.state();
        f(&mut state);
        self.write(&state);
    }

    /// `juju config synapse key=value` (null unsets).
    pub fn config(&self, key: &str, value: Value) {
        self.edit(|s| {
            if value.is_null() {
                s["config"].as_object_mut().unwrap().remove(key);
            } else {
                s["config"][key] = value;
            }
        });
    }

    pub fn set_leader(&self, leader: bool) {
        self.edit(|s| s["leader"] = json!(leader));
    }

    /// `juju integrate synapse:backup <remote_app>` with these remote units (no data yet).
    pub fn add_relation(&self, id: &str, remote_app: &str, units: &[&str]) {
        self.edit(|s| {
            s["relations"][id] = json!({
                "endpoint": id.split(':').next().unwrap(),
                "remote_app": remote_app,
                "remote_units": units,
                "app_data": {},
                "unit_data": {},
            });
        });
    }

    /// What the provider application writes in its databag (replacing what was there).
    pub fn set_remote_app_data(&self, id: &str, data: Value) {
        self.edit(|s| {
            let remote = s["relations"][id]["remote_app"].as_str().unwrap().to_string();
            s["relations"][id]["app_data"][remote] = data;
        });
    }

    /// Our own application's databag, as committed.
    pub fn own_app_data(&self, id: &str) -> Value {
        self.state()["relations"][id]["app_data"]["synapse"].clone()
    }

    pub fn remove_relation(&self, id: &str) {
        self.edit(|s| {
            s["relations"].as_object_mut().unwrap().remove(id);
        });
    }

    /// A secret the unit may (granted) or may not read.
    pub fn add_secret(&self, uri: &str, content: Value, granted: bool) {
        self.edit(|s| s["secrets"][uri] = json!({"content": content, "granted": granted}));
    }

    /// Makes a tool fail (exit 1, `ERROR <message>`) in the runs that follow.
    pub fn break_tool(&self, tool: &str, message: &str) {
        self.edit(|s| s["broken_tools"][tool] = json!(message));
    }

    pub fn hook(&self, hook: &str) -> Dispatch {
        self.dispatch(&format!("hooks/{hook}"), &[("JUJU_HOOK_NAME", hook)])
    }

    /// A relation hook on `id`; `remote_unit` is None for app-level events (created, broken,
    /// app-data changed), as Juju leaves JUJU_REMOTE_UNIT empty then.
    pub fn relation_hook(&self, id: &str, kind: &str, remote_unit: Option<&str>) -> Dispatch {
        let state = self.state();
        let relation = &state["relations"][id];
        let endpoint = id.split(':').next().unwrap();
        let hook = format!("{endpoint}-relation-{kind}");
        let remote_app = relation["remote_app"].as_str().unwrap_or_default().to_string();
        let mut env = vec![
            ("JUJU_HOOK_NAME", hook.clone()),
            ("JUJU_RELATION", endpoint.to_string()),
            ("JUJU_RELATION_ID", id.to_string()),
            ("JUJU_REMOTE_APP", remote_app),
            ("JUJU_REMOTE_UNIT", remote_unit.unwrap_or_default().to_string()),
        ];
        if kind == "departed" {
            env.push(("JUJU_DEPARTING_UNIT", remote_unit.unwrap_or_default().to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.dispatch(&format!("hooks/{hook}"), &env)
    }

    pub fn secret_changed(&self, uri: &str) -> Dispatch {
        self.dispatch(
            "hooks/secret-changed",
            &[("JUJU_HOOK_NAME", "secret-changed"), ("JUJU_SECRET_ID", uri)],
        )
    }

    /// `juju run synapse/0 <name> <params>`.
    pub fn action(&self, name: &str, params: Value) -> Dispatch {
        self.action_with_env(name, params, &[])
    }

    /// An action with more variables in its environment (the binary's test hooks).
    pub fn action_with_env(&self, name: &str, params: Value, extra: &[(&str, &str)]) -> Dispatch {
        self.edit(|s| s["action"] = json!({"name": name, "params": params, "results": {}, "failed": null, "logs": []}));
        let uuid = self.context.get().to_string();
        let mut env = vec![
            ("JUJU_ACTION_NAME", name),
            ("JUJU_ACTION_UUID", uuid.as_str()),
            ("JUJU_HOOK_NAME", ""),
        ];
        env.extend_from_slice(extra);
        self.dispatch(&format!("actions/{name}"), &env)
    }

    /// Runs the charm's dispatch for one event, then commits as the unit agent would.
    pub fn dispatch(&self, dispatch_path: &str, extra: &[(&str, &str)]) -> Dispatch {
        let n = self.context.get() + 1;
        self.context.set(n);
        let calls_before = self.state()["calls"].as_array().map_or(0, |c| c.len());
        let path = format!("{}:/usr/local/bin:/usr/bin:/bin", self.tools_dir.display());
        let mut cmd = Command::new(self.charm_dir.join("dispatch"));
        cmd.current_dir(&self.charm_dir)
            .env_clear()
            .env("PATH", path)
            .env("LANG", "C.UTF-8")
            .env("JUJU_DOUBLE_STATE", &self.state_path)
            .env("JUJU_DISPATCH_PATH", dispatch_path)
            .env("JUJU_UNIT_NAME", UNIT)
            .env("JUJU_MODEL_NAME", MODEL)
            .env("JUJU_MODEL_UUID", "0d3e5c2a-6f1b-4c8e-9a7d-2b4f6e8a1c3d")
            .env("JUJU_VERSION", "3.6.4")
            .env("JUJU_CHARM_DIR", &self.charm_dir)
            .env("JUJU_CONTEXT_ID", format!("{UNIT}-run-{n}"))
            .env("JUJU_CHARM_HTTP_PROXY", "")
            .env("JUJU_CHARM_HTTPS_PROXY", "")
            .env("JUJU_CHARM_NO_PROXY", "")
            .stdin(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("dispatch runs");
        let exit = out.status.code().unwrap_or(-1);
        let commit = Command::new("python3")
            .arg(double_script())
            .args(["--commit"])
            .arg(&self.state_path)
            .arg(exit.to_string())
            .output()
            .unwrap();
        assert!(commit.status.success(), "{}", String::from_utf8_lossy(&commit.stderr));
        let state = self.state();
        let calls = state["calls"]
            .as_array()
            .map_or(Vec::new(), |c| c[calls_before..].to_vec());
        Dispatch {
            exit,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            calls,
            state,
        }
    }

    /// Runs one hook tool as the charm would (for checking the double itself).
    pub fn tool(&self, tool: &str, args: &[&str], stdin: &str, extra: &[(&str, &str)]) -> (i32, String, String) {
        use std::io::Write;
        let mut cmd = Command::new(self.tools_dir.join(tool));
        cmd.args(args)
            .env("JUJU_DOUBLE_STATE", &self.state_path)
            .env("JUJU_CONTEXT_ID", "synapse/0-test")
            .env("JUJU_UNIT_NAME", UNIT)
            .env_remove("JUJU_RELATION_ID")
            .env_remove("JUJU_REMOTE_UNIT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Commits (exit 0) or discards what the tool calls so far left pending.
    pub fn commit(&self, exit: i32) {
        let out = Command::new("python3")
            .arg(double_script())
            .arg("--commit")
            .arg(&self.state_path)
            .arg(exit.to_string())
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}

/// What one dispatch run left behind.
#[derive(Debug)]
pub struct Dispatch {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
    /// Every hook-tool call of this run: tool, argv, stdin, exit, stdout, stderr.
    pub calls: Vec<Value>,
    /// The double's state after the commit.
    pub state: Value,
}

impl Dispatch {
    /// (status, message) of the unit now.
    pub fn status(&self) -> (String, String) {
        let s = &self.state["status"];
        (
            s["status"].as_str().unwrap_or("unknown").to_string(),
            s["message"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Every status this run set, in order.
    pub fn statuses(&self) -> Vec<(String, String)> {
        self.calls_to("status-set")
            .iter()
            .map(|c| {
                let argv: Vec<&str> = c["argv"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                let message = argv
                    .iter()
                    .skip_while(|a| **a != "--")
                    .skip(1)
                    .copied()
                    .collect::<Vec<_>>();
                (argv[0].to_string(), message.join(" "))
            })
            .collect()
    }

    pub fn calls_to(&self, tool: &str) -> Vec<&Value> {
        self.calls.iter().filter(|c| c["tool"] == tool).collect()
    }

    pub fn results(&self) -> &Value {
        &self.state["action"]["results"]
    }

    pub fn result(&self, dotted: &str) -> Option<&str> {
        let mut v = self.results();
        for part in dotted.split('.') {
            v = v.get(part)?;
        }
        v.as_str()
    }

    pub fn failure(&self) -> Option<&str> {
        self.state["action"]["failed"].as_str()
    }

    pub fn action_logs(&self) -> Vec<String> {
        self.state["action"]["logs"]
            .as_array()
            .map(|l| l.iter().map(|m| m.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    /// Everything this run said or passed anywhere a secret must never appear: every tool's
    /// argv and stdin, dispatch's stdout and stderr, the debug log, statuses, action results,
    /// logs and failure.
    pub fn everything_said(&self) -> String {
        let mut out = vec![self.stdout.clone(), self.stderr.clone()];
        for c in &self.calls {
            out.push(c["argv"].to_string());
            out.push(c["stdin"].to_string());
        }
        out.push(self.state["logs"].to_string());
        out.push(self.state["status_history"].to_string());
        out.push(self.state["action"].to_string());
        out.join("\n")
    }

    /// Panics if dispatch failed or if a tool was called with arguments Juju would refuse.
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.exit, 0,
            "dispatch failed:\n{}\ncalls: {:#?}",
            self.stderr, self.calls
        );
        for c in &self.calls {
            assert_ne!(c["exit"], 2, "a tool refused its arguments: {c}");
        }
        self
    }

    pub fn assert_no_secret(&self, secrets: &[&str]) -> &Self {
        let said = self.everything_said();
        for secret in secrets {
            assert!(!said.contains(secret), "a secret leaked: {said}");
        }
        self
    }
}
