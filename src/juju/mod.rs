//! The Juju side of the house: how Juju runs us and the only place that talks to Juju.
//!
//! Juju runs the charm's `dispatch` (this binary) once per event, with no arguments, naming the
//! event in `JUJU_DISPATCH_PATH` ([`context`]); everything the charm reads or writes goes through
//! the hook tools Juju puts first on `PATH` ([`tools`]).

pub mod context;
pub mod tools;

pub use context::{Event, JujuContext};
pub use tools::{HookTools, LogLevel, Status, StatusKind, ToolError};

/// Are we running as a charm's `dispatch` (or a legacy `hooks/<name>` symlink to it)?
pub fn is_dispatch() -> bool {
    std::env::var_os("JUJU_DISPATCH_PATH").is_some()
        || (std::env::var_os("JUJU_CONTEXT_ID").is_some() && context::event_from_argv0().is_some())
}
