//! What one peer stream needs to know, and how it fails.

use std::time::Duration;

use crate::apply::ApplyError;
use crate::protocol::pgoutput::DecodeError;
use crate::source::{BackoffPolicy, SourceConfig, SourceError};
use crate::sqlconn::SqlConfig;

/// Bounds of one downstream transaction (and of memory held for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Changes collected before they are written (also mid-transaction: a large upstream
    /// transaction is written in chunks of this size, never held whole).
    pub max_rows: usize,
    pub max_bytes: usize,
    /// How long a downstream transaction may stay open waiting for more upstream ones.
    pub max_delay: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_rows: 5000,
            max_bytes: 16 << 20,
            max_delay: Duration::from_millis(2),
        }
    }
}

/// One direction: changes of `peer` applied into `local_node`.
#[derive(Debug, Clone)]
pub struct PeerLink {
    pub local_node: String,
    pub peer: String,
    /// Connection to the local node (password resolved).
    pub local: SqlConfig,
    /// Replication connection to the peer.
    pub peer_source: SourceConfig,
    /// Plain SQL connection to the peer (values pgoutput leaves out).
    pub peer_sql: SqlConfig,
    /// Slot on the peer that this node reads (`pgmesh_<local_node>`).
    pub slot: String,
    pub publication: String,
    pub limits: BatchLimits,
    /// How long to wait between attempts while the peer or the local node is unreachable
    /// (`BackoffPolicy::default()`: 100 ms doubling to 30 s). Tests shorten the cap to
    /// reach it in seconds instead of minutes.
    pub reconnect: BackoffPolicy,
    /// Warn when this node's clock is surely further than this from the peer's
    /// (`[replication] clock_skew_warn`).
    pub clock_skew_warn: Duration,
    /// Longest wait for this node's clock to pass a peer commit's time before applying
    /// it (`[replication] clock_wait_max`; see [`crate::conflict::causality`]).
    pub clock_wait_max: Duration,
}

/// Why a peer stream stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("undecodable pgoutput message from the peer: {0}")]
    Decode(#[from] DecodeError),
    /// The peer's WAL guardrail (`[guardrail] policy = "drop_slot"`) dropped the slot this
    /// direction reads: changes were lost for it, so it stops instead of retrying.
    #[error(
        "slot {slot} on node {peer} was dropped by node {peer}'s WAL guardrail at {dropped_at} \
         (it retained {retained} of WAL, above limit_retained {limit}); changes written on node \
         {peer} since then will never reach node {local} through it, so this direction stopped. \
         To recover: run `pgmesh setup` to create the slot again, restart this sidecar, then \
         `pgmesh verify` and `pgmesh repair` to bring over the rows written on node {peer} \
         while the slot was gone"
    )]
    SlotDroppedByGuardrail {
        local: String,
        peer: String,
        slot: String,
        dropped_at: String,
        retained: String,
        limit: String,
    },
}

impl SidecarError {
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            SidecarError::Source(e) => e.is_transient(),
            SidecarError::Apply(e) => e.is_transient(),
            SidecarError::Decode(_) | SidecarError::SlotDroppedByGuardrail { .. } => false,
        }
    }

    /// The table difference that stopped the direction (see [`crate::apply::shape`]).
    #[must_use]
    pub fn schema_mismatch(&self) -> Option<&crate::apply::shape::SchemaMismatch> {
        match self {
            SidecarError::Apply(e) => e.schema_mismatch(),
            _ => None,
        }
    }
}
