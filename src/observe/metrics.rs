//! Every Prometheus metric of the sidecar: its name, its description and its buckets, in
//! one place (README "Monitoring" has the same table; `monitoring/` uses these names).
//!
//! Values are recorded through the `metrics` facade. Without an installed recorder (no
//! `[http]` configured, in-process tests) every call is a no-op; with one, a direction
//! holds its handles ([`DirectionMetrics`]) so the apply path pays an atomic add, not a
//! registry lookup.

use std::sync::OnceLock;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, SharedString, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Per direction (label `peer`): bytes of the peer's WAL not yet applied here.
pub const LAG_BYTES: &str = "pgmesh_lag_bytes";
/// Per direction: age of the oldest peer transaction received but not yet applied.
pub const LAG_SECONDS: &str = "pgmesh_lag_seconds";
/// Per direction: 1 while streaming with its apply session connected, else 0.
pub const DIRECTION_STREAMING: &str = "pgmesh_direction_streaming";
/// Per direction: upstream transactions applied (committed here).
pub const APPLIED_TRANSACTIONS: &str = "pgmesh_applied_transactions_total";
/// Per direction: row changes applied (written, or resolved by a conflict decision).
pub const APPLIED_ROWS: &str = "pgmesh_applied_rows_total";
/// Per direction and `kind` (the ledger's kind): conflicts recorded in pgmesh.conflicts.
pub const CONFLICTS: &str = "pgmesh_conflicts_total";
/// Per direction: row changes per downstream transaction (histogram).
pub const BATCH_ROWS: &str = "pgmesh_batch_rows";
/// Per direction: seconds the writer spent on one downstream transaction, its commit
/// included (histogram).
pub const APPLY_SECONDS: &str = "pgmesh_apply_batch_seconds";
/// Per direction: times the stream was restarted after an error.
pub const RECONNECTS: &str = "pgmesh_reconnects_total";
/// Per slot on this node (label `peer`: the node that reads it): WAL the slot holds back.
pub const SLOT_RETAINED: &str = "pgmesh_slot_retained_wal_bytes";
/// Per slot and `wal_status` (reserved, extended, unreserved, lost): 1 for the current one.
pub const SLOT_WAL_STATUS: &str = "pgmesh_slot_wal_status";
/// Per slot: 1 while a walsender (the peer's sidecar) uses it.
pub const SLOT_ACTIVE: &str = "pgmesh_slot_active";
/// Per slot: 0 ok, 1 above warn_retained, 2 above limit_retained or WAL lost, 3 dropped
/// or missing.
pub const GUARDRAIL_STATE: &str = "pgmesh_guardrail_state";
/// Per slot: slots dropped by the guardrail (policy drop_slot).
pub const GUARDRAIL_DROPS: &str = "pgmesh_guardrail_slot_drops_total";
/// Per direction: this node's clock minus the peer's, in seconds (signed), estimated
/// from the replication stream ([`super::skew`]); absent until measured.
pub const CLOCK_SKEW: &str = "pgmesh_clock_skew_seconds";
/// Per direction: the true skew is within `pgmesh_clock_skew_seconds` ± this.
pub const CLOCK_SKEW_UNCERTAINTY: &str = "pgmesh_clock_skew_uncertainty_seconds";
/// Per direction: peer transactions held back until this node's clock passed their
/// commit time ([`crate::conflict::causality`]); rises only while the peer's clock is
/// ahead.
pub const CLOCK_WAITS: &str = "pgmesh_clock_waits_total";
/// Per direction: big transactions the peer streamed while another one was applied open
/// here, kept whole until their commit ([`crate::txn::spool`]).
pub const STREAMED_KEPT: &str = "pgmesh_streamed_transactions_kept_total";
/// Per direction: downstream transactions written and committed in one message
/// ([`crate::apply`]'s no-conflict path; the rest took the careful way).
pub const ONE_MESSAGE_COMMITS: &str = "pgmesh_one_message_commits_total";
/// Always 1, label `version`: the sidecar is up and which version it runs.
pub const BUILD_INFO: &str = "pgmesh_build_info";

/// Every metric name, for tests that check dashboards and alert rules against them.
pub const ALL: &[&str] = &[
    LAG_BYTES,
    LAG_SECONDS,
    DIRECTION_STREAMING,
    APPLIED_TRANSACTIONS,
    APPLIED_ROWS,
    CONFLICTS,
    BATCH_ROWS,
    APPLY_SECONDS,
    RECONNECTS,
    SLOT_RETAINED,
    SLOT_WAL_STATUS,
    SLOT_ACTIVE,
    GUARDRAIL_STATE,
    GUARDRAIL_DROPS,
    CLOCK_SKEW,
    CLOCK_SKEW_UNCERTAINTY,
    CLOCK_WAITS,
    STREAMED_KEPT,
    BUILD_INFO,
];

/// `wal_status` values of `pg_replication_slots` (PostgreSQL 13+).
pub const WAL_STATUSES: &[&str] = &["reserved", "extended", "unreserved", "lost"];

const BATCH_ROWS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
const APPLY_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (every series labelled `node`) and
/// returns the handle that renders it. Installed once; later calls return the same
/// handle. The caller runs [`PrometheusHandle::run_upkeep`] periodically.
pub fn install(node: &str) -> Result<PrometheusHandle, BuildError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .add_global_label("node", node)
        .set_buckets_for_metric(Matcher::Full(BATCH_ROWS.into()), BATCH_ROWS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(APPLY_SECONDS.into()), APPLY_SECONDS_BUCKETS)?
        .install_recorder()?;
    let _ = HANDLE.set(handle.clone());
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// The `# HELP` lines.
fn describe() {
    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "Bytes of the peer's WAL not yet applied on this node"
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest peer transaction received but not yet applied (0 when caught up)"
    );
    describe_gauge!(
        DIRECTION_STREAMING,
        "1 while the direction streams from the peer with its apply session connected"
    );
    describe_counter!(
        APPLIED_TRANSACTIONS,
        "Peer transactions applied on this node"
    );
    describe_counter!(
        APPLIED_ROWS,
        "Row changes from the peer applied on this node (written or resolved by a conflict)"
    );
    describe_counter!(CONFLICTS, "Conflicts recorded in pgmesh.conflicts, by kind");
    describe_histogram!(BATCH_ROWS, "Row changes per downstream transaction");
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "Time the writer spent on one downstream transaction, commit included"
    );
    describe_counter!(
        RECONNECTS,
        "Restarts of the stream from the peer after an error"
    );
    describe_gauge!(
        SLOT_RETAINED,
        Unit::Bytes,
        "WAL held back on this node by the slot the peer reads"
    );
    describe_gauge!(
        SLOT_WAL_STATUS,
        "1 for the slot's current wal_status (reserved, extended, unreserved, lost)"
    );
    describe_gauge!(SLOT_ACTIVE, "1 while a walsender uses the slot");
    describe_gauge!(
        GUARDRAIL_STATE,
        "WAL guardrail: 0 ok, 1 above warn_retained, 2 above limit_retained or WAL lost, 3 slot dropped or missing"
    );
    describe_counter!(
        GUARDRAIL_DROPS,
        "Slots on this node dropped by the WAL guardrail (policy drop_slot)"
    );
    describe_gauge!(
        CLOCK_SKEW,
        Unit::Seconds,
        "This node's clock minus the peer's (positive: ours is ahead), from the replication stream"
    );
    describe_gauge!(
        CLOCK_SKEW_UNCERTAINTY,
        Unit::Seconds,
        "Half the smallest status round trip: the true clock skew is within the estimate plus or minus this"
    );
    describe_counter!(
        CLOCK_WAITS,
        "Peer transactions held back until this node's clock passed their commit time (the peer's clock is ahead)"
    );
    describe_counter!(
        STREAMED_KEPT,
        "Big transactions the peer streamed while another one was applied open: kept whole until their commit"
    );
    describe_counter!(
        ONE_MESSAGE_COMMITS,
        "Downstream transactions written and committed in one message (no row needed a decision)"
    );
    describe_gauge!(BUILD_INFO, "Always 1; label version");
}

/// The handles of one direction (into this node from `peer`).
#[derive(Clone)]
pub struct DirectionMetrics {
    peer: SharedString,
    pub lag_bytes: Gauge,
    pub lag_seconds: Gauge,
    pub streaming: Gauge,
    pub applied_transactions: Counter,
    pub applied_rows: Counter,
    pub batch_rows: Histogram,
    pub apply_seconds: Histogram,
    pub reconnects: Counter,
    pub clock_waits: Counter,
    pub streamed_kept: Counter,
    pub one_message_commits: Counter,
}

impl DirectionMetrics {
    /// Registers the direction's series (so they show, at 0, from the start).
    #[must_use]
    pub fn new(peer: &str) -> DirectionMetrics {
        let peer = SharedString::from(peer.to_string());
        let p = || ("peer", peer.clone());
        DirectionMetrics {
            lag_bytes: gauge!(LAG_BYTES, &[p()]),
            lag_seconds: gauge!(LAG_SECONDS, &[p()]),
            streaming: gauge!(DIRECTION_STREAMING, &[p()]),
            applied_transactions: counter!(APPLIED_TRANSACTIONS, &[p()]),
            applied_rows: counter!(APPLIED_ROWS, &[p()]),
            batch_rows: histogram!(BATCH_ROWS, &[p()]),
            apply_seconds: histogram!(APPLY_SECONDS, &[p()]),
            reconnects: counter!(RECONNECTS, &[p()]),
            clock_waits: counter!(CLOCK_WAITS, &[p()]),
            streamed_kept: counter!(STREAMED_KEPT, &[p()]),
            one_message_commits: counter!(ONE_MESSAGE_COMMITS, &[p()]),
            peer,
        }
    }

    /// `n` conflicts of `kind` were committed.
    pub fn conflicts(&self, kind: &'static str, n: u64) {
        counter!(CONFLICTS, "peer" => self.peer.clone(), "kind" => kind).increment(n);
    }

    /// The clock skew estimate (registered on the first one, so an unmeasured skew shows
    /// no series rather than a 0 that looks like a measurement).
    pub fn clock_skew(&self, skew_seconds: f64, uncertainty_seconds: f64) {
        gauge!(CLOCK_SKEW, "peer" => self.peer.clone()).set(skew_seconds);
        gauge!(CLOCK_SKEW_UNCERTAINTY, "peer" => self.peer.clone()).set(uncertainty_seconds);
    }
}

/// Records one guardrail check of the slot on this node that `peer` reads.
pub fn slot_checked(
    peer: &str,
    retained: Option<u64>,
    wal_status: Option<&str>,
    active: bool,
    state: u8,
) {
    let peer = SharedString::from(peer.to_string());
    if let Some(r) = retained {
        #[allow(clippy::cast_precision_loss)]
        gauge!(SLOT_RETAINED, "peer" => peer.clone()).set(r as f64);
    }
    for s in WAL_STATUSES {
        let v = if wal_status == Some(*s) { 1.0 } else { 0.0 };
        gauge!(SLOT_WAL_STATUS, "peer" => peer.clone(), "wal_status" => *s).set(v);
    }
    gauge!(SLOT_ACTIVE, "peer" => peer.clone()).set(if active { 1.0 } else { 0.0 });
    gauge!(GUARDRAIL_STATE, "peer" => peer).set(f64::from(state));
}

/// The guardrail dropped the slot that `peer` reads.
pub fn slot_dropped(peer: &str) {
    counter!(GUARDRAIL_DROPS, "peer" => peer.to_string()).increment(1);
}

/// Registers the drop counter at 0 (so a rate over it works from the first drop).
pub fn register_slot(peer: &str) {
    counter!(GUARDRAIL_DROPS, "peer" => peer.to_string()).absolute(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prometheus_names_with_the_prefix() {
        for n in ALL {
            assert!(n.starts_with("pgmesh_"), "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{n}");
        }
        let mut sorted = ALL.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALL.len());
    }

    #[test]
    fn direction_series_render_with_peer_labels_and_buckets() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(BATCH_ROWS.into()), BATCH_ROWS_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let m = DirectionMetrics::new("a");
            m.applied_rows.increment(3);
            m.batch_rows.record(3.0);
            m.conflicts("insert_exists", 2);
            m.clock_skew(-1.25, 0.004);
            slot_checked("a", Some(4096), Some("reserved"), true, 1);
        });
        let text = handle.render();
        for want in [
            "pgmesh_applied_rows_total{peer=\"a\"} 3",
            "pgmesh_conflicts_total{peer=\"a\",kind=\"insert_exists\"} 2",
            "pgmesh_batch_rows_bucket{peer=\"a\",le=\"5\"} 1",
            "pgmesh_lag_bytes{peer=\"a\"} 0",
            "pgmesh_slot_retained_wal_bytes{peer=\"a\"} 4096",
            "pgmesh_slot_wal_status{peer=\"a\",wal_status=\"reserved\"} 1",
            "pgmesh_slot_wal_status{peer=\"a\",wal_status=\"lost\"} 0",
            "pgmesh_guardrail_state{peer=\"a\"} 1",
            "pgmesh_clock_skew_seconds{peer=\"a\"} -1.25",
            "pgmesh_clock_skew_uncertainty_seconds{peer=\"a\"} 0.004",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
