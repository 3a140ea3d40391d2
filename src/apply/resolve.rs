//! Applying one chunk: per table, first write what needs no decision
//! ([`super::uncontested`]: tables without another unique constraint), then read the
//! local versions of every key left (rows locked `FOR UPDATE`, else tombstones:
//! [`super::lookup`]), decide with the pure [`super::plan`], and write with one statement
//! per table and kind ([`super::write`], [`super::pipelined`]).
//!
//! Races with local sessions are expected, never fatal: an insert that meets a row a local
//! session inserted meanwhile (`ON CONFLICT DO NOTHING` skips it) re-enters the decision
//! with that row; a value another row holds in a second unique constraint is resolved by
//! last-writer-wins between the two rows.

use super::copy::COPY_MIN_ROWS;
use super::db::Db;
use super::error::ApplyError;
use super::keyless::KeylessApply;
use super::kill::{Kill, Version};
use super::ledger::ConflictRecord;
use super::origins::Origins;
use super::params::{groups_by_columns, key_text, Change};
use super::plan::{
    against_holder, insert_against, plan_table, unique_values, HolderVerdict, Planned, Sides,
};
use super::stats::ApplyStats;
use super::uncontested::Keyed;
use crate::batch::{Chunk, TableChunk};
use crate::table::local::{LocalTable, TableMap};
use crate::table::row::{Key, Row, Val};

/// Outcome of deciding against the rows that hold an incoming row's unique values.
enum Holders {
    /// The incoming row won (losing holders deleted) or nothing holds the values: write it.
    Cleared,
    /// A holder won (this version): the incoming row is not written.
    LocalWins(Version),
    /// A holder came from the same peer: retry after the rest of the chunk.
    SameOrigin,
}

/// What the resolver needs of its surroundings.
pub struct Resolver<'a> {
    /// The apply transaction's connection.
    pub db: Db<'a>,
    pub origins: &'a Origins,
    /// The peer the changes come from.
    pub peer: &'a str,
    /// SQL access to the peer, for values pgoutput leaves out (unchanged TOAST).
    pub peer_reader: &'a mut super::peer_read::PeerReader,
    /// Rows removed by unique-constraint decisions, for the peer (see [`super::kill`]).
    pub kills: &'a mut Vec<Kill>,
    /// The statement that commits the downstream transaction, when the caller lets the
    /// chunk's last write phase send it along (see [`Resolver::may_commit_with_writes`]).
    pub commit: Option<&'a str>,
    /// Set once `commit` went out with the writes and succeeded.
    pub committed: bool,
}

impl Resolver<'_> {
    fn sides(&self) -> Sides<'_> {
        Sides {
            origins: self.origins,
            peer: self.peer,
        }
    }

    /// Applies every table of `chunk`; conflicts are appended to `ledger`.
    pub async fn apply(
        &mut self,
        chunk: &Chunk,
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
    ) -> Result<(), ApplyError> {
        if !Self::may_commit_with_writes(chunk) {
            self.commit = None;
        }
        let last = chunk.tables.len().saturating_sub(1);
        for (n, tc) in chunk.tables.iter().enumerate() {
            if tc.map.local.is_keyless() {
                KeylessApply {
                    db: &mut self.db,
                    peer: self.peer,
                }
                .apply_keyless(tc, ledger, stats)
                .await?;
            } else {
                self.apply_table(tc, ledger, stats, n == last).await?;
            }
        }
        Ok(())
    }

    /// Whether the commit may travel with the chunk's last write phase: every table has a
    /// key and no other unique constraint, and no group of new rows is large enough for
    /// COPY (`super::copy`), so nothing can follow the writes but the ledger, and the
    /// caller only asks when there is nothing else in the transaction to lose.
    pub(super) fn may_commit_with_writes(chunk: &Chunk) -> bool {
        chunk.tables.iter().all(|tc| {
            !tc.map.local.is_keyless()
                && tc.map.local.uniques.is_empty()
                && tc.changes.len() < COPY_MIN_ROWS
        })
    }

    async fn apply_table(
        &mut self,
        tc: &TableChunk,
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
        last: bool,
    ) -> Result<(), ApplyError> {
        let map = &*tc.map;
        let t = &map.local;
        let all: Vec<Keyed<'_>> = tc.changes.iter().collect();
        let changes: Vec<Keyed<'_>> = if t.uniques.is_empty() {
            let sides = Sides {
                origins: self.origins,
                peer: self.peer,
            };
            // A conflict means ledger rows to write before the commit: commit apart.
            let commit = self.commit.filter(|_| last && ledger.is_empty());
            let done = self
                .db
                .write_uncontested(map, &all, sides, stats, commit)
                .await?;
            if done.committed {
                self.committed = true;
                return Ok(());
            }
            done.rest.into_iter().map(|i| all[i]).collect()
        } else {
            all
        };
        if changes.is_empty() {
            return Ok(());
        }
        let keys: Vec<&Key> = changes.iter().map(|c| c.0).collect();
        let (rows, tombs) = self
            .db
            .rows_and_tombstones(&map.local, &keys, self.origins)
            .await?;

        let sides = self.sides();
        let plan = plan_table(map, changes.iter().copied(), &rows, &tombs, sides);
        stats.conflicts += plan.ledger.len() as u64;
        stats.skipped += plan.skipped;
        ledger.extend(plan.ledger);
        let (deletes, tomb_keys) = (plan.deletes, plan.tombstones);
        let (insert_plan, update_plan) = (plan.inserts, plan.updates);
        let filled = self
            .peer_reader
            .fill_unchanged(&map.local, &insert_plan, &update_plan)
            .await?;
        let mut inserts: Vec<Change<'_>> = Vec::new();
        let mut updates: Vec<Change<'_>> = Vec::new();
        for (n, Planned { key, change, .. }) in insert_plan.iter().enumerate() {
            match filled.get(&(true, n)) {
                Some(Some(r)) => inserts.push((key, r, change)),
                // The peer no longer has the row: its delete is on the way.
                Some(None) => stats.skipped += 1,
                None => inserts.extend(change.row.as_ref().map(|r| (*key, r, *change))),
            }
        }
        for (n, Planned { key, change, .. }) in update_plan.iter().enumerate() {
            match filled.get(&(false, n)) {
                Some(Some(r)) => updates.push((key, r, change)),
                // Gone on the peer: keep what is here; the delete follows.
                _ => updates.extend(change.row.as_ref().map(|r| (*key, r, *change))),
            }
        }
        if t.uniques.is_empty() {
            // A conflict means ledger rows to write before the commit: commit apart.
            let commit = self.commit.filter(|_| last && ledger.is_empty());
            let written = self
                .db
                .write_pipelined(map, &deletes, &tomb_keys, &updates, &inserts, stats, commit)
                .await?;
            self.committed |= written.committed;
            if !written.not_inserted.is_empty() {
                self.resolve_not_inserted(map, &inserts, &written.not_inserted, ledger, stats, 0)
                    .await?;
            }
            return Ok(());
        }
        self.db.delete_keys(&map.local, &deletes).await?;
        stats.deleted += deletes.len() as u64;
        self.db.write_tombstones(&map.local, &tomb_keys).await?;
        self.update(map, &updates, ledger, stats).await?;
        self.insert(map, &inserts, ledger, stats, 0).await?;
        Ok(())
    }

    /// Updates grouped by the set of columns they carry; a table with other unique
    /// constraints updates under a savepoint and, on a violation, rewrites this group's
    /// rows and every later group's together (see [`Resolver::rewrite`]).
    async fn update(
        &mut self,
        map: &TableMap,
        rows: &[Change<'_>],
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
    ) -> Result<(), ApplyError> {
        let t = &map.local;
        let groups: Vec<(Vec<usize>, Vec<Change<'_>>)> =
            groups_by_columns(rows.iter().map(|(_, r, _)| *r), t, false)
                .into_iter()
                .map(|(cols, idx)| (cols, idx.iter().map(|&i| rows[i]).collect()))
                .collect();
        for (n, (cols, group)) in groups.iter().enumerate() {
            let guarded = !t.uniques.is_empty();
            if guarded {
                self.db
                    .client
                    .batch_execute("SAVEPOINT pgmesh_update")
                    .await?;
            }
            match self.db.update_group(t, cols, group).await {
                Ok(()) => {
                    stats.updated += group.len() as u64;
                    if guarded {
                        self.db
                            .client
                            .batch_execute("RELEASE SAVEPOINT pgmesh_update")
                            .await?;
                    }
                }
                Err(e) if guarded && e.sqlstate() == Some("23505") => {
                    self.db
                        .client
                        .batch_execute("ROLLBACK TO SAVEPOINT pgmesh_update")
                        .await?;
                    // A value may be handed to a row of a later group (another column
                    // set): those rows still hold their old values, so they go too.
                    let rest: Vec<Change<'_>> = groups[n..]
                        .iter()
                        .flat_map(|(_, g)| g.iter().copied())
                        .collect();
                    return self.rewrite(map, &rest, ledger, stats).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Updates that collide on another unique constraint. The rows of a chunk of such a
    /// table come from one upstream transaction, consistent on the peer; a collision among
    /// them is an ordering artifact (values handed from row to row, e.g. a swap), which no
    /// order of single-row updates may resolve. So the rows are taken out (their current
    /// values kept for columns the images leave out) and written again with their new
    /// images through the insert path, where a collision with any other row is a real
    /// conflict, decided by last-writer-wins.
    async fn rewrite(
        &mut self,
        map: &TableMap,
        rows: &[Change<'_>],
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
    ) -> Result<(), ApplyError> {
        let t = &map.local;
        let keys: Vec<&Key> = rows.iter().map(|(k, _, _)| *k).collect();
        let taken = self.db.take_rows(t, &keys).await?;
        let mut merged: Vec<(usize, Row)> = Vec::with_capacity(taken.len());
        for (i, old) in taken {
            let mut row = rows[i].1.clone();
            for (v, old) in row.0.iter_mut().zip(old) {
                if matches!(v, Val::Unchanged | Val::Absent) {
                    *v = old.map_or(Val::Null, |s| Val::Text(bytes::Bytes::from(s)));
                }
            }
            merged.push((i, row));
        }
        // Rows gone meanwhile are not written back (their delete is on its way).
        let again: Vec<Change<'_>> = merged
            .iter()
            .map(|(i, row)| (rows[*i].0, row, rows[*i].2))
            .collect();
        self.insert(map, &again, ledger, stats, 0).await
    }

    /// Inserts grouped by column set; rows skipped by `ON CONFLICT DO NOTHING` are
    /// re-decided against what is there now.
    fn insert<'s>(
        &'s mut self,
        map: &'s TableMap,
        rows: &'s [Change<'s>],
        ledger: &'s mut Vec<ConflictRecord>,
        stats: &'s mut ApplyStats,
        depth: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApplyError>> + Send + 's>>
    {
        Box::pin(async move {
            if rows.is_empty() {
                return Ok(());
            }
            let t = &map.local;
            let groups = groups_by_columns(rows.iter().map(|(_, r, _)| *r), t, true);
            let mut not_inserted: Vec<usize> = Vec::new();
            for (cols, idx) in &groups {
                // Rows that collided once take the INSERT path, which skips taken keys.
                let copy = depth == 0;
                not_inserted.extend(
                    self.db
                        .insert_group(t, rows, idx, cols, copy, stats)
                        .await?,
                );
            }
            if not_inserted.is_empty() {
                return Ok(());
            }
            if depth >= 3 {
                let (k, _, _) = rows[not_inserted[0]];
                return Err(ApplyError::Unresolved {
                    table: t.name.clone(),
                    key: k.to_json(map).to_string(),
                    detail: "the row kept colliding with concurrent local inserts".into(),
                });
            }
            self.resolve_not_inserted(map, rows, &not_inserted, ledger, stats, depth)
                .await
        })
    }

    /// Rows an insert skipped: either a local session inserted the same key meanwhile
    /// (decide again against that row) or another row holds one of its unique values.
    pub(super) async fn resolve_not_inserted(
        &mut self,
        map: &TableMap,
        rows: &[Change<'_>],
        not_inserted: &[usize],
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
        depth: u32,
    ) -> Result<(), ApplyError> {
        let t = &map.local;
        let keys: Vec<&Key> = not_inserted.iter().map(|&i| rows[i].0).collect();
        let now_there = self.db.local_rows(&map.local, &keys).await?;
        let mut updates: Vec<Change<'_>> = Vec::new();
        let mut retry: Vec<Change<'_>> = Vec::new();
        for (j, &i) in not_inserted.iter().enumerate() {
            let (key, row, p) = rows[i];
            if let Some(there) = now_there.get(&j) {
                let (as_update, conflict) = insert_against(map, (key, row, p), there, self.sides());
                if let Some(c) = conflict {
                    ledger.push(c);
                    stats.conflicts += 1;
                }
                if as_update {
                    updates.push((key, row, p));
                } else {
                    stats.skipped += 1;
                }
                continue;
            }
            // Another row holds one of this row's unique values.
            match self
                .resolve_unique_holders(map, (key, row, p), ledger, stats, depth < 2)
                .await?
            {
                Holders::Cleared | Holders::SameOrigin => retry.push((key, row, p)),
                Holders::LocalWins(winner) => {
                    // Never written here; the peer has it and is told to remove it.
                    let loser = Version::new(Some(p.commit_ts), self.peer);
                    self.decided_removal(t, key, loser, &winner).await?;
                    stats.skipped += 1;
                }
            }
        }
        self.update(map, &updates, ledger, stats).await?;
        self.insert(map, &retry, ledger, stats, depth + 1).await
    }

    /// Decides between the incoming row and each local row holding one of its unique
    /// values. With `defer_same_origin`, a holder last written by the same peer is not a
    /// conflict but an ordering artifact of the chunk (the peer had both rows consistent):
    /// the caller retries after the chunk's other rows.
    async fn resolve_unique_holders(
        &mut self,
        map: &TableMap,
        (key, row, p): Change<'_>,
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
        defer_same_origin: bool,
    ) -> Result<Holders, ApplyError> {
        let t = &map.local;
        let mut losers: Vec<(Key, Version)> = Vec::new();
        for unique in &t.uniques {
            let Some(vals) = unique_values(row, unique)? else {
                continue; // NULLs never collide
            };
            for (hkey, holder) in self.db.unique_holders(t, unique, &vals).await? {
                if &hkey == key {
                    continue;
                }
                match against_holder(
                    map,
                    (row, p),
                    (&hkey, &holder),
                    self.sides(),
                    defer_same_origin,
                ) {
                    HolderVerdict::SamePeer => return Ok(Holders::SameOrigin),
                    HolderVerdict::HolderWins(version, conflict) => {
                        ledger.push(conflict);
                        stats.conflicts += 1;
                        return Ok(Holders::LocalWins(version));
                    }
                    HolderVerdict::HolderLoses(version, conflict) => {
                        ledger.push(conflict);
                        stats.conflicts += 1;
                        losers.push((hkey, version));
                    }
                }
            }
        }
        if losers.is_empty() {
            // Nothing holds its values any more (the holder went away meanwhile): retry.
            return Ok(Holders::Cleared);
        }
        let refs: Vec<&Key> = losers.iter().map(|(k, _)| k).collect();
        self.db.delete_keys(&map.local, &refs).await?;
        stats.deleted += refs.len() as u64;
        let winner = Version::new(Some(p.commit_ts), self.peer);
        for (k, holder) in losers {
            self.decided_removal(t, &k, holder, &winner).await?;
        }
        Ok(Holders::Cleared)
    }

    /// Records that `key` lost a unique-constraint decision to `winner`: a tombstone dated
    /// by the winning write, and a kill for the peer. The row itself is already gone (or
    /// was never written).
    async fn decided_removal(
        &mut self,
        t: &LocalTable,
        key: &Key,
        loser: Version,
        winner: &Version,
    ) -> Result<(), ApplyError> {
        self.db.write_decided_tombstone(t, key, winner).await?;
        let mut texts = Vec::with_capacity(key.0.len());
        for b in &key.0 {
            texts.push(key_text(b)?.to_string());
        }
        self.kills.push(Kill {
            schema: t.schema.clone(),
            table: t.relname.clone(),
            key: texts,
            loser,
            winner: winner.clone(),
            decider: self.origins.local_node.clone(),
        });
        Ok(())
    }
}
