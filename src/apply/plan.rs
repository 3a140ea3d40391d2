//! The apply plan: what to do with a chunk's changes to one table, decided from the local
//! versions the lookup found. Pure: no I/O, no clock. [`crate::conflict::decide`] judges
//! one row; this module turns its verdicts into the chunk's writes, ledger rows and
//! questions for the peer, and decides the two races the executors meet afterwards (a key
//! a local session inserted since the lookup, a row holding another unique value).

use super::kill::Version;
use super::ledger::{record, ConflictRecord};
use super::lookup::{LocalRow, LocalRows, Tombstone, Tombstones};
use super::origins::Origins;
use crate::batch::{ChangeOp, Pending};
use crate::conflict::{
    decide, newer, Action, ConflictKind, LocalVersion, RemoteOp, RemoteVersion, Winner,
};
use crate::table::local::TableMap;
use crate::table::row::{Key, Row};

/// A change to write, and whether its unchanged-TOAST columns must come from the peer
/// (this node's copy of them may differ from the peer's).
#[derive(Debug, Clone, Copy)]
pub(super) struct Planned<'c> {
    pub(super) key: &'c Key,
    pub(super) change: &'c Pending,
    pub(super) ask_peer: bool,
}

/// What to do with one table's changes of a chunk.
#[derive(Debug, Default)]
pub(super) struct TablePlan<'c> {
    /// Rows to delete (each also gets a tombstone).
    pub(super) deletes: Vec<&'c Key>,
    /// Keys whose delete is recorded as a tombstone (deleted rows and rows already gone).
    pub(super) tombstones: Vec<&'c Key>,
    pub(super) updates: Vec<Planned<'c>>,
    pub(super) inserts: Vec<Planned<'c>>,
    /// One record per conflict, in the order of the changes.
    pub(super) ledger: Vec<ConflictRecord>,
    /// Changes that write nothing (lost, or nothing left to write).
    pub(super) skipped: u64,
}

/// Who is asking: this node's origins and the peer whose changes these are.
#[derive(Clone, Copy)]
pub(super) struct Sides<'a> {
    pub(super) origins: &'a Origins,
    pub(super) peer: &'a str,
}

impl Sides<'_> {
    /// The peer's origins (`roident`s, including the one that stands for this very
    /// transaction): a row whose last writer is one of them was written by its stream.
    pub(super) fn peer_origins(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .origins
            .by_roident
            .iter()
            .filter(|(_, node)| node.as_str() == self.peer)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn remote(&self, op: RemoteOp, p: &Pending) -> RemoteVersion<'_> {
        RemoteVersion {
            op,
            commit_ts: p.commit_ts,
            node: self.peer,
        }
    }

    /// The ledger row of a conflict over `key` between the local version `local` (row
    /// image, commit time, node) and the incoming change `p`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        map: &TableMap,
        (kind, winner): (ConflictKind, Winner),
        key: &Key,
        local: Option<(
            Option<serde_json::Value>,
            Option<crate::protocol::pgoutput::PgTimestamp>,
            String,
        )>,
        row: Option<&Row>,
        p: &Pending,
    ) -> ConflictRecord {
        record(
            kind,
            winner,
            &map.local.name,
            key.to_json(map),
            local,
            row.map(|r| r.to_json(map)),
            p.commit_ts,
            self.peer,
            p.lsn,
        )
    }

    fn row_info(
        &self,
        r: &LocalRow,
    ) -> (
        Option<serde_json::Value>,
        Option<crate::protocol::pgoutput::PgTimestamp>,
        String,
    ) {
        (
            serde_json::from_str(&r.json).ok(),
            r.ts,
            self.origins.node_of(r.roident).to_string(),
        )
    }
}

fn remote_op(p: &Pending) -> RemoteOp {
    match p.op {
        ChangeOp::Insert => RemoteOp::Insert,
        ChangeOp::Update => RemoteOp::Update,
        ChangeOp::Delete => RemoteOp::Delete,
    }
}

/// Plans `changes` (in chunk order; `rows` and `tombs` by position in it) against the
/// local versions.
pub(super) fn plan_table<'c>(
    map: &TableMap,
    changes: impl IntoIterator<Item = (&'c Key, &'c Pending)>,
    rows: &LocalRows,
    tombs: &Tombstones,
    sides: Sides<'_>,
) -> TablePlan<'c> {
    let mut plan = TablePlan::default();
    for (i, (key, p)) in changes.into_iter().enumerate() {
        let local = match (rows.get(&i), tombs.get(&i)) {
            (Some(r), _) => LocalVersion::Row {
                commit_ts: r.ts,
                node: sides.origins.node_of(r.roident),
            },
            (None, Some((ts, node))) => LocalVersion::Deleted {
                commit_ts: *ts,
                node,
            },
            (None, None) => LocalVersion::Absent,
        };
        if p.op == ChangeOp::Delete && p.born_in_chunk && matches!(local, LocalVersion::Absent) {
            // Inserted and deleted upstream within this chunk, never here: nothing to do.
            continue;
        }
        let d = decide(&local, &sides.remote(remote_op(p), p));
        if let Some(conflict) = d.conflict {
            let local_info = rows
                .get(&i)
                .map(|r| sides.row_info(r))
                .or_else(|| tombs.get(&i).map(|(ts, node)| (None, *ts, node.clone())));
            plan.ledger
                .push(sides.record(map, conflict, key, local_info, p.row.as_ref(), p));
        }
        let partial = p.row.as_ref().is_some_and(|r| !r.is_complete());
        let local_is_peers = matches!(local, LocalVersion::Row { node, .. } if node == sides.peer);
        let planned = |ask_peer| Planned {
            key,
            change: p,
            ask_peer,
        };
        match d.action {
            Action::Insert if p.row.is_some() => plan.inserts.push(planned(partial)),
            // This node's copy of unchanged columns is the peer's only when the row was
            // last written by the peer's own stream.
            Action::Update if p.row.is_some() => {
                plan.updates.push(planned(partial && !local_is_peers));
            }
            Action::Insert | Action::Update | Action::Skip => plan.skipped += 1,
            Action::Delete => {
                plan.deletes.push(key);
                plan.tombstones.push(key);
            }
            Action::Tombstone => plan.tombstones.push(key),
        }
    }
    plan
}

/// Whether a new row may stay over its key's tombstone `tomb` without a decision: only
/// when `decide` makes the insert clean (the peer's own stream deleted the key before,
/// and now reuses it). Any other tombstone is a conflict to decide and record.
pub(super) fn insert_stays_over(tomb: &Tombstone, p: &Pending, sides: Sides<'_>) -> bool {
    let d = decide(
        &LocalVersion::Deleted {
            commit_ts: tomb.0,
            node: &tomb.1,
        },
        &sides.remote(RemoteOp::Insert, p),
    );
    d.action == Action::Insert && d.conflict.is_none()
}

/// A new row whose insert met a row a local session wrote since the lookup, decided
/// again against that row: whether to write it as an update, and the ledger row if the
/// two conflict.
pub(super) fn insert_against(
    map: &TableMap,
    (key, row, p): (&Key, &Row, &Pending),
    there: &LocalRow,
    sides: Sides<'_>,
) -> (bool, Option<ConflictRecord>) {
    let local_node = sides.origins.node_of(there.roident);
    let d = decide(
        &LocalVersion::Row {
            commit_ts: there.ts,
            node: local_node,
        },
        &sides.remote(RemoteOp::Insert, p),
    );
    let ledger = d
        .conflict
        .map(|c| sides.record(map, c, key, Some(sides.row_info(there)), Some(row), p));
    (d.action == Action::Update, ledger)
}

/// The verdict between an incoming row and a local row holding one of its unique values.
#[derive(Debug)]
pub(super) enum HolderVerdict {
    /// The holder was last written by the same peer: not a conflict but an ordering
    /// artifact of the chunk (the peer had both rows consistent); retry after the rest.
    SamePeer,
    /// The holder (this version) keeps the value; the incoming row is not written.
    HolderWins(Version, ConflictRecord),
    /// The holder (this version) goes; the incoming row takes the value.
    HolderLoses(Version, ConflictRecord),
}

/// Decides between the incoming row `(key, row, p)` and `holder`, the local row `hkey`
/// holding one of its unique values. With `defer_same_peer`, a holder from the same peer
/// is [`HolderVerdict::SamePeer`].
pub(super) fn against_holder(
    map: &TableMap,
    (row, p): (&Row, &Pending),
    (hkey, holder): (&Key, &LocalRow),
    sides: Sides<'_>,
    defer_same_peer: bool,
) -> HolderVerdict {
    let node = sides.origins.node_of(holder.roident);
    if defer_same_peer && node == sides.peer {
        return HolderVerdict::SamePeer;
    }
    let winner = newer(holder.ts, node, &sides.remote(RemoteOp::Insert, p));
    let version = Version::new(holder.ts, node);
    let ledger = sides.record(
        map,
        (ConflictKind::UniqueExists, winner),
        hkey,
        Some(sides.row_info(holder)),
        Some(row),
        p,
    );
    match winner {
        Winner::Local => HolderVerdict::HolderWins(version, ledger),
        Winner::Remote => HolderVerdict::HolderLoses(version, ledger),
    }
}

/// The values `row` has in the unique constraint over `unique`; `None` when one is NULL
/// (NULLs never collide).
pub(super) fn unique_values<'r>(
    row: &'r Row,
    unique: &[usize],
) -> Result<Option<Vec<&'r str>>, crate::table::TableError> {
    let mut vals = Vec::with_capacity(unique.len());
    for &c in unique {
        match row.0[c].as_text()? {
            Some(v) => vals.push(v),
            None => return Ok(None),
        }
    }
    Ok(Some(vals))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
