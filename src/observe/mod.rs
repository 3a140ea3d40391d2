//! What the sidecar shows to operators and monitoring: the per-direction state behind
//! `/readyz` ([`state`]), the Prometheus metrics behind `/metrics` ([`metrics`]) and the
//! HTTP server that serves both plus `/healthz` ([`http`]).

pub mod http;
pub mod metrics;
pub mod skew;
pub mod state;

use std::sync::Arc;

use serde::Serialize;

use crate::guardrail::{GuardrailReport, GuardrailStatus};
pub use state::{DirectionReport, DirectionState, Phase};

/// Everything `/readyz` reports on: this node's directions and its guardrail.
pub struct Health {
    pub node: String,
    pub directions: Vec<Arc<DirectionState>>,
    pub guardrail: Arc<GuardrailStatus>,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// Every direction streams with its apply session connected.
    pub ready: bool,
    pub node: String,
    pub directions: Vec<DirectionReport>,
    pub guardrail: GuardrailReport,
    /// One line per thing that needs a look (guardrail findings, directions not streaming).
    pub warnings: Vec<String>,
}

impl Health {
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        let directions: Vec<DirectionReport> = self.directions.iter().map(|d| d.report()).collect();
        let guardrail = self.guardrail.report();
        let ready =
            !directions.is_empty() && directions.iter().all(|d| d.state == Phase::Streaming);
        let mut warnings: Vec<String> = directions
            .iter()
            .filter(|d| d.state != Phase::Streaming)
            .map(|d| {
                format!(
                    "direction from {} is {}{}",
                    d.peer,
                    d.state.as_str(),
                    d.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        warnings.extend(guardrail.slots.iter().filter_map(|s| s.message.clone()));
        warnings.extend(
            guardrail
                .error
                .iter()
                .map(|e| format!("WAL guardrail: {e}")),
        );
        Readiness {
            ready,
            node: self.node.clone(),
            directions,
            guardrail,
            warnings,
        }
    }
}
