//! Every transition of the control plane is an [`Event`] with a reason: logged, counted in
//! a metric, kept in etcd's history for `pgmesh status`, and (next) sent to hooks.

use serde::{Deserialize, Serialize};

/// How many events etcd keeps per cluster.
pub const KEEP_EVENTS: usize = 200;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A region took an endpoint nobody owned (its home, at start).
    Acquired,
    /// A region took an endpoint from a region that is gone or failed.
    Failover,
    /// A region gave an endpoint up (its primary failed).
    Released,
    /// A planned move finished.
    Switchover,
    SwitchoverAborted,
    /// An operator forced an endpoint onto a region (`pgmesh failover --force`).
    ForcedFailover,
    Fenced,
    Unfenced,
    LeaseLost,
    HealthChanged,
    Maintenance,
}

impl EventKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Acquired => "acquired",
            EventKind::Failover => "failover",
            EventKind::Released => "released",
            EventKind::Switchover => "switchover",
            EventKind::SwitchoverAborted => "switchover_aborted",
            EventKind::ForcedFailover => "forced_failover",
            EventKind::Fenced => "fenced",
            EventKind::Unfenced => "unfenced",
            EventKind::LeaseLost => "lease_lost",
            EventKind::HealthChanged => "health_changed",
            EventKind::Maintenance => "maintenance",
        }
    }
}

/// What a failover may have lost: the old owner's transactions after the last position
/// the survivor applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rpo {
    /// The survivor's applied position of the old owner's WAL (origin progress).
    pub applied_lsn: Option<String>,
    /// The old owner's last WAL position it published to etcd, and when.
    pub last_written_lsn: Option<String>,
    pub last_written_at_ms: Option<i64>,
    /// `last_written - applied` in bytes, when both are known (0: nothing lost).
    pub bytes: Option<u64>,
}

/// One transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: i64,
    /// The region whose agent recorded it.
    pub node: String,
    /// Per agent process, so two events in one millisecond keep both.
    pub seq: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Rpo>,
}
