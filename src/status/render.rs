//! `pgmesh status` for people (a table, then nodes and problems) and for scripts (JSON,
//! every field of [`StatusReport`]).

use super::{human_bytes, DirectionStatus, StatusReport, CLOCK_SKEW_STALE_SECONDS};
use crate::observe::format_skew;
use crate::text_table;

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn sidecar_cell(d: &DirectionStatus) -> String {
    let s = &d.sidecar;
    if s.slot_active == Some(true) && s.apply_session == Some(true) {
        return match s.walsender_pid {
            Some(pid) => format!("ok (walsender {pid})"),
            None => "ok".into(),
        };
    }
    let mut parts = Vec::new();
    match (s.slot_active, s.walsender_pid) {
        (Some(true), Some(pid)) => parts.push(format!("walsender {pid}")),
        (Some(true), None) => parts.push("slot in use".to_string()),
        (Some(false), _) => parts.push("slot idle".to_string()),
        (None, _) => {}
    }
    match s.apply_session {
        Some(true) => parts.push("apply session".to_string()),
        Some(false) => parts.push("no apply session".to_string()),
        None => {}
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// `clock skew vs a: +1.203 s ± 0.004 s`, measured by the target's sidecar.
fn clock_line(d: &DirectionStatus) -> String {
    let what = match &d.clock_skew {
        None => "not measured (its sidecar has not streamed since setup)".to_string(),
        Some(c) if c.age_seconds > CLOCK_SKEW_STALE_SECONDS => format!(
            "{} (measured {:.0} s ago)",
            format_skew(c.skew_seconds, c.uncertainty_seconds),
            c.age_seconds
        ),
        Some(c) => format_skew(c.skew_seconds, c.uncertainty_seconds),
    };
    format!("  {}: clock skew vs {}: {what}\n", d.to, d.from)
}

/// The table people read.
#[must_use]
pub fn to_table(r: &StatusReport) -> String {
    let rows: Vec<Vec<String>> = r
        .directions
        .iter()
        .map(|d| {
            let applied = match (&d.last_applied_lsn, &d.last_applied_commit_time) {
                (Some(l), Some(t)) => format!("{l} @ {t}"),
                (Some(l), None) => l.clone(),
                (None, _) => "-".into(),
            };
            let retained = match (&d.retained_wal_bytes, &d.wal_status) {
                (Some(b), Some(w)) => format!("{} ({w})", human_bytes(*b)),
                (Some(b), None) => human_bytes(*b),
                (None, Some(w)) => w.clone(),
                (None, None) => "-".into(),
            };
            vec![
                format!("{} -> {}", d.from, d.to),
                d.state.label().to_string(),
                or_dash(d.lag_bytes.map(human_bytes)),
                or_dash(d.lag_seconds.map(|s| format!("{s:.1}s"))),
                applied,
                retained,
                or_dash(d.conflicts_last_hour),
                sidecar_cell(d),
            ]
        })
        .collect();
    let mut out = text_table::render(
        &[
            "DIRECTION",
            "STATE",
            "LAG",
            "LAG TIME",
            "LAST APPLIED",
            "RETAINED WAL",
            "CONFLICTS 1H",
            "SIDECAR",
        ],
        &rows,
    );
    out.push_str("\nnodes:\n");
    for n in &r.nodes {
        let what = match (&n.server_version, &n.error) {
            (Some(v), _) => format!("PostgreSQL {v}"),
            (None, Some(e)) => format!("UNREACHABLE: {e}"),
            (None, None) => "?".into(),
        };
        out.push_str(&format!("  {}  {}  {what}\n", n.name, n.target));
        for note in &n.notes {
            out.push_str(&format!("     note: {note}\n"));
        }
    }
    if !r.directions.is_empty() {
        out.push_str("\nclocks (each node's clock minus its peer's, as its sidecar estimates):\n");
        for d in &r.directions {
            out.push_str(&clock_line(d));
        }
    }
    let problems: Vec<String> = r
        .directions
        .iter()
        .flat_map(|d| {
            d.problems
                .iter()
                .map(move |p| format!("  {} -> {}: {p}", d.from, d.to))
        })
        .collect();
    if !problems.is_empty() {
        out.push_str("\nproblems:\n");
        for p in problems {
            out.push_str(&p);
            out.push('\n');
        }
    }
    let warnings: Vec<String> = r
        .directions
        .iter()
        .flat_map(|d| {
            d.warnings
                .iter()
                .map(move |w| format!("  {} -> {}: {w}", d.from, d.to))
        })
        .collect();
    if !warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for w in &warnings {
            out.push_str(w);
            out.push('\n');
        }
    }
    let bad = r.directions.iter().filter(|d| !d.healthy).count();
    if r.healthy {
        out.push_str(&format!(
            "\nstatus: healthy ({} direction(s) streaming){}\n",
            r.directions.len(),
            if warnings.is_empty() {
                String::new()
            } else {
                format!(", {} warning(s)", warnings.len())
            }
        ));
    } else {
        out.push_str(&format!(
            "\nstatus: UNHEALTHY ({bad} of {} direction(s) with problems{})\n",
            r.directions.len(),
            if r.nodes.iter().any(|n| !n.reachable) {
                ", node(s) unreachable"
            } else {
                ""
            }
        ));
    }
    out
}

/// The JSON scripts read (pretty-printed).
pub fn to_json(r: &StatusReport) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(r)
}

#[cfg(test)]
mod tests {
    use super::super::{ClockSkewStatus, NodeStatus, SidecarHealth, State, Thresholds};
    use super::*;

    fn report() -> StatusReport {
        let d = DirectionStatus {
            from: "a".into(),
            to: "b".into(),
            state: State::SidecarDown,
            healthy: false,
            problems: vec!["the sidecar of node b is not running".into()],
            slot: "pgmesh_b".into(),
            origin: "pgmesh_a".into(),
            lag_bytes: Some(5 << 20),
            lag_seconds: Some(42.0),
            last_applied_lsn: Some("0/3000148".into()),
            last_applied_commit_time: None,
            oldest_pending_commit_time: None,
            retained_wal_bytes: Some(6 << 20),
            wal_status: Some("reserved".into()),
            safe_wal_size: None,
            conflicts_last_hour: Some(3),
            sidecar: SidecarHealth {
                slot_active: Some(false),
                apply_session: Some(false),
                ..SidecarHealth::default()
            },
            clock_skew: Some(ClockSkewStatus {
                skew_seconds: 1.2034,
                uncertainty_seconds: 0.0041,
                samples: 40,
                age_seconds: 2.0,
                beyond_warn: true,
            }),
            warnings: vec!["WARNING: node b's clock minus node a's is +1.203 s".into()],
        };
        StatusReport {
            healthy: false,
            nodes: vec![NodeStatus {
                name: "a".into(),
                target: "127.0.0.1:5432/app".into(),
                reachable: true,
                server_version: Some("15.20".into()),
                error: None,
                notes: vec![],
            }],
            directions: vec![d],
            thresholds: Thresholds {
                max_lag_bytes: 1,
                max_lag_seconds: 1.0,
                clock_skew_warn_seconds: 0.5,
            },
        }
    }

    #[test]
    fn table_and_json() {
        let t = to_table(&report());
        assert!(t.starts_with("DIRECTION  STATE"), "{t}");
        assert!(
            t.contains("a -> b     sidecar down  5.0 MB  42.0s     0/3000148     6.0 MB (reserved)  3             slot idle, no apply session"),
            "{t}"
        );
        assert!(
            t.contains("a -> b: the sidecar of node b is not running"),
            "{t}"
        );
        assert!(t.contains("status: UNHEALTHY (1 of 1"), "{t}");
        assert!(
            t.contains("  b: clock skew vs a: +1.203 s ± 0.004 s\n"),
            "{t}"
        );
        assert!(
            t.contains("warnings:\n  a -> b: WARNING: node b's clock minus node a's"),
            "{t}"
        );
        let mut stale = report();
        stale.directions[0].clock_skew.as_mut().unwrap().age_seconds = 125.0;
        stale.directions[0].warnings.clear();
        let t = to_table(&stale);
        assert!(
            t.contains("vs a: +1.203 s ± 0.004 s (measured 125 s ago)"),
            "{t}"
        );
        assert!(!t.contains("warnings:"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&to_json(&report()).unwrap()).unwrap();
        assert_eq!(j["directions"][0]["state"], "sidecar_down");
        assert_eq!(j["directions"][0]["lag_bytes"], 5 << 20);
        assert_eq!(j["directions"][0]["sidecar"]["apply_session"], false);
        assert_eq!(j["healthy"], false);
        assert_eq!(j["directions"][0]["clock_skew"]["samples"], 40);
        assert_eq!(j["directions"][0]["clock_skew"]["beyond_warn"], true);
    }
}
