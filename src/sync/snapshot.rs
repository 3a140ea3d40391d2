//! A snapshot of a source node that matches a slot position: everything committed before
//! it is in the snapshot, everything after it is streamed from the slot.

use super::SyncError;
use crate::config::{names, NodeConfig};
use crate::source::{
    create_slot, drop_slot, slot_info, CreateSlot, ReplicationConnection, SnapshotAction,
};
use crate::Lsn;

/// An exported snapshot, valid while this walsender connection stays open and idle.
pub struct PinnedSnapshot {
    conn: ReplicationConnection,
    pub source: String,
    /// Pass to `SET TRANSACTION SNAPSHOT` in a REPEATABLE READ transaction on the source.
    pub name: String,
    pub consistent_point: Lsn,
    /// The slot that exported it: the target's own slot when it did not exist yet (the
    /// copy then needs no overlap with the stream at all), else a temporary one.
    pub slot: String,
    /// Whether `slot` is the target's permanent slot, created here.
    pub created_permanent: bool,
}

impl PinnedSnapshot {
    /// Pins a snapshot on `source` for a copy into `target`. Creates the slot `target`'s
    /// sidecar streams from when it is missing; otherwise a temporary slot (the target's
    /// slot is behind it, so the overlap is streamed again and decided by commit time).
    /// A slot PostgreSQL invalidated (`wal_status = lost`) counts as missing: it is
    /// dropped and created again here (setup normally dropped it already).
    pub async fn pin(source: &NodeConfig, target: &str) -> Result<PinnedSnapshot, SyncError> {
        let cfg = source.source_config().map_err(SyncError::Config)?;
        let node = source.name.clone();
        let ctx = |e| SyncError::Source {
            node: node.clone(),
            source: e,
        };
        let mut conn = ReplicationConnection::connect(&cfg).await.map_err(ctx)?;
        let own = names::slot_name(target);
        let exists = match slot_info(&mut conn, &own).await.map_err(ctx)? {
            Some(info) if info.wal_status.as_deref() == Some("lost") => {
                tracing::warn!(node = %node, slot = %own, "dropping the slot PostgreSQL invalidated (wal_status lost) to create it again");
                drop_slot(&mut conn, &own, false).await.map_err(ctx)?;
                false
            }
            info => info.is_some(),
        };
        let opts = if exists {
            CreateSlot {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..CreateSlot::new(&format!("pgmesh_copy_{target}_{}", std::process::id()))
            }
        } else {
            CreateSlot {
                snapshot: SnapshotAction::Export,
                ..CreateSlot::new(&own)
            }
        };
        let created = create_slot(&mut conn, &opts).await.map_err(ctx)?;
        let name = created.snapshot_name.ok_or_else(|| SyncError::Protocol {
            node: node.clone(),
            message: "CREATE_REPLICATION_SLOT returned no snapshot name".into(),
        })?;
        Ok(PinnedSnapshot {
            conn,
            source: node,
            name,
            consistent_point: created.consistent_point,
            slot: created.slot_name,
            created_permanent: !exists,
        })
    }

    /// Ends the walsender session; a temporary slot goes with it.
    pub async fn release(self) {
        if let Err(e) = self.conn.close().await {
            tracing::debug!(source = %self.source, error = %e, "closing the snapshot connection");
        }
    }
}
