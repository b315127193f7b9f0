//! The Juju side: how Juju runs us (one process per event, named by `JUJU_DISPATCH_PATH`) and the
//! hook tools. STUB: the charm issue fills this in.

/// Are we running as a charm's `dispatch`?
pub fn is_dispatch() -> bool {
    std::env::var_os("JUJU_DISPATCH_PATH").is_some()
}
