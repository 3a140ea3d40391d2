//! Conflict records, written to `pgmesh.conflicts` in the transaction that resolves them.

use serde::Serialize;

use crate::conflict::{ConflictKind, LedgerKind, Resolution, Winner};
use crate::protocol::pgoutput::PgTimestamp;
use crate::Lsn;

/// One row of `pgmesh.conflicts` (column names match; sent as a JSON array).
#[derive(Debug, Clone, Serialize)]
pub struct ConflictRecord {
    pub kind: LedgerKind,
    pub table_name: String,
    pub key: serde_json::Value,
    pub local_row: Option<serde_json::Value>,
    pub remote_row: Option<serde_json::Value>,
    pub local_commit_ts: Option<String>,
    pub remote_commit_ts: Option<String>,
    pub local_origin: Option<String>,
    pub remote_origin: Option<String>,
    pub winner: Winner,
    pub resolution: Resolution,
    pub remote_lsn: Option<String>,
}

/// RFC 3339 text of a commit time (accepted by `timestamptz` input).
#[must_use]
pub fn ts_text(ts: PgTimestamp) -> String {
    crate::pgtime::rfc3339(ts.0)
}

/// Builder helpers shared by the resolver.
#[allow(clippy::too_many_arguments)]
#[must_use]
pub fn record(
    kind: ConflictKind,
    winner: Winner,
    table_name: &str,
    key: serde_json::Value,
    local: Option<(Option<serde_json::Value>, Option<PgTimestamp>, String)>,
    remote_row: Option<serde_json::Value>,
    remote_ts: PgTimestamp,
    remote_origin: &str,
    remote_lsn: Lsn,
) -> ConflictRecord {
    let (local_row, local_ts, local_origin) = match local {
        Some((row, ts, origin)) => (row, ts, Some(origin)),
        None => (None, None, None),
    };
    ConflictRecord {
        kind: LedgerKind::Conflict(kind),
        table_name: table_name.to_string(),
        key,
        local_row,
        remote_row,
        local_commit_ts: local_ts.map(ts_text),
        remote_commit_ts: Some(ts_text(remote_ts)),
        local_origin,
        remote_origin: Some(remote_origin.to_string()),
        winner,
        resolution: Resolution::of(kind, winner),
        remote_lsn: Some(remote_lsn.to_string()),
    }
}
