//! The WAL guardrail: each sidecar watches the slots on its own node (`pgmesh_<peer>`),
//! because it is the process still running when the peer's sidecar is down and the slot
//! grows. A slot that holds back WAL forever is the classic way logical replication fills
//! a primary's disk.
//!
//! Every `check_interval` the sidecar reads `pg_replication_slots` (retained WAL =
//! `pg_current_wal_lsn() - restart_lsn`, `wal_status`, `active`), decides with
//! [`assess`] (pure), logs level changes, sets the metrics and the `/readyz` report, and
//! past `limit_retained` acts by policy ([`watch`]): `warn` only reports; `drop_slot`
//! drops the slot when no walsender uses it and records the drop in
//! `pgmesh.guardrail_drops` ([`record`]), which the peer's sidecar reads to stop with a
//! message that says how to recover.

pub mod record;
pub mod watch;

pub use crate::config::human_bytes;
use std::sync::Mutex;

use serde::Serialize;

use crate::config::{GuardrailConfig, GuardrailPolicy};

/// One slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotFacts {
    pub slot: String,
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// `pg_current_wal_lsn() - restart_lsn`; `None` once the slot lost its WAL.
    pub retained: Option<u64>,
}

/// How a slot stands against the thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Level {
    Ok,
    /// Above `warn_retained`, or `wal_status = unreserved` (max_slot_wal_keep_size is
    /// about to invalidate it).
    Warn,
    /// Above `limit_retained`, or its WAL is already gone (`wal_status = lost`).
    OverLimit,
    /// Not there: dropped (by the guardrail or by hand) or never created.
    Missing,
}

impl Level {
    /// The value of `pgmesh_guardrail_state`.
    #[must_use]
    pub fn metric(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::OverLimit => 2,
            Level::Missing => 3,
        }
    }
}

/// What to do about a slot now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Policy drop_slot, over the limit, and no walsender uses it.
    DropSlot,
}

/// The decision for one slot (`None`: the slot does not exist).
#[must_use]
pub fn assess(facts: Option<&SlotFacts>, cfg: &GuardrailConfig) -> (Level, Action) {
    let Some(f) = facts else {
        return (Level::Missing, Action::Nothing);
    };
    let retained = f.retained.unwrap_or(0);
    if f.wal_status.as_deref() == Some("lost") {
        // Dropping it frees nothing: the WAL is gone already.
        return (Level::OverLimit, Action::Nothing);
    }
    if retained > cfg.limit_retained.0 {
        let act = cfg.policy == GuardrailPolicy::DropSlot && !f.active;
        return (
            Level::OverLimit,
            if act {
                Action::DropSlot
            } else {
                Action::Nothing
            },
        );
    }
    if retained > cfg.warn_retained.0 || f.wal_status.as_deref() == Some("unreserved") {
        return (Level::Warn, Action::Nothing);
    }
    (Level::Ok, Action::Nothing)
}

/// The line an operator reads about a slot at `level` (`None` when all is well).
#[must_use]
pub fn describe(
    node: &str,
    peer: &str,
    facts: Option<&SlotFacts>,
    level: Level,
    cfg: &GuardrailConfig,
) -> Option<String> {
    let slot = crate::config::names::slot_name(peer);
    let held = |f: &SlotFacts| {
        format!(
            "slot {slot} on node {node} (read by node {peer}'s sidecar, {}) retains {} of WAL",
            if f.active {
                "connected"
            } else {
                "not connected"
            },
            human_bytes(f.retained.unwrap_or(0)),
        )
    };
    match (level, facts) {
        (Level::Ok, _) => None,
        (Level::Missing, _) => Some(format!(
            "slot {slot} does not exist on node {node}: node {peer} receives no changes from {node}; run `pgmesh setup` (and check pgmesh.guardrail_drops)"
        )),
        (Level::Warn, Some(f)) if f.wal_status.as_deref() == Some("unreserved") => Some(format!(
            "{}; wal_status is unreserved: max_slot_wal_keep_size will invalidate it soon; start node {peer}'s sidecar",
            held(f)
        )),
        (Level::Warn, Some(f)) => Some(format!(
            "{} (warn_retained {}); start node {peer}'s sidecar or check its lag",
            held(f),
            human_bytes(cfg.warn_retained.0)
        )),
        (Level::OverLimit, Some(f)) if f.wal_status.as_deref() == Some("lost") => Some(format!(
            "slot {slot} on node {node} lost WAL it still needed (wal_status lost): the direction {node} -> {peer} needs a re-sync (`pgmesh setup`, then `pgmesh verify` and `pgmesh repair`)"
        )),
        (Level::OverLimit, Some(f)) => Some(format!(
            "{}, above limit_retained {} (policy {}){}",
            held(f),
            human_bytes(cfg.limit_retained.0),
            cfg.policy.as_str(),
            match (cfg.policy, f.active) {
                (GuardrailPolicy::DropSlot, true) => "; not dropped while connected".to_string(),
                (GuardrailPolicy::DropSlot, false) => "; dropping it".to_string(),
                _ => format!("; start node {peer}'s sidecar, or set policy = \"drop_slot\" and re-sync"),
            }
        )),
        (_, None) => None,
    }
}

/// One slot in `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    pub peer: String,
    pub slot: String,
    pub level: Level,
    pub retained_bytes: Option<u64>,
    pub wal_status: Option<String>,
    pub active: bool,
    pub message: Option<String>,
}

/// The guardrail's latest view, shared with the HTTP handler.
#[derive(Debug)]
pub struct GuardrailStatus {
    pub policy: GuardrailPolicy,
    pub warn_retained: u64,
    pub limit_retained: u64,
    slots: Mutex<Vec<SlotReport>>,
    error: Mutex<Option<String>>,
}

/// `GuardrailStatus` as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GuardrailReport {
    pub policy: &'static str,
    pub warn_retained_bytes: u64,
    pub limit_retained_bytes: u64,
    pub slots: Vec<SlotReport>,
    /// Why the last check failed, if it did.
    pub error: Option<String>,
}

impl GuardrailStatus {
    #[must_use]
    pub fn new(cfg: &GuardrailConfig) -> GuardrailStatus {
        GuardrailStatus {
            policy: cfg.policy,
            warn_retained: cfg.warn_retained.0,
            limit_retained: cfg.limit_retained.0,
            slots: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        }
    }

    pub fn set(&self, slots: Vec<SlotReport>) {
        if let Ok(mut s) = self.slots.lock() {
            *s = slots;
        }
        self.set_error(None);
    }

    pub fn set_error(&self, error: Option<String>) {
        if let Ok(mut e) = self.error.lock() {
            *e = error;
        }
    }

    #[must_use]
    pub fn report(&self) -> GuardrailReport {
        GuardrailReport {
            policy: self.policy.as_str(),
            warn_retained_bytes: self.warn_retained,
            limit_retained_bytes: self.limit_retained,
            slots: self.slots.lock().map(|s| s.clone()).unwrap_or_default(),
            error: self.error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn cfg(policy: GuardrailPolicy) -> GuardrailConfig {
        GuardrailConfig {
            warn_retained: ByteSize(100),
            limit_retained: ByteSize(1000),
            policy,
            ..GuardrailConfig::default()
        }
    }

    fn slot(retained: Option<u64>, status: &str, active: bool) -> SlotFacts {
        SlotFacts {
            slot: "pgmesh_b".into(),
            active,
            wal_status: Some(status.into()),
            retained,
        }
    }

    #[test]
    fn levels_and_actions() {
        use GuardrailPolicy::{DropSlot as PDrop, Warn as PWarn};
        use Level::*;
        let drop = Action::DropSlot;
        let none = Action::Nothing;
        let cases: &[(Option<SlotFacts>, GuardrailPolicy, (Level, Action))] = &[
            (None, PDrop, (Missing, none)),
            (Some(slot(Some(0), "reserved", false)), PDrop, (Ok, none)),
            (Some(slot(Some(100), "reserved", false)), PDrop, (Ok, none)),
            (Some(slot(Some(101), "reserved", true)), PWarn, (Warn, none)),
            (Some(slot(Some(5), "unreserved", true)), PWarn, (Warn, none)),
            (
                Some(slot(Some(1000), "extended", false)),
                PDrop,
                (Warn, none),
            ),
            (
                Some(slot(Some(1001), "extended", false)),
                PWarn,
                (OverLimit, none),
            ),
            (
                Some(slot(Some(1001), "extended", true)),
                PDrop,
                (OverLimit, none),
            ),
            (
                Some(slot(Some(1001), "extended", false)),
                PDrop,
                (OverLimit, drop),
            ),
            (Some(slot(None, "lost", false)), PDrop, (OverLimit, none)),
        ];
        for (facts, policy, want) in cases {
            assert_eq!(
                assess(facts.as_ref(), &cfg(*policy)),
                *want,
                "{facts:?} {policy:?}"
            );
        }
    }

    #[test]
    fn messages_name_slot_node_and_next_step() {
        let c = cfg(GuardrailPolicy::DropSlot);
        let f = slot(Some(5000), "extended", true);
        let m = describe("a", "b", Some(&f), Level::OverLimit, &c).unwrap();
        assert!(
            m.contains("pgmesh_b on node a") && m.contains("4.9 kB"),
            "{m}"
        );
        assert!(m.contains("not dropped while connected"), "{m}");
        let m = describe("a", "b", None, Level::Missing, &c).unwrap();
        assert!(m.contains("pgmesh setup"), "{m}");
        assert_eq!(describe("a", "b", Some(&f), Level::Ok, &c), None);
        assert_eq!(human_bytes(512u64), "512 B");
        assert_eq!(human_bytes(3u64 << 30), "3.0 GB");
    }
}
