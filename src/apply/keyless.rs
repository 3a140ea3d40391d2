//! Applying changes to tables without a primary key (REPLICA IDENTITY FULL).
//!
//! Such a table is a multiset of rows identified by their whole content. There is no
//! row version to compare, so last-writer-wins does not apply; instead every change is
//! applied as the multiset operation it is, which makes concurrent changes commute:
//!
//! - insert: add the row;
//! - delete (full old image): remove ONE row equal to the old image; none there → the
//!   row is already gone (a concurrent delete or update here): record `delete_missing`;
//! - update (old image + new image): replace ONE row equal to the old image by the new
//!   image; none there → record `update_missing` and add the new image.
//!
//! So an update on each node of the same row leaves both new images on both nodes, and
//! an update racing a delete leaves the updated row on both: the nodes end with the same
//! multiset, not necessarily the one either writer meant. An update that leaves the row
//! as it was changes nothing and is skipped.
//!
//! The limit of content as identity: when one node re-creates a row content (deletes a
//! row and inserts an identical one, or updates a row back to an earlier content) while
//! the other node concurrently changes the earlier identical row, the peer's change may
//! land on the new copy on one node and find nothing on the other, and the nodes differ.
//! The ledger then shows `update_missing` / `delete_missing` on one side. Give such rows
//! a key (or a distinguishing column) if that can happen. Changes stay in stream order
//! (nothing collapses per key) and run row at a time, each statement prepared once per
//! shape; such tables are expected to be rare and small-volume.

use tokio_postgres::types::ToSql;

use super::db::Db;
use super::error::ApplyError;
use super::keyless_sql;
use super::ledger::{record, ConflictRecord};
use super::stats::ApplyStats;
use crate::batch::{ChangeOp, KeylessChange, TableChunk};
use crate::conflict::{ConflictKind, Winner};
use crate::table::local::TableMap;
use crate::table::row::{Row, Val};

/// Columns an image has a value for (text or NULL): the ones a statement compares or
/// writes. Unchanged-TOAST and local-only columns are left out.
fn valued(row: &Row) -> Vec<usize> {
    row.0
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v, Val::Text(_) | Val::Null))
        .map(|(i, _)| i)
        .collect()
}

/// The values of `cols` as text parameters (`None` is NULL).
fn values<'r>(row: &'r Row, cols: &[usize]) -> Result<Vec<Option<&'r str>>, ApplyError> {
    Ok(cols
        .iter()
        .map(|&c| row.0[c].as_text())
        .collect::<Result<_, _>>()?)
}

fn params<'p>(vals: &'p [Option<&str>]) -> Vec<&'p (dyn ToSql + Sync)> {
    vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// The old image of an update or delete, checked to name a row by its whole content.
fn old_image<'c>(map: &TableMap, ch: &'c KeylessChange) -> Result<&'c Row, ApplyError> {
    let missing = |what| ApplyError::KeylessWithoutFullImage {
        table: map.local.name.clone(),
        what,
    };
    let old = ch
        .old
        .as_ref()
        .ok_or_else(|| missing("a change without the old row"))?;
    // REPLICA IDENTITY FULL logs the old row with TOASTed values inlined, so a left-out
    // column means the peer's identity is not FULL: matching on fewer columns could hit
    // a different row.
    if old.0.iter().any(|v| matches!(v, Val::Unchanged)) {
        return Err(missing("an old row with a value left out"));
    }
    if valued(old).is_empty() {
        return Err(missing("an old row without any column"));
    }
    Ok(old)
}

/// A key-less table's changes applied through `db`, as sent by `peer`.
pub(super) struct KeylessApply<'a, 'd> {
    pub(super) db: &'a mut Db<'d>,
    pub(super) peer: &'a str,
}

impl KeylessApply<'_, '_> {
    /// Applies a key-less table's changes in order, inside the open apply transaction.
    pub(super) async fn apply_keyless(
        &mut self,
        tc: &TableChunk,
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
    ) -> Result<(), ApplyError> {
        for ch in &tc.keyless {
            self.keyless_change(&tc.map, ch, ledger, stats).await?;
        }
        Ok(())
    }

    async fn keyless_change(
        &mut self,
        map: &TableMap,
        ch: &KeylessChange,
        ledger: &mut Vec<ConflictRecord>,
        stats: &mut ApplyStats,
    ) -> Result<(), ApplyError> {
        match ch.op {
            ChangeOp::Insert => {
                let new = ch.new.as_ref().ok_or_else(|| {
                    ApplyError::Protocol(format!("insert into {} without a row", map.local.name))
                })?;
                self.keyless_insert(map, new).await?;
                stats.inserted += 1;
            }
            ChangeOp::Delete => {
                let old = old_image(map, ch)?;
                if let Some((table, ctid)) = self.locate(map, old).await? {
                    let sql = keyless_sql::delete_at(&map.local);
                    let stmt = self.db.statement(&sql).await?;
                    self.db.client.execute(&stmt, &[&table, &ctid]).await?;
                    stats.deleted += 1;
                } else {
                    ledger.push(self.missing(map, ConflictKind::DeleteMissing, ch, old, None));
                    stats.conflicts += 1;
                    stats.skipped += 1;
                }
            }
            ChangeOp::Update => {
                let old = old_image(map, ch)?;
                let mut new = ch.new.clone().ok_or_else(|| {
                    ApplyError::Protocol(format!("update of {} without a row", map.local.name))
                })?;
                // Unchanged TOAST in the new image: the old image has the value.
                new.fill_unchanged_from(old);
                if new == *old {
                    // Replacing a row by itself leaves the multiset as it is, whether or
                    // not the row is here. Applying it could only hurt: where a concurrent
                    // delete removed the row, "update_missing → insert" would bring it
                    // back on this node alone.
                    stats.skipped += 1;
                    return Ok(());
                }
                if let Some((table, ctid)) = self.locate(map, old).await? {
                    let set_cols = valued(&new);
                    let vals = values(&new, &set_cols)?;
                    let sql = keyless_sql::update_at(&map.local, &set_cols).ok_or_else(|| {
                        ApplyError::Protocol(format!("update of {}: no columns", map.local.name))
                    })?;
                    let stmt = self.db.statement(&sql).await?;
                    let mut p: Vec<&(dyn ToSql + Sync)> = vec![&table, &ctid];
                    p.extend(params(&vals));
                    self.db.client.execute(&stmt, &p).await?;
                    stats.updated += 1;
                } else {
                    // The row changed or went away here meanwhile: the new image is added,
                    // as the peer's copy will be, so both nodes hold the same rows.
                    ledger.push(self.missing(
                        map,
                        ConflictKind::UpdateMissing,
                        ch,
                        old,
                        Some(&new),
                    ));
                    stats.conflicts += 1;
                    self.keyless_insert(map, &new).await?;
                    stats.inserted += 1;
                }
            }
        }
        Ok(())
    }

    /// The address (tableoid, ctid) of one row equal to `old`, locked until the apply
    /// transaction ends; `None` when no row here has that content.
    async fn locate(
        &mut self,
        map: &TableMap,
        old: &Row,
    ) -> Result<Option<(u32, String)>, ApplyError> {
        let cols = valued(old);
        let vals = values(old, &cols)?;
        let sql = keyless_sql::locate_one(&map.local, &cols);
        let stmt = self.db.statement(&sql).await?;
        let row = self.db.client.query_opt(&stmt, &params(&vals)).await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn keyless_insert(&mut self, map: &TableMap, row: &Row) -> Result<(), ApplyError> {
        let cols = valued(row);
        let vals = values(row, &cols)?;
        let sql = keyless_sql::insert_one(&map.local, &cols);
        let stmt = self.db.statement(&sql).await?;
        self.db.client.execute(&stmt, &params(&vals)).await?;
        Ok(())
    }

    /// The ledger row of a change that found no row equal to its old image. The key is
    /// the old image (the only identity such a row has); the local row is unknown.
    fn missing(
        &self,
        map: &TableMap,
        kind: ConflictKind,
        ch: &KeylessChange,
        old: &Row,
        new: Option<&Row>,
    ) -> ConflictRecord {
        let mut r = record(
            kind,
            Winner::Remote,
            &map.local.name,
            old.to_json(map),
            None,
            new.map(|n| n.to_json(map)),
            ch.commit_ts,
            self.peer,
            ch.lsn,
        );
        if kind == ConflictKind::DeleteMissing {
            // Nothing to delete and no tombstone to keep: the row is simply gone.
            r.resolution = crate::conflict::Resolution::Skipped;
        }
        r
    }
}
