//! What one peer stream needs to know, and how it fails.

use std::time::Duration;

use crate::apply::ApplyError;
pub use crate::batch::BatchLimits;
use crate::protocol::pgoutput::DecodeError;
use crate::source::error::Invalidation;
use crate::source::{BackoffPolicy, SourceConfig, SourceError};
use crate::sqlconn::SqlConfig;

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
    /// Stream the peer's transactions past this many bytes and apply them while open
    /// (`[apply] stream_after`); `None`: whole transactions only.
    pub stream_after: Option<u64>,
}

impl From<crate::apply::streamed::StreamError> for SidecarError {
    fn from(e: crate::apply::streamed::StreamError) -> Self {
        use crate::apply::streamed::StreamError;
        match e {
            StreamError::Apply(e) => SidecarError::Apply(e),
            StreamError::Unstreamable(u) => SidecarError::Unstreamable(u),
        }
    }
}

impl From<crate::txn::spool::SpoolError> for SidecarError {
    /// A kept transaction that cannot be written or read back (a full disk): the stream
    /// is read again from the applied position with streaming off for a while, so the
    /// peer sends it whole; nothing was acknowledged past it.
    fn from(e: crate::txn::spool::SpoolError) -> Self {
        use crate::txn::spool::SpoolError;
        match e {
            SpoolError::Decode(e) => SidecarError::Decode(e),
            other => {
                SidecarError::Unstreamable(crate::apply::streamed::Unstreamable(other.to_string()))
            }
        }
    }
}

/// Why a peer stream stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A streamed big transaction is read again whole (streaming off for a while).
    #[error(transparent)]
    Unstreamable(#[from] crate::apply::streamed::Unstreamable),
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
    /// PostgreSQL on the peer invalidated the slot this direction reads (its WAL passed
    /// `max_slot_wal_keep_size`; `wal_status = lost`): like a dropped slot, changes were
    /// lost for it and it can never stream again, so the direction stops.
    #[error(
        "slot {slot} on node {peer} was invalidated by PostgreSQL ({cause}); changes written \
         on node {peer} since then will never reach node {local} through it, so this direction \
         stopped. To recover: run `pgmesh setup` (it drops the invalidated slot and creates it \
         again), restart this sidecar, then `pgmesh verify` and `pgmesh repair` to bring over \
         the rows written on node {peer} while the slot was lost"
    )]
    SlotInvalidated {
        local: String,
        peer: String,
        slot: String,
        cause: Invalidation,
    },
    /// The writing task panicked or ended on its own: a bug.
    #[error("the apply task failed: {0}")]
    TaskFailed(String),
    /// A bug ([`crate::ErrorKind::Bug`]) stopped the direction: retrying would only
    /// repeat it.
    #[error(
        "the direction from node {peer} into node {local} stopped on what looks like a bug in \
         pgmesh: {source}. Nothing was skipped: the position is kept (applied up to {applied}) \
         and a restart of the sidecar resumes from it. Please report it (the pgmesh and \
         PostgreSQL versions, this message, and the sidecar's log before it; run with \
         RUST_LOG=pgmesh=debug to see the messages that led to it)"
    )]
    Bug {
        local: String,
        peer: String,
        applied: String,
        source: Box<SidecarError>,
    },
}

impl From<crate::table::TableError> for SidecarError {
    fn from(e: crate::table::TableError) -> Self {
        SidecarError::Apply(ApplyError::Table(e))
    }
}

impl SidecarError {
    /// What to do about it.
    #[must_use]
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            SidecarError::Source(e) => e.kind(),
            SidecarError::Unstreamable(_) => K::Transient,
            SidecarError::Apply(e) => e.kind(),
            SidecarError::Decode(_) | SidecarError::TaskFailed(_) | SidecarError::Bug { .. } => {
                K::Bug
            }
            SidecarError::SlotDroppedByGuardrail { .. } | SidecarError::SlotInvalidated { .. } => {
                K::NeedsOperator
            }
        }
    }

    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind() == crate::ErrorKind::Transient
    }

    /// When `self` says PostgreSQL invalidated the slot `link` reads, the error the
    /// direction stops with for good (retrying can never succeed).
    #[must_use]
    pub fn invalidated_slot(&self, link: &PeerLink) -> Option<SidecarError> {
        match self {
            SidecarError::Source(SourceError::SlotInvalidated { slot, cause, .. }) => {
                Some(SidecarError::SlotInvalidated {
                    local: link.local_node.clone(),
                    peer: link.peer.clone(),
                    slot: slot.clone(),
                    cause: cause.clone(),
                })
            }
            _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::DbError;
    use crate::ErrorKind;

    #[test]
    fn every_error_says_what_to_do() {
        let table = |t| SidecarError::Apply(ApplyError::Table(t));
        let cases = [
            (
                SidecarError::Source(SourceError::Closed { target: "a".into() }),
                ErrorKind::Transient,
            ),
            (
                table(crate::table::TableError::MissingColumn {
                    table: "t".into(),
                    column: "c".into(),
                    node: "b".into(),
                }),
                ErrorKind::NeedsOperator,
            ),
            (
                table(crate::table::TableError::Protocol("bad".into())),
                ErrorKind::Bug,
            ),
            (
                SidecarError::Apply(ApplyError::Protocol("bad".into())),
                ErrorKind::Bug,
            ),
            (SidecarError::TaskFailed("panicked".into()), ErrorKind::Bug),
            (
                SidecarError::SlotInvalidated {
                    local: "b".into(),
                    peer: "a".into(),
                    slot: "s".into(),
                    cause: Invalidation::Other("x".into()),
                },
                ErrorKind::NeedsOperator,
            ),
        ];
        for (e, kind) in cases {
            assert_eq!(e.kind(), kind, "{e}");
            assert_eq!(e.is_transient(), kind == ErrorKind::Transient, "{e}");
        }
    }

    fn link() -> PeerLink {
        let dsn = "host=127.0.0.1 port=1 user=rep dbname=app";
        PeerLink {
            local_node: "b".into(),
            peer: "a".into(),
            local: SqlConfig::from_dsn("b", dsn).unwrap(),
            peer_source: SourceConfig::from_dsn(dsn).unwrap(),
            peer_sql: SqlConfig::from_dsn("a", dsn).unwrap(),
            slot: "pgmesh_b".into(),
            publication: "pgmesh".into(),
            limits: BatchLimits::default(),
            reconnect: BackoffPolicy::default(),
            clock_skew_warn: Duration::from_secs(1),
            clock_wait_max: Duration::from_secs(10),
            stream_after: None,
        }
    }

    #[test]
    fn an_invalidated_slot_stops_the_direction_with_the_recovery() {
        let e = SidecarError::Source(SourceError::SlotInvalidated {
            target: "127.0.0.1:1".into(),
            slot: "pgmesh_b".into(),
            cause: Invalidation::WalRemoved,
            db: Box::new(DbError {
                severity: "ERROR".into(),
                code: "55000".into(),
                message: "can no longer access replication slot \"pgmesh_b\"".into(),
                ..DbError::default()
            }),
        });
        let fatal = e.invalidated_slot(&link()).expect("a stop");
        assert!(!fatal.is_transient());
        let text = fatal.to_string();
        for needle in [
            "slot pgmesh_b on node a was invalidated by PostgreSQL (its WAL passed max_slot_wal_keep_size)",
            "will never reach node b",
            "this direction stopped",
            "`pgmesh setup` (it drops the invalidated slot and creates it again)",
            "restart this sidecar",
            "`pgmesh verify` and `pgmesh repair`",
        ] {
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
        let other = SidecarError::Source(SourceError::Closed { target: "x".into() });
        assert!(other.invalidated_slot(&link()).is_none());
    }
}
