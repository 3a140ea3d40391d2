//! What a drill found, as JSON and markdown, and the percentiles of many trials. Pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One expectation of a drill and whether it held.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// One drill's report. Times are seconds from the fault's injection; `None` when the
/// thing did not happen (or does not apply: a killed region is not fenced, it is gone).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DrillReport {
    pub scenario: String,
    pub trial: u32,
    pub postgres: u32,
    /// RFC 3339 time the fault was injected.
    pub started_at: String,
    /// How long the fault was held before healing.
    pub fault_held_s: f64,
    /// The control plane reacted: the endpoint's owner stopped serving it or another
    /// region's agent began to.
    pub detection_s: Option<f64>,
    /// The old owner's database refused application writes.
    pub fence_s: Option<f64>,
    /// Another region served the endpoint.
    pub takeover_s: Option<f64>,
    /// The longest time the client's writes (through the traffic layer) got no
    /// acknowledgement, around the fault.
    pub client_rto_s: f64,
    /// Acknowledged rows the new owner lacked when it took over (the RPO, in rows).
    pub rpo_rows: Option<u64>,
    pub acked_writes: u64,
    /// Acknowledged rows missing on a node after healing and convergence.
    pub lost_writes: u64,
    /// Writes whose outcome the client could not know (an error or timeout at commit)
    /// that turned out committed.
    pub in_doubt_committed: u64,
    pub client_errors: u64,
    /// Samples in which both regions' agents said they serve the endpoint.
    pub dual_owner_samples: u64,
    pub samples: u64,
    /// Samples during the fault in which the old owner's database refused writes.
    pub owner_refused_samples: u64,
    /// Why region a's database last refused the sampler's write.
    #[serde(default)]
    pub refusal_a: Option<String>,
    /// Rows that differ between the nodes per `pgmesh verify` after healing.
    pub divergent_rows: Option<u64>,
    /// Conflicts the ledgers recorded during the drill (both nodes).
    pub conflicts_recorded: u64,
    /// Who owned `app-eu` before, at the end of the fault, and after healing.
    pub owners: Vec<String>,
    /// What only some scenarios measure (name, value), e.g. the skew a node saw.
    #[serde(default)]
    pub measures: Vec<(String, String)>,
    /// Correctness: any failed check fails the drill.
    pub checks: Vec<Check>,
    /// Timing targets (reported, and summarized over trials; a miss does not fail it).
    pub targets: Vec<Check>,
    pub passed: bool,
    /// Where the drill stopped early, if it did.
    pub error: Option<String>,
}

impl DrillReport {
    /// Adds an expectation and keeps `passed` the conjunction of all.
    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            passed,
            detail: detail.into(),
        });
        self.passed = self.error.is_none() && self.checks.iter().all(|c| c.passed);
    }

    /// Adds a timing target and whether this trial met it.
    pub fn target(&mut self, name: &str, met: bool, detail: impl Into<String>) {
        self.targets.push(Check {
            name: name.to_string(),
            passed: met,
            detail: detail.into(),
        });
    }

    /// Records a scenario's own measure.
    pub fn measure(&mut self, name: &str, value: impl Into<String>) {
        self.measures.push((name.to_string(), value.into()));
    }

    /// Stops the drill's verdict: it failed for `why`.
    pub fn fail(&mut self, why: String) {
        self.error = Some(why);
        self.passed = false;
    }

    #[must_use]
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "## Drill `{}` (trial {}, PostgreSQL {}): {}\n\n",
            self.scenario,
            self.trial,
            self.postgres,
            if self.passed { "passed" } else { "FAILED" }
        );
        let _ = writeln!(
            s,
            "Started {}; fault held {:.1} s.\n",
            self.started_at, self.fault_held_s
        );
        s.push_str("| measure | value |\n|---|---:|\n");
        let t = |v: Option<f64>| v.map_or("—".to_string(), |x| format!("{x:.2} s"));
        let rows: Vec<(&str, String)> = vec![
            ("detection", t(self.detection_s)),
            ("old owner refuses writes (fence)", t(self.fence_s)),
            ("takeover", t(self.takeover_s)),
            (
                "client RTO (longest write gap)",
                format!("{:.2} s", self.client_rto_s),
            ),
            (
                "RPO (acked rows the new owner lacked)",
                self.rpo_rows.map_or("—".into(), |r| r.to_string()),
            ),
            ("acknowledged writes", self.acked_writes.to_string()),
            ("acknowledged writes lost", self.lost_writes.to_string()),
            (
                "in-doubt commits (error seen, row committed)",
                self.in_doubt_committed.to_string(),
            ),
            ("client errors", self.client_errors.to_string()),
            (
                "dual-owner samples",
                format!("{} of {}", self.dual_owner_samples, self.samples),
            ),
            (
                "divergent rows after healing",
                self.divergent_rows.map_or("—".into(), |r| r.to_string()),
            ),
            ("conflicts recorded", self.conflicts_recorded.to_string()),
            (
                "owner of app-eu: before → fault → after",
                self.owners.join(" → "),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        for (k, v) in &self.measures {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        s.push('\n');
        for c in &self.checks {
            let _ = writeln!(
                s,
                "- {} {}: {}",
                if c.passed { "✓" } else { "✗" },
                c.name,
                c.detail
            );
        }
        for t in &self.targets {
            let _ = writeln!(
                s,
                "- target {} {}: {}",
                if t.passed { "met" } else { "MISSED" },
                t.name,
                t.detail
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "- ✗ stopped early: {e}");
        }
        s
    }
}

/// p50/p99/max of one measure over trials.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of `values` (sorted here); `None` when empty.
#[must_use]
pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    Some(Spread {
        n: v.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1],
    })
}

/// Many trials of many scenarios, summarized per scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub scenarios: BTreeMap<String, ScenarioSummary>,
    pub trials: usize,
    pub failed: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ScenarioSummary {
    pub trials: usize,
    pub passed: usize,
    pub detection_s: Option<Spread>,
    pub fence_s: Option<Spread>,
    pub takeover_s: Option<Spread>,
    pub client_rto_s: Option<Spread>,
    pub acked_writes: u64,
    pub lost_writes: u64,
    pub in_doubt_committed: u64,
    pub dual_owner_samples: u64,
    pub divergent_rows: u64,
    pub conflicts_recorded: u64,
    /// Failed checks, by name, with how often.
    pub failed_checks: BTreeMap<String, usize>,
    /// Missed timing targets, by name, with how often.
    pub missed_targets: BTreeMap<String, usize>,
}

#[must_use]
pub fn summarize(reports: &[DrillReport]) -> Summary {
    let mut by: BTreeMap<String, Vec<&DrillReport>> = BTreeMap::new();
    for r in reports {
        by.entry(r.scenario.clone()).or_default().push(r);
    }
    let mut out = Summary {
        trials: reports.len(),
        failed: reports.iter().filter(|r| !r.passed).count(),
        ..Summary::default()
    };
    for (name, rs) in by {
        let col = |f: &dyn Fn(&DrillReport) -> Option<f64>| {
            spread(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let mut failed_checks = BTreeMap::new();
        for r in &rs {
            for c in r.checks.iter().filter(|c| !c.passed) {
                *failed_checks.entry(c.name.clone()).or_insert(0) += 1;
            }
            if r.error.is_some() {
                *failed_checks
                    .entry("stopped early".to_string())
                    .or_insert(0) += 1;
            }
        }
        let mut missed_targets = BTreeMap::new();
        for t in rs
            .iter()
            .flat_map(|r| r.targets.iter())
            .filter(|t| !t.passed)
        {
            *missed_targets.entry(t.name.clone()).or_insert(0) += 1;
        }
        out.scenarios.insert(
            name,
            ScenarioSummary {
                trials: rs.len(),
                passed: rs.iter().filter(|r| r.passed).count(),
                detection_s: col(&|r| r.detection_s),
                fence_s: col(&|r| r.fence_s),
                takeover_s: col(&|r| r.takeover_s),
                client_rto_s: col(&|r| Some(r.client_rto_s)),
                acked_writes: rs.iter().map(|r| r.acked_writes).sum(),
                lost_writes: rs.iter().map(|r| r.lost_writes).sum(),
                in_doubt_committed: rs.iter().map(|r| r.in_doubt_committed).sum(),
                dual_owner_samples: rs.iter().map(|r| r.dual_owner_samples).sum(),
                divergent_rows: rs.iter().filter_map(|r| r.divergent_rows).sum(),
                conflicts_recorded: rs.iter().map(|r| r.conflicts_recorded).sum(),
                failed_checks,
                missed_targets,
            },
        );
    }
    out
}

impl Summary {
    #[must_use]
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "## Drill summary: {} trials, {} failed\n\n\
             | scenario | trials | passed | detection p50/p99 | fence p50/p99 | takeover p50/p99 | client RTO p50/p99 | acked | lost | in-doubt | dual-owner samples | divergent | conflicts |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.trials, self.failed
        );
        let p = |x: &Option<Spread>| {
            x.as_ref().map_or("—".to_string(), |s| {
                format!("{:.2} / {:.2} s", s.p50, s.p99)
            })
        };
        for (name, t) in &self.scenarios {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                t.trials,
                t.passed,
                p(&t.detection_s),
                p(&t.fence_s),
                p(&t.takeover_s),
                p(&t.client_rto_s),
                t.acked_writes,
                t.lost_writes,
                t.in_doubt_committed,
                t.dual_owner_samples,
                t.divergent_rows,
                t.conflicts_recorded
            );
        }
        let failed: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|(n, t)| {
                t.failed_checks
                    .iter()
                    .map(move |(c, k)| format!("- {n}: {c} failed in {k} trial(s)"))
                    .chain(
                        t.missed_targets
                            .iter()
                            .map(move |(c, k)| format!("- {n}: target {c} missed in {k} trial(s)")),
                    )
            })
            .collect();
        if !failed.is_empty() {
            s.push('\n');
            s.push_str(&failed.join("\n"));
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = spread(&v).unwrap();
        assert_eq!((s.n, s.p50, s.p99, s.max), (100, 50.0, 99.0, 100.0));
        let one = spread(&[2.5]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (2.5, 2.5, 2.5));
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn a_failed_check_fails_the_drill_and_shows_in_the_summary() {
        let mut r = DrillReport {
            scenario: "wan-cut".into(),
            ..DrillReport::default()
        };
        r.check("no failover", true, "owner stayed a");
        assert!(r.passed);
        r.check("no acknowledged write lost", false, "3 lost");
        assert!(!r.passed);
        let md = r.to_markdown();
        assert!(md.contains("FAILED") && md.contains("✗ no acknowledged write lost: 3 lost"));
        let mut ok = r.clone();
        ok.checks.retain(|c| c.passed);
        ok.passed = true;
        ok.takeover_s = Some(2.0);
        let sum = summarize(&[r, ok]);
        let w = &sum.scenarios["wan-cut"];
        assert_eq!((w.trials, w.passed, sum.failed), (2, 1, 1));
        assert_eq!(w.failed_checks["no acknowledged write lost"], 1);
        assert_eq!(w.takeover_s.as_ref().unwrap().n, 1);
        assert!(sum
            .to_markdown()
            .contains("wan-cut: no acknowledged write lost failed in 1"));
    }

    #[test]
    fn reports_round_trip_through_json() {
        let r = DrillReport {
            scenario: "region-killed".into(),
            fence_s: None,
            takeover_s: Some(4.2),
            owners: vec!["a".into(), "b".into(), "a".into()],
            ..DrillReport::default()
        };
        let back: DrillReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
