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
pub use state::{ClockSkewReport, DirectionReport, DirectionState, Phase};

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
        warnings.extend(directions.iter().filter_map(|d| {
            let c = d.clock_skew.filter(|c| c.beyond_warn)?;
            Some(format!(
                "clock skew vs {}: {} (beyond [replication] clock_skew_warn): last-writer-wins favours the node whose clock is ahead; sync both clocks (chrony/NTP)",
                d.peer,
                format_skew(c.skew_seconds, c.uncertainty_seconds)
            ))
        }));
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

/// `+1.203 s ± 0.004 s`: a clock skew estimate for people (sign: this node's clock minus
/// the peer's).
#[must_use]
pub fn format_skew(skew_seconds: f64, uncertainty_seconds: f64) -> String {
    // Below half a millisecond either way is "+0.000", not "-0.000".
    let skew = if skew_seconds.abs() < 0.0005 {
        0.0
    } else {
        skew_seconds
    };
    format!("{skew:+.3} s ± {uncertainty_seconds:.3} s")
}

#[cfg(test)]
mod tests {
    #[test]
    fn skew_is_signed_with_milliseconds() {
        assert_eq!(super::format_skew(1.2034, 0.0041), "+1.203 s ± 0.004 s");
        assert_eq!(super::format_skew(-0.5, 0.0), "-0.500 s ± 0.000 s");
        assert_eq!(super::format_skew(0.0, 0.0001), "+0.000 s ± 0.000 s");
        assert_eq!(super::format_skew(-0.0004, 0.0), "+0.000 s ± 0.000 s");
    }
}
