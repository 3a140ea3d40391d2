//! `pgmesh status`: for every direction (peer → node) its state, lag in bytes and
//! seconds, last applied position, the slot's retained WAL, recent conflicts and the
//! sidecar's health, read from both nodes of the direction.
//!
//! Where each number comes from:
//! - lag bytes: on the source, `pg_current_wal_lsn() - confirmed_flush_lsn` of slot
//!   `pgmesh_<node>` (the sidecar confirms only what it durably applied);
//! - lag seconds: while the sidecar streams, the walsender's `flush_lag`
//!   (`pg_stat_replication`; PostgreSQL clears it once everything sent is confirmed, so
//!   none means 0); while nobody streams the slot, now minus the commit time of the
//!   oldest transaction the slot still holds, read by peeking the slot;
//! - last applied LSN: progress of origin `pgmesh_<peer>` on the target; its commit time
//!   when the target's newest commit is an applied one (`pg_last_committed_xact`);
//! - retained WAL: `pg_current_wal_lsn() - restart_lsn`, with `wal_status`;
//! - sidecar health: the slot is in use (a walsender streams it) and the target has a
//!   `pgmesh apply` session;
//! - conflicts: `pgmesh.conflicts` on the target, last hour, `remote_origin` = the peer.
//! - clock skew: `pgmesh.clock_skew` on the target, where its sidecar records its clock
//!   minus the source's, estimated from the stream ([`crate::observe::skew`]); a warning
//!   (not a problem: replication still converges) when surely beyond
//!   `[replication] clock_skew_warn`.

pub mod assess;
pub mod facts;
mod pending;
pub mod probe;
pub mod render;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use crate::config::{names, Config};
pub use assess::{assess, human_bytes, parse_size};
pub use facts::NodeProbe;

/// What a direction is doing, worst first when several apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    Streaming,
    SidecarDown,
    SlotMissing,
    SlotLost,
    Unreachable,
}

impl State {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            State::Streaming => "streaming",
            State::SidecarDown => "sidecar down",
            State::SlotMissing => "slot missing",
            State::SlotLost => "slot lost",
            State::Unreachable => "node unreachable",
        }
    }
}

/// When a streaming direction still counts as unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    pub max_lag_bytes: u64,
    pub max_lag_seconds: f64,
    /// `[replication] clock_skew_warn`, seconds.
    pub clock_skew_warn_seconds: f64,
}

/// A clock skew estimate older than this is shown with its age and not judged (the
/// sidecar writes one every 10 s while it streams).
pub const CLOCK_SKEW_STALE_SECONDS: f64 = 60.0;

/// The target's clock against the source's, as the target's sidecar estimated it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClockSkewStatus {
    /// The target's clock minus the source's (positive: the target's is ahead).
    pub skew_seconds: f64,
    /// The true skew is within `skew_seconds ± uncertainty_seconds`.
    pub uncertainty_seconds: f64,
    pub samples: i32,
    /// How long ago the sidecar recorded it.
    pub age_seconds: f64,
    /// Surely beyond `[replication] clock_skew_warn` (judged only while fresh).
    pub beyond_warn: bool,
}

/// Whether the sidecar of the target node serves this direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SidecarHealth {
    /// A walsender streams the slot.
    pub slot_active: Option<bool>,
    pub walsender_pid: Option<i32>,
    pub walsender_application_name: Option<String>,
    /// The target has a `pgmesh apply` session.
    pub apply_session: Option<bool>,
}

/// One direction, `from`'s changes applied into `to`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DirectionStatus {
    pub from: String,
    pub to: String,
    pub state: State,
    pub healthy: bool,
    /// Each with what to do; empty when healthy.
    pub problems: Vec<String>,
    /// Slot on `from`.
    pub slot: String,
    /// Replication origin on `to`.
    pub origin: String,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub last_applied_lsn: Option<String>,
    pub last_applied_commit_time: Option<String>,
    /// Commit time of the oldest transaction waiting in the slot (known while nobody
    /// streams it).
    pub oldest_pending_commit_time: Option<String>,
    pub retained_wal_bytes: Option<i64>,
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
    pub conflicts_last_hour: Option<i64>,
    pub sidecar: SidecarHealth,
    /// `None`: not recorded (sidecar never streamed since setup, or an old schema).
    pub clock_skew: Option<ClockSkewStatus>,
    /// Things to look at that do not make the direction unhealthy (a clock skew).
    pub warnings: Vec<String>,
}

/// One node as status saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    /// `host:port/dbname` (no password).
    pub target: String,
    pub reachable: bool,
    pub server_version: Option<String>,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusReport {
    pub healthy: bool,
    pub nodes: Vec<NodeStatus>,
    pub directions: Vec<DirectionStatus>,
    pub thresholds: Thresholds,
}

/// Reads every node involved and judges every direction (only those into `into` when
/// given; the caller checks the name). Each node gets `timeout` to answer.
pub async fn status(
    cfg: &Config,
    into: Option<&str>,
    limits: Thresholds,
    timeout: Duration,
) -> StatusReport {
    let directions: Vec<(String, String)> = cfg
        .nodes
        .keys()
        .flat_map(|from| {
            cfg.peers(from)
                .map(move |to| (from.clone(), to.name.clone()))
        })
        .filter(|(_, to)| into.is_none_or(|n| n == to))
        .collect();
    let involved: BTreeSet<&String> = directions.iter().flat_map(|(f, t)| [f, t]).collect();
    let peek_timeout = (timeout / 3).max(Duration::from_millis(100));
    let probes = futures_util::future::join_all(involved.iter().map(|name| {
        let node = &cfg.nodes[*name];
        let slots: Vec<String> = directions
            .iter()
            .filter(|(f, _)| f == *name)
            .map(|(_, t)| names::slot_name(t))
            .collect();
        let origins: Vec<String> = directions
            .iter()
            .filter(|(_, t)| t == *name)
            .map(|(f, _)| names::origin_name(f))
            .collect();
        async move {
            match tokio::time::timeout(
                timeout,
                probe::probe_node(node, &slots, &origins, peek_timeout),
            )
            .await
            {
                Ok(p) => p,
                Err(_) => NodeProbe {
                    name: node.name.clone(),
                    target: node
                        .sql_config()
                        .map(|c| c.target())
                        .unwrap_or_else(|_| "?".into()),
                    facts: Err(format!("no answer within {}s", timeout.as_secs_f64())),
                },
            }
        }
    }))
    .await;
    let find = |name: &str| -> Result<&facts::NodeFacts, &str> {
        match probes.iter().find(|p| p.name == name).map(|p| &p.facts) {
            Some(Ok(f)) => Ok(f),
            Some(Err(e)) => Err(e.as_str()),
            None => Err("not probed"),
        }
    };
    let directions: Vec<DirectionStatus> = directions
        .iter()
        .map(|(from, to)| assess(from, to, find(from), find(to), &limits))
        .collect();
    let nodes: Vec<NodeStatus> = probes
        .iter()
        .map(|p| NodeStatus {
            name: p.name.clone(),
            target: p.target.clone(),
            reachable: p.facts.is_ok(),
            server_version: p.facts.as_ref().ok().map(|f| f.server_version.clone()),
            error: p.facts.as_ref().err().cloned(),
            notes: p
                .facts
                .as_ref()
                .map(|f| f.notes.clone())
                .unwrap_or_default(),
        })
        .collect();
    StatusReport {
        healthy: nodes.iter().all(|n| n.reachable) && directions.iter().all(|d| d.healthy),
        nodes,
        directions,
        thresholds: limits,
    }
}
