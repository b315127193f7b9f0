//! How the charm stops and starts Synapse around a restore. The one place that builds the
//! service control from the charm's state (issue 5 adds a `synapse_service` option here).

use super::state::CharmState;
use crate::synapse::service::{NoService, ServiceControl};

/// The service a restore stops and starts.
pub fn synapse_service(_state: &CharmState) -> Box<dyn ServiceControl> {
    Box::new(NoService)
}
