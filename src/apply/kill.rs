//! Unique-constraint decisions shared with the peer ("kills").
//!
//! When a row loses to another row holding the same value of a unique constraint, the node
//! that decides removes it, but the peer may never meet the two rows side by side (one of
//! them came and went there before the other arrived), so it cannot reach the same
//! decision by itself. The deciding node therefore tells it: the decision goes into
//! `pgmesh.outbox` in the apply transaction and, right after that commits, into the WAL as
//! a transactional logical message with the prefix [`KILL_PREFIX`], which the peer's
//! sidecar applies in stream order (see migrations/V2).
//!
//! A kill is a delete of the losing row dated by the winning write. The receiver removes
//! its own version of the row when that version is one the decider had seen (written by
//! the decider and not newer than the version it removed) or, written elsewhere, not newer
//! than the winning write (the decider will compare that version with the winner's
//! tombstone and drop it too). Newer versions stay on both nodes.

use serde::{Deserialize, Serialize};

use super::ledger::ConflictRecord;
use super::resolve::{write_decided_tombstone, Resolver};
use super::stats::ApplyStats;
use super::ApplyError;
use crate::protocol::pgoutput::PgTimestamp;
use crate::table::local::LocalTable;
use crate::table::row::Key;
use crate::Lsn;

/// Prefix of the logical messages that carry kills.
pub const KILL_PREFIX: &str = "pgmesh.kill";

/// A version of a row: commit time (unknown for rows written before commit timestamps
/// were tracked: older than everything) and the node that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Microseconds since 2000-01-01 UTC (PostgreSQL's epoch), as pgoutput sends them.
    pub ts: Option<i64>,
    pub node: String,
}

impl Version {
    #[must_use]
    pub fn new(ts: Option<PgTimestamp>, node: &str) -> Version {
        Version {
            ts: ts.map(|t| t.0),
            node: node.to_string(),
        }
    }

    #[must_use]
    pub fn timestamp(&self) -> Option<PgTimestamp> {
        self.ts.map(PgTimestamp)
    }

    /// Last-writer-wins order: commit time, then node name (the greater name wins a tie),
    /// the same order [`crate::conflict::newer`] decides by.
    #[must_use]
    pub fn not_newer_than(&self, other: &Version) -> bool {
        (self.ts, &self.node) <= (other.ts, &other.node)
    }
}

/// One row removed by a unique-constraint decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    pub schema: String,
    pub table: String,
    /// Key values as text, in key-column order.
    pub key: Vec<String>,
    /// The version of the row the decider removed (or refused).
    pub loser: Version,
    /// The write that holds the value now.
    pub winner: Version,
    /// The node that decided.
    pub decider: String,
}

impl Kill {
    /// Whether this node's version `local` of the row goes.
    #[must_use]
    pub fn removes(&self, local: &Version) -> bool {
        if local.node == self.decider {
            local.not_newer_than(&self.loser)
        } else {
            local.not_newer_than(&self.winner)
        }
    }

    /// Parses a message body.
    pub fn parse(body: &[u8]) -> Result<Kill, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

impl Resolver<'_> {
    /// Applies a peer's kill of a row of `t` (read at `lsn` of the peer's WAL): removes this
    /// node's version when [`Kill::removes`] says so, and leaves a tombstone dated by the
    /// winning write unless a later delete is already recorded.
    pub async fn apply_kill(
        &mut self,
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
            let local = Version::new(row.ts, self.origins.node_of(row.roident));
            if !kill.removes(&local) {
                stats.skipped += 1;
                return Ok(());
            }
            self.delete(t, &[&key]).await?;
            write_decided_tombstone(self.client, self.statements, t, &key, &kill.winner).await?;
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
        let tombs = self.tombstones(t, &[&key]).await?;
        let newer_delete = tombs
            .get(&0)
            .is_some_and(|(ts, node)| !Version::new(*ts, node).not_newer_than(&kill.winner));
        if !newer_delete {
            write_decided_tombstone(self.client, self.statements, t, &key, &kill.winner).await?;
        }
        stats.skipped += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ts: i64, node: &str) -> Version {
        Version {
            ts: Some(ts),
            node: node.into(),
        }
    }

    fn kill() -> Kill {
        Kill {
            schema: "public".into(),
            table: "t".into(),
            key: vec!["1".into()],
            loser: v(10, "b"),
            winner: v(20, "a"),
            decider: "b".into(),
        }
    }

    #[test]
    fn versions_the_decider_saw_go_newer_ones_stay() {
        let k = kill();
        assert!(k.removes(&v(10, "b")));
        assert!(k.removes(&v(5, "b")));
        // Written by the decider after its decision.
        assert!(!k.removes(&v(11, "b")));
    }

    #[test]
    fn versions_from_elsewhere_are_compared_with_the_winner() {
        let k = kill();
        assert!(k.removes(&v(15, "a")));
        assert!(k.removes(&v(20, "a")));
        assert!(!k.removes(&v(21, "a")));
        assert!(k.removes(&Version {
            ts: None,
            node: "a".into()
        }));
    }

    #[test]
    fn ties_follow_node_order() {
        let mut k = kill();
        k.winner = v(20, "b");
        k.decider = "d".into();
        assert!(!k.removes(&v(20, "c")));
        assert!(k.removes(&v(20, "a")));
    }

    #[test]
    fn round_trips_as_json() {
        let k = kill();
        let text = serde_json::to_vec(&k).unwrap();
        assert_eq!(Kill::parse(&text).unwrap(), k);
        assert!(Kill::parse(b"{}").is_err());
    }
}
