//! The event Juju is running us for, and the `JUJU_*` variables that come with it, read once.
//!
//! The event is named by `JUJU_DISPATCH_PATH` (`hooks/<hook>` or `actions/<action>`); when it is
//! missing (a legacy `hooks/<name>` symlink to the binary) the name we were run as stands in.

use std::env;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `install`, `config-changed`, `backup-relation-changed`, …
    Hook(String),
    /// `create-backup`, `list-backups`, …
    Action(String),
}

impl Event {
    /// Parses `hooks/<name>` or `actions/<name>` (the form of `JUJU_DISPATCH_PATH`).
    pub fn from_dispatch_path(path: &str) -> Option<Event> {
        let path = Path::new(path);
        let name = path.file_name()?.to_str()?.to_string();
        let kind = path.parent()?.file_name()?.to_str()?;
        match kind {
            "hooks" if !name.is_empty() => Some(Event::Hook(name)),
            "actions" if !name.is_empty() => Some(Event::Action(name)),
            _ => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Event::Hook(n) | Event::Action(n) => n,
        }
    }
}

/// The event from `argv[0]` (`…/hooks/install`), for charms whose hooks are symlinks to us.
pub fn event_from_argv0() -> Option<Event> {
    let argv0 = env::args_os().next()?;
    Event::from_dispatch_path(argv0.to_str()?)
}

/// Everything Juju tells us through the environment for this one event.
#[derive(Clone, Debug, Default)]
pub struct JujuContext {
    pub unit_name: String,
    pub model_name: String,
    /// `backup` in a relation hook.
    pub relation_name: Option<String>,
    /// `backup:3` in a relation hook.
    pub relation_id: Option<String>,
    pub remote_app: Option<String>,
    /// Empty in `-relation-created`, `-relation-broken` and app-data `-relation-changed`.
    pub remote_unit: Option<String>,
    /// `secret:…` in secret hooks.
    pub secret_id: Option<String>,
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub no_proxy: Option<String>,
    /// The charm's files (`metadata.yaml` says which of our two charms this is).
    pub charm_dir: Option<std::path::PathBuf>,
}

/// A variable's value, with unset and empty both meaning "not given".
fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

impl JujuContext {
    pub fn from_env() -> Self {
        JujuContext {
            unit_name: var("JUJU_UNIT_NAME").unwrap_or_default(),
            model_name: var("JUJU_MODEL_NAME").unwrap_or_default(),
            relation_name: var("JUJU_RELATION"),
            relation_id: var("JUJU_RELATION_ID"),
            remote_app: var("JUJU_REMOTE_APP"),
            remote_unit: var("JUJU_REMOTE_UNIT"),
            secret_id: var("JUJU_SECRET_ID"),
            http_proxy: var("JUJU_CHARM_HTTP_PROXY"),
            https_proxy: var("JUJU_CHARM_HTTPS_PROXY"),
            no_proxy: var("JUJU_CHARM_NO_PROXY"),
            charm_dir: var("JUJU_CHARM_DIR").map(std::path::PathBuf::from),
        }
    }

    /// The event: `JUJU_DISPATCH_PATH`, else `JUJU_ACTION_NAME`/`JUJU_HOOK_NAME`, else `argv[0]`.
    pub fn event() -> Option<Event> {
        if let Some(event) = var("JUJU_DISPATCH_PATH").and_then(|p| Event::from_dispatch_path(&p)) {
            return Some(event);
        }
        if let Some(action) = var("JUJU_ACTION_NAME") {
            return Some(Event::Action(action));
        }
        if let Some(hook) = var("JUJU_HOOK_NAME") {
            return Some(Event::Hook(hook));
        }
        event_from_argv0()
    }

    /// `synapse` for unit `synapse/0`.
    pub fn app_name(&self) -> &str {
        self.unit_name.split('/').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_paths() {
        assert_eq!(
            Event::from_dispatch_path("hooks/backup-relation-changed"),
            Some(Event::Hook("backup-relation-changed".into()))
        );
        assert_eq!(
            Event::from_dispatch_path("actions/create-backup"),
            Some(Event::Action("create-backup".into()))
        );
        assert_eq!(
            Event::from_dispatch_path("/var/lib/juju/agents/unit-synapse-0/charm/hooks/install"),
            Some(Event::Hook("install".into()))
        );
        assert_eq!(Event::from_dispatch_path("dispatch"), None);
        assert_eq!(Event::from_dispatch_path("bin/synapse-backup"), None);
    }
}
