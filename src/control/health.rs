//! The health orchestrator's pure core: signals with weights fold into a score, the score
//! into a probe verdict, and consecutive verdicts into the region's state.
//!
//! Only *failed* moves endpoints, and only after `failed_after` failed probes in a row: a
//! probe that fails every other time keeps the region *degraded* (alerts, no movement),
//! and a slow WAN, which only raises lag, can at most degrade it.

use serde::Serialize;

use crate::config::HealthConfig;

/// One signal's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalStatus {
    Ok,
    /// Counts half: something to look at, not a failure.
    Warn,
    Fail,
}

/// A measured signal, as `/health` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Signal {
    pub name: String,
    pub weight: f64,
    pub status: SignalStatus,
    pub detail: String,
}

impl Signal {
    #[must_use]
    pub fn new(name: &str, weight: f64, status: SignalStatus, detail: impl Into<String>) -> Self {
        Signal {
            name: name.to_string(),
            weight,
            status,
            detail: detail.into(),
        }
    }
}

/// A region's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Healthy,
    Degraded,
    Failed,
}

impl HealthState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Failed => "failed",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<HealthState> {
        match s {
            "healthy" => Some(HealthState::Healthy),
            "degraded" => Some(HealthState::Degraded),
            "failed" => Some(HealthState::Failed),
            _ => None,
        }
    }
}

/// The weighted share of signals that pass (1.0 with no weight at all).
#[must_use]
pub fn score(signals: &[Signal]) -> f64 {
    let total: f64 = signals.iter().map(|s| s.weight).sum();
    if total <= 0.0 {
        return 1.0;
    }
    let good: f64 = signals
        .iter()
        .map(|s| match s.status {
            SignalStatus::Ok => s.weight,
            SignalStatus::Warn => s.weight / 2.0,
            SignalStatus::Fail => 0.0,
        })
        .sum();
    good / total
}

/// One probe's verdict from its score.
#[must_use]
pub fn verdict(score: f64, cfg: &HealthConfig) -> HealthState {
    if score < cfg.failed_below {
        HealthState::Failed
    } else if score < cfg.degraded_below {
        HealthState::Degraded
    } else {
        HealthState::Healthy
    }
}

/// Turns probe verdicts into the region's state: failed only after `failed_after`
/// failed probes in a row; a failed probe before that is degraded.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    failed_after: u32,
    failed_in_a_row: u32,
}

impl HealthTracker {
    #[must_use]
    pub fn new(failed_after: u32) -> HealthTracker {
        HealthTracker {
            failed_after: failed_after.max(1),
            failed_in_a_row: 0,
        }
    }

    /// Records one probe's verdict and returns the region's state.
    pub fn observe(&mut self, probe: HealthState) -> HealthState {
        if probe == HealthState::Failed {
            self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
            if self.failed_in_a_row >= self.failed_after {
                return HealthState::Failed;
            }
            return HealthState::Degraded;
        }
        self.failed_in_a_row = 0;
        probe
    }

    /// Failed probes in a row so far.
    #[must_use]
    pub fn failed_in_a_row(&self) -> u32 {
        self.failed_in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: &str, weight: f64, status: SignalStatus) -> Signal {
        Signal::new(name, weight, status, "")
    }

    #[test]
    fn a_dead_primary_fails_the_region_on_its_own_other_signals_only_degrade_it() {
        let cfg = HealthConfig::default();
        let all_ok = [
            sig("postgres", 6.0, SignalStatus::Ok),
            sig("sidecar", 1.0, SignalStatus::Ok),
            sig("slot", 1.0, SignalStatus::Ok),
            sig("etcd", 1.0, SignalStatus::Ok),
        ];
        assert_eq!(verdict(score(&all_ok), &cfg), HealthState::Healthy);
        let mut pg_down = all_ok.clone();
        pg_down[0].status = SignalStatus::Fail;
        assert_eq!(verdict(score(&pg_down), &cfg), HealthState::Failed);
        let mut rest_down = all_ok.clone();
        for s in &mut rest_down[1..] {
            s.status = SignalStatus::Fail;
        }
        assert_eq!(verdict(score(&rest_down), &cfg), HealthState::Degraded);
        let mut lagging = all_ok;
        lagging[1].status = SignalStatus::Warn;
        assert!((score(&lagging) - 8.5 / 9.0).abs() < 1e-9);
        assert_eq!(verdict(score(&lagging), &cfg), HealthState::Degraded);
        assert_eq!(score(&[]), 1.0);
    }

    #[test]
    fn failed_needs_n_failed_probes_in_a_row() {
        let mut t = HealthTracker::new(3);
        use HealthState::*;
        assert_eq!(t.observe(Failed), Degraded);
        assert_eq!(t.observe(Failed), Degraded);
        assert_eq!(t.observe(Failed), Failed);
        assert_eq!(t.observe(Failed), Failed);
        assert_eq!(t.observe(Healthy), Healthy);
        assert_eq!(t.failed_in_a_row(), 0);
    }

    #[test]
    fn a_probe_failing_every_other_time_never_fails_the_region() {
        let mut t = HealthTracker::new(2);
        for i in 0..1000 {
            let probe = if i % 2 == 0 {
                HealthState::Failed
            } else {
                HealthState::Healthy
            };
            assert_ne!(t.observe(probe), HealthState::Failed, "probe {i}");
        }
    }
}
