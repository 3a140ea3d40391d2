//! Applying a peer's unique-constraint decision (a kill, see [`super::kill`]).

use super::db::Db;
use super::error::ApplyError;
use super::kill::{Kill, Version};
use super::ledger::ConflictRecord;
use super::origins::Origins;
use super::stats::ApplyStats;
use crate::table::local::LocalTable;
use crate::table::row::Key;
use crate::Lsn;

impl Db<'_> {
    /// Applies a peer's kill of a row of `t` (read at `lsn` of the peer's WAL): removes this
    /// node's version when [`Kill::removes`] says so, and leaves a tombstone dated by the
    /// winning write unless a later delete is already recorded.
    pub async fn apply_kill(
        &mut self,
        origins: &Origins,
        t: &LocalTable,
        kill: &Kill,
        lsn: Lsn,
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
    ) -> Result<(), ApplyError> {
        if kill.key.len() != t.pk.len() {
            return Err(ApplyError::Protocol(format!(
                "a unique-constraint decision from {} names {} key values for {}, which has {} key columns",
                kill.decider,
                kill.key.len(),
                t.name,
                t.pk.len()
            )));
        }
        let key = Key(kill
            .key
            .iter()
            .map(|k| bytes::Bytes::from(k.clone()))
            .collect());
        let rows = self.local_rows(t, &[&key]).await?;
        if let Some(row) = rows.get(&0) {
            let local = Version::new(row.ts, origins.node_of(row.roident));
            if !kill.removes(&local) {
                stats.skipped += 1;
                return Ok(());
            }
            self.delete_keys(t, &[&key]).await?;
            self.write_decided_tombstone(t, &key, &kill.winner).await?;
            stats.deleted += 1;
            ledger.push(ConflictRecord {
                kind: crate::conflict::LedgerKind::Conflict(
                    crate::conflict::ConflictKind::UniqueExists,
                ),
                table_name: t.name.clone(),
                key: key.to_json_in(t),
                local_row: serde_json::from_str(&row.json).ok(),
                remote_row: None,
                local_commit_ts: row.ts.map(super::ledger::ts_text),
                remote_commit_ts: kill.winner.timestamp().map(super::ledger::ts_text),
                local_origin: Some(local.node),
                remote_origin: Some(kill.winner.node.clone()),
                winner: crate::conflict::Winner::Remote,
                resolution: crate::conflict::Resolution::RemovedByPeerDecision,
                remote_lsn: Some(lsn.to_string()),
            });
            return Ok(());
        }
        // Not here: keep the decision, so an older write of the row arriving later loses.
        let tombs = self.tombstones(t, &[&key], origins).await?;
        let newer_delete = tombs
            .get(&0)
            .is_some_and(|(ts, node)| !Version::new(*ts, node).not_newer_than(&kill.winner));
        if !newer_delete {
            self.write_decided_tombstone(t, &key, &kill.winner).await?;
        }
        stats.skipped += 1;
        Ok(())
    }
}
