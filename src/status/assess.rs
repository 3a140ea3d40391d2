//! Judging one direction from what its two nodes said: a state, the numbers, and every
//! problem with what to do. Pure: the tests are tables of facts.

use super::facts::{NodeFacts, Pending, SkewFacts, SlotFacts};
use super::{
    ClockSkewStatus, DirectionStatus, SidecarHealth, State, Thresholds, CLOCK_SKEW_STALE_SECONDS,
};
pub use crate::config::human_bytes;
use crate::config::{names, ByteSize};
use crate::observe::format_skew;
use crate::observe::skew::SkewEstimate;

/// `from`'s changes applied into `to`: the slot `pgmesh_<to>` on `from`, the origin
/// `pgmesh_<from>` and the apply session on `to`. `Err` holds why a node did not answer.
#[must_use]
pub fn assess(
    from: &str,
    to: &str,
    source: Result<&NodeFacts, &str>,
    target: Result<&NodeFacts, &str>,
    limits: &Thresholds,
) -> DirectionStatus {
    let slot_name = names::slot_name(to);
    let origin_name = names::origin_name(from);
    let slot: Option<&SlotFacts> = source
        .ok()
        .and_then(|f| f.slots.get(&slot_name))
        .and_then(Option::as_ref);
    let origin = target
        .ok()
        .and_then(|f| f.origins.get(&origin_name))
        .map(Option::as_ref);
    let apply_sessions = target.ok().map(|f| f.apply_sessions);

    let mut d = DirectionStatus {
        from: from.to_string(),
        to: to.to_string(),
        state: State::Streaming,
        healthy: true,
        problems: Vec::new(),
        slot: slot_name.clone(),
        origin: origin_name.clone(),
        lag_bytes: slot.and_then(|s| s.lag_bytes),
        lag_seconds: slot.and_then(lag_seconds),
        last_applied_lsn: origin
            .flatten()
            .and_then(|o| o.remote_lsn.clone())
            .filter(|l| l != "0/0"),
        last_applied_commit_time: target.ok().and_then(|f| match &f.last_commit {
            Some((ts, Some(o))) if *o == origin_name => Some(ts.clone()),
            _ => None,
        }),
        oldest_pending_commit_time: slot.and_then(|s| match &s.pending {
            Pending::Since { commit_time, .. } => Some(commit_time.clone()),
            _ => None,
        }),
        retained_wal_bytes: slot.and_then(|s| s.retained_bytes),
        wal_status: slot.and_then(|s| s.wal_status.clone()),
        safe_wal_size: slot.and_then(|s| s.safe_wal_size),
        conflicts_last_hour: target.ok().and_then(|f| {
            f.recent_conflicts.as_ref().map(|by| {
                by.iter()
                    .filter(|(o, _)| o.as_deref() == Some(from))
                    .map(|(_, n)| n)
                    .sum()
            })
        }),
        sidecar: SidecarHealth {
            slot_active: slot.map(|s| s.active),
            walsender_pid: slot.and_then(|s| s.walsender.as_ref().map(|w| w.pid)),
            walsender_application_name: slot
                .and_then(|s| s.walsender.as_ref())
                .and_then(|w| w.application_name.clone()),
            apply_session: apply_sessions.map(|n| n > 0),
        },
        clock_skew: target
            .ok()
            .and_then(|f| f.clock_skew.get(from))
            .map(|s| clock_skew(s, limits)),
        warnings: Vec::new(),
    };
    if let Some(c) = d.clock_skew.as_ref().filter(|c| c.beyond_warn) {
        let ahead = if c.skew_seconds > 0.0 { to } else { from };
        d.warnings.push(format!(
            "WARNING: node {to}'s clock minus node {from}'s is {} (beyond [replication] clock_skew_warn {}s): last-writer-wins favours writes made on {ahead}, whose clock is ahead; sync both clocks (chrony/NTP)",
            format_skew(c.skew_seconds, c.uncertainty_seconds),
            limits.clock_skew_warn_seconds
        ));
    }

    let (lag_bytes, lag_secs) = (d.lag_bytes, d.lag_seconds);
    let mut problem = |state: Option<State>, text: String| {
        if let Some(s) = state {
            if d.state == State::Streaming {
                d.state = s;
            }
        }
        d.problems.push(text);
    };
    match (source, target) {
        (Err(e), _) => problem(
            Some(State::Unreachable),
            format!("node {from} unreachable: {e}"),
        ),
        (_, Err(e)) => problem(
            Some(State::Unreachable),
            format!("node {to} unreachable: {e}"),
        ),
        _ => {}
    }
    if let Ok(src) = source {
        match src.slots.get(&slot_name).and_then(Option::as_ref) {
            None => problem(
                Some(State::SlotMissing),
                format!(
                    "slot {slot_name} is missing on node {from}: run `pgmesh setup -c <config>` to create it (changes made on {from} before it exists never reach {to})"
                ),
            ),
            Some(s) if s.wal_status.as_deref() == Some("lost") || s.restart_lsn.is_none() => {
                problem(
                    Some(State::SlotLost),
                    format!(
                        "slot {slot_name} on node {from} has lost WAL that node {to} never received: run `pgmesh setup -c <config>` (drops the invalidated slot and creates it again), restart node {to}'s sidecar, then `pgmesh verify` and `pgmesh repair` for what {to} missed"
                    ),
                )
            }
            Some(s) => {
                if s.wal_status.as_deref() == Some("unreserved") {
                    problem(
                        None,
                        format!(
                            "slot {slot_name} on node {from} keeps more WAL than max_wal_size and will be lost at a checkpoint unless node {to} catches up (max_slot_wal_keep_size)"
                        ),
                    );
                }
            }
        }
    }
    if let Ok(tgt) = target {
        if tgt.origins.get(&origin_name).is_some_and(Option::is_none) {
            problem(
                Some(State::SidecarDown),
                format!(
                    "replication origin {origin_name} is missing on node {to}: run `pgmesh setup -c <config>`"
                ),
            );
        }
    }
    if let (Some(s), Some(applying)) = (slot, apply_sessions) {
        let applying = applying > 0;
        let text = match (s.active, applying) {
            (true, true) => None,
            (false, false) => Some(format!(
                "the sidecar of node {to} is not running (slot {slot_name} on {from} is not in use, no `pgmesh apply` session on {to}): start `pgmesh run --node {to}`"
            )),
            (false, true) => Some(format!(
                "the sidecar of node {to} runs but does not stream from {from} (slot {slot_name} is not in use): see its log"
            )),
            (true, false) => Some(format!(
                "slot {slot_name} on {from} is in use (walsender pid {}) but node {to} has no `pgmesh apply` session: the sidecar is restarting, or another client holds the slot",
                s.active_pid.map_or("?".into(), |p| p.to_string())
            )),
        };
        if let Some(t) = text {
            problem(Some(State::SidecarDown), t);
        }
    }
    if let Some(lag) = lag_bytes {
        if u64::try_from(lag).unwrap_or(0) > limits.max_lag_bytes {
            problem(
                None,
                format!(
                    "lag {} exceeds {} (--max-lag-bytes)",
                    human_bytes(lag),
                    human_bytes(i64::try_from(limits.max_lag_bytes).unwrap_or(i64::MAX))
                ),
            );
        }
    }
    if let Some(secs) = lag_secs {
        if secs > limits.max_lag_seconds {
            problem(
                None,
                format!(
                    "lag {secs:.1}s exceeds {}s (--max-lag-seconds)",
                    limits.max_lag_seconds
                ),
            );
        }
    }
    d.healthy = d.problems.is_empty();
    d
}

/// A recorded estimate, judged against the bound while fresh.
fn clock_skew(s: &SkewFacts, limits: &Thresholds) -> ClockSkewStatus {
    let est = SkewEstimate {
        skew_us: s.skew_us,
        uncertainty_us: s.uncertainty_us,
        samples: usize::try_from(s.samples).unwrap_or(0),
    };
    let bound = std::time::Duration::try_from_secs_f64(limits.clock_skew_warn_seconds)
        .unwrap_or(std::time::Duration::MAX);
    #[allow(clippy::cast_precision_loss)]
    ClockSkewStatus {
        skew_seconds: s.skew_us as f64 / 1e6,
        uncertainty_seconds: s.uncertainty_us as f64 / 1e6,
        samples: s.samples,
        age_seconds: s.age_seconds,
        beyond_warn: s.age_seconds <= CLOCK_SKEW_STALE_SECONDS && est.beyond(bound),
    }
}

/// Seconds behind: the walsender's measurement while one streams (PostgreSQL clears it
/// once the reader has confirmed everything sent, so none means caught up), else the age
/// of the oldest waiting commit.
fn lag_seconds(s: &SlotFacts) -> Option<f64> {
    match (&s.walsender, &s.pending) {
        // No state: the role may not see walsender details, so nothing is known.
        (Some(w), _) if w.state.is_none() => None,
        (Some(w), _) => Some(w.flush_lag.or(w.replay_lag).unwrap_or(0.0)),
        (None, Pending::Nothing) => Some(0.0),
        (None, Pending::Since { seconds, .. }) => Some(seconds.max(0.0)),
        (None, _) => None,
    }
}

/// `--max-lag-bytes` value: a size such as `256MB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    ByteSize::parse(s).map(|b| b.0)
}

#[cfg(test)]
mod tests {
    use super::super::facts::{OriginFacts, WalsenderFacts};
    use super::*;

    const LIMITS: Thresholds = Thresholds {
        max_lag_bytes: 1 << 20,
        max_lag_seconds: 60.0,
        clock_skew_warn_seconds: 0.5,
    };

    fn slot(active: bool) -> SlotFacts {
        SlotFacts {
            active,
            active_pid: active.then_some(42),
            restart_lsn: Some("0/100".into()),
            confirmed_flush_lsn: Some("0/200".into()),
            wal_status: Some("reserved".into()),
            lag_bytes: Some(0),
            retained_bytes: Some(256),
            walsender: active.then(|| WalsenderFacts {
                pid: 42,
                state: Some("streaming".into()),
                application_name: Some("pgmesh".into()),
                flush_lag: None,
                replay_lag: None,
            }),
            pending: if active {
                Pending::NotChecked
            } else {
                Pending::Nothing
            },
            ..SlotFacts::default()
        }
    }

    /// Node a holds slot pgmesh_b; node b holds origin pgmesh_a and the apply session.
    fn pair(s: Option<SlotFacts>, applying: i64) -> (NodeFacts, NodeFacts) {
        let mut a = NodeFacts::default();
        a.slots.insert("pgmesh_b".into(), s);
        let mut b = NodeFacts::default();
        b.origins.insert(
            "pgmesh_a".into(),
            Some(OriginFacts {
                remote_lsn: Some("0/180".into()),
            }),
        );
        b.apply_sessions = applying;
        b.recent_conflicts = Some(vec![(Some("a".into()), 3), (None, 5)]);
        b.last_commit = Some((
            "2026-01-01T00:00:00.000000Z".into(),
            Some("pgmesh_a".into()),
        ));
        (a, b)
    }

    #[test]
    fn healthy_direction() {
        let (a, b) = pair(Some(slot(true)), 1);
        let d = assess("a", "b", Ok(&a), Ok(&b), &LIMITS);
        assert_eq!(d.state, State::Streaming);
        assert!(d.healthy, "{:?}", d.problems);
        assert_eq!(d.lag_seconds, Some(0.0));
        assert_eq!(d.conflicts_last_hour, Some(3));
        assert_eq!(d.last_applied_lsn.as_deref(), Some("0/180"));
        assert_eq!(
            d.last_applied_commit_time.as_deref(),
            Some("2026-01-01T00:00:00.000000Z")
        );
        assert_eq!(d.sidecar.walsender_pid, Some(42));
    }

    #[test]
    fn each_state_with_its_fix() {
        let cases: Vec<(Option<SlotFacts>, i64, State, &str)> = vec![
            (None, 1, State::SlotMissing, "run `pgmesh setup"),
            (
                Some(SlotFacts {
                    wal_status: Some("lost".into()),
                    ..slot(false)
                }),
                0,
                State::SlotLost,
                "drops the invalidated slot and creates it again",
            ),
            (
                Some(slot(false)),
                0,
                State::SidecarDown,
                "start `pgmesh run --node b`",
            ),
            (
                Some(slot(false)),
                1,
                State::SidecarDown,
                "does not stream from a",
            ),
            (
                Some(slot(true)),
                0,
                State::SidecarDown,
                "no `pgmesh apply` session",
            ),
        ];
        for (s, applying, state, needle) in cases {
            let (a, b) = pair(s, applying);
            let d = assess("a", "b", Ok(&a), Ok(&b), &LIMITS);
            assert_eq!(d.state, state);
            assert!(!d.healthy);
            assert!(
                d.problems.iter().any(|p| p.contains(needle)),
                "{state:?}: {:?}",
                d.problems
            );
        }
        let (_, b) = pair(None, 1);
        let d = assess("a", "b", Err("connection refused"), Ok(&b), &LIMITS);
        assert_eq!(d.state, State::Unreachable);
        assert_eq!(d.problems, ["node a unreachable: connection refused"]);
        assert_eq!(d.conflicts_last_hour, Some(3));
    }

    #[test]
    fn lag_beyond_the_limits_is_unhealthy() {
        let mut s = slot(false);
        s.lag_bytes = Some(5 << 20);
        s.pending = Pending::Since {
            commit_time: "t".into(),
            seconds: 90.0,
        };
        let (a, b) = pair(Some(s), 1);
        let d = assess("a", "b", Ok(&a), Ok(&b), &LIMITS);
        assert_eq!(d.lag_seconds, Some(90.0));
        assert_eq!(d.oldest_pending_commit_time.as_deref(), Some("t"));
        let all = d.problems.join("\n");
        assert!(
            all.contains("lag 5.0 MB exceeds 1.0 MB (--max-lag-bytes)"),
            "{all}"
        );
        assert!(all.contains("lag 90.0s exceeds 60s"), "{all}");

        let mut s = slot(true);
        s.lag_bytes = Some(10);
        if let Some(w) = s.walsender.as_mut() {
            w.flush_lag = Some(2.5);
        }
        let (a, b) = pair(Some(s.clone()), 1);
        let d = assess("a", "b", Ok(&a), Ok(&b), &LIMITS);
        assert_eq!((d.lag_seconds, d.healthy), (Some(2.5), true));
        // A role that cannot see walsender details: seconds unknown, not zero.
        if let Some(w) = s.walsender.as_mut() {
            w.state = None;
        }
        let (a, b) = pair(Some(s), 1);
        assert_eq!(assess("a", "b", Ok(&a), Ok(&b), &LIMITS).lag_seconds, None);
    }

    #[test]
    fn clock_skew_beyond_the_bound_is_a_warning_not_a_problem() {
        let skew = |skew_us, uncertainty_us, age_seconds| SkewFacts {
            skew_us,
            uncertainty_us,
            samples: 30,
            age_seconds,
        };
        let (a, mut b) = pair(Some(slot(true)), 1);
        let d = assess("a", "b", Ok(&a), Ok(&b), &LIMITS);
        assert_eq!((d.clock_skew, d.warnings.len()), (None, 0), "not recorded");
        // b's clock 1.2 s ahead of a's.
        b.clock_skew.insert("a".into(), skew(1_203_000, 4_000, 3.0));
        let d = assess("a", "b", Ok(&a), Ok(&b), &LIMITS);
        assert!(d.healthy, "{:?}", d.problems);
        let c = d.clock_skew.clone().unwrap();
        assert!(
            (c.skew_seconds - 1.203).abs() < 1e-9 && c.beyond_warn,
            "{c:?}"
        );
        assert_eq!(d.warnings.len(), 1);
        assert!(
            d.warnings[0].contains("+1.203 s ± 0.004 s")
                && d.warnings[0].contains("favours writes made on b"),
            "{:?}",
            d.warnings
        );
        // a's clock ahead: a's writes win.
        b.clock_skew.insert("a".into(), skew(-900_000, 1_000, 3.0));
        let d = assess("a", "b", Ok(&a), Ok(&b), &LIMITS);
        assert!(
            d.warnings[0].contains("favours writes made on a"),
            "{:?}",
            d.warnings
        );
        for (within, why) in [
            (skew(450_000, 1_000, 3.0), "below the bound"),
            (
                skew(700_000, 300_000, 3.0),
                "beyond only within the uncertainty",
            ),
            (skew(5_000_000, 1_000, 600.0), "stale: not judged"),
        ] {
            b.clock_skew.insert("a".into(), within);
            let d = assess("a", "b", Ok(&a), Ok(&b), &LIMITS);
            assert!(d.clock_skew.is_some_and(|c| !c.beyond_warn), "{why}");
            assert!(d.warnings.is_empty(), "{why}: {:?}", d.warnings);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 kB");
        assert_eq!(human_bytes(5i64 << 30), "5.0 GB");
        assert_eq!(parse_size("256MB"), Ok(256 << 20));
    }
}
