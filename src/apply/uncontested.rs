//! The no-conflict path (issue 15). In a healthy mesh most changes meet a row the same
//! peer's stream wrote last, or no row and no tombstone at all; [`crate::conflict::decide`]
//! makes those clean (the peer's own order is authoritative; a new key is just inserted),
//! so they need neither a locking read ahead of the write nor the row's image. They are
//! written directly, by statements whose condition proves the case and which hand back
//! the positions they wrote:
//!
//! - deletes and updates: `WHERE` the row's last writer was the peer (see
//!   [`super::uncontested_sql`]); a local write in between makes the condition false
//!   (PostgreSQL re-checks it on the newest version), so it is never overwritten blindly;
//! - inserts: `ON CONFLICT DO NOTHING` (or COPY, for large groups), then the tombstones
//!   of the keys, read by a statement that starts after the inserts finished: a local
//!   delete that freed a key before the insert took it is seen there. An insert over a
//!   tombstone stays only where `decide` makes it clean (the peer deleted the key itself
//!   earlier); any other is taken back, so the decision sees what it saw before.
//!
//! Everything else — a row from elsewhere, a tombstone, an update without a row, a new
//! row with unchanged-TOAST gaps — is handed back for the locking read and the plan
//! (`resolve.rs`), which decide it exactly as before. Keys are distinct within a table's
//! chunk and the table has no other unique constraint, so what is written here cannot
//! change the outcome for the keys handed back.

use futures_util::future::{try_join, try_join_all};
use tokio_postgres::types::ToSql;

use super::copy::COPY_MIN_ROWS;
use super::db::Db;
use super::error::ApplyError;
use super::lookup::tombstones_from;
use super::params::{groups_by_columns, key_params, value_params, Change, Columns};
use super::plan::{insert_stays_over, Sides};
use super::sql;
use super::stats::ApplyStats;
use super::uncontested_sql::{
    delete_all_peers_rows, delete_peers_rows, no_tombstones, update_all_peers_rows,
    update_peers_rows,
};
use crate::batch::{ChangeOp, Pending};
use crate::table::local::{LocalTable, TableMap};
use crate::table::row::Key;

/// A key and its change, in chunk order.
pub(super) type Keyed<'c> = (&'c Key, &'c Pending);

/// What the no-conflict path did with a table's changes.
pub(super) struct Uncontested {
    /// Positions of the changes left for the decision, in order.
    pub(super) rest: Vec<usize>,
    /// Everything was written and the commit went out with the writes and succeeded.
    pub(super) committed: bool,
}

/// What one pipelined statement's rows mean.
enum Reply {
    /// 1-based positions in the delete list.
    Deleted,
    /// 1-based positions in this update group (its positions in the update list).
    Updated(Vec<usize>),
    /// 1-based positions in this insert group (its positions in the insert list).
    Inserted(Vec<usize>),
    /// The tombstones of every insert's key, by 1-based position in the insert list.
    Tombstones,
    /// A guarded statement: it fails unless everything it covers was written.
    Guard,
}

/// Where a statement's other parameters sit around its arrays.
#[derive(Clone, Copy)]
enum Layout {
    /// Arrays, the table name, the peer's origins (deletes).
    ArraysNameOrigins,
    /// Arrays, the peer's origins (updates).
    ArraysOrigins,
    /// Arrays only (inserts).
    Arrays,
    /// The table name, then the arrays (the tombstone read).
    NameArrays,
}

/// One statement of the pipeline.
pub(super) struct Job<'v> {
    pub(super) sql: String,
    arrays: Columns<'v>,
    layout: Layout,
    /// A guarded statement's expected count, the last parameter.
    expected: Option<i64>,
    reply: Reply,
}

/// One parameter of a [`Job`], in order.
pub(super) enum Arg<'j, 'v> {
    /// A `text[]` of one column's values.
    Array(&'j Vec<Option<&'v str>>),
    /// The table's name (`text`).
    Name,
    /// The peer's origins (`oid[]`).
    Origins,
    /// A guarded statement's expected count (`int8`).
    Expected(&'j i64),
}

impl<'v> Job<'v> {
    /// The statement's parameters, in order.
    pub(super) fn args(&self) -> Vec<Arg<'_, 'v>> {
        let mut v = Vec::with_capacity(self.arrays.len() + 3);
        if matches!(self.layout, Layout::NameArrays) {
            v.push(Arg::Name);
        }
        v.extend(self.arrays.iter().map(Arg::Array));
        match self.layout {
            Layout::ArraysNameOrigins => v.extend([Arg::Name, Arg::Origins]),
            Layout::ArraysOrigins => v.push(Arg::Origins),
            Layout::Arrays | Layout::NameArrays => {}
        }
        if let Some(n) = &self.expected {
            v.push(Arg::Expected(n));
        }
        v
    }
}

/// A group of new rows large enough for COPY: its columns and its positions in the
/// insert list.
pub(super) type CopyGroup = (Vec<usize>, Vec<usize>);

/// A table's changes by what the no-conflict path does with them: each list with the
/// changes' positions in the chunk.
#[derive(Default)]
pub(super) struct Sorted<'c> {
    deletes: Vec<&'c Key>,
    delete_pos: Vec<usize>,
    updates: Vec<Change<'c>>,
    update_pos: Vec<usize>,
    inserts: Vec<Change<'c>>,
    insert_pos: Vec<usize>,
    /// Positions of the changes that need the decision whatever the table holds.
    pub(super) rest: Vec<usize>,
}

impl<'c> Sorted<'c> {
    pub(super) fn new(changes: &[Keyed<'c>]) -> Sorted<'c> {
        let mut s = Sorted::default();
        for (i, &(key, p)) in changes.iter().enumerate() {
            match (p.op, p.row.as_ref()) {
                (ChangeOp::Delete, _) => {
                    s.deletes.push(key);
                    s.delete_pos.push(i);
                }
                (ChangeOp::Update, Some(row)) => {
                    s.updates.push((key, row, p));
                    s.update_pos.push(i);
                }
                (ChangeOp::Insert, Some(row)) if row.is_complete() => {
                    s.inserts.push((key, row, p));
                    s.insert_pos.push(i);
                }
                _ => s.rest.push(i),
            }
        }
        s
    }

    /// Rows written by deletes, updates and inserts if every statement succeeds.
    pub(super) fn all_written(&self) -> ApplyStats {
        ApplyStats {
            inserted: self.inserts.len() as u64,
            updated: self.updates.len() as u64,
            deleted: self.deletes.len() as u64,
            ..ApplyStats::default()
        }
    }

    /// The statements that write these changes, and the groups of new rows large enough
    /// for COPY (columns, positions in the insert list), which the statements leave out.
    /// `guarded`: every statement fails unless it wrote all it covers (see
    /// [`Db::write_uncontested`]); no group is then large enough for COPY.
    pub(super) fn jobs(
        &self,
        t: &LocalTable,
        guarded: bool,
    ) -> Result<(Vec<Job<'c>>, Vec<CopyGroup>), ApplyError> {
        let npk = t.pk.len();
        let count = |n: usize| guarded.then(|| i64::try_from(n).unwrap_or(i64::MAX));
        let mut jobs: Vec<Job<'c>> = Vec::new();
        if !self.deletes.is_empty() {
            jobs.push(Job {
                sql: if guarded {
                    delete_all_peers_rows(t)
                } else {
                    delete_peers_rows(t)
                },
                arrays: key_params(&self.deletes, npk)?,
                layout: Layout::ArraysNameOrigins,
                expected: count(self.deletes.len()),
                reply: if guarded {
                    Reply::Guard
                } else {
                    Reply::Deleted
                },
            });
        }
        for (cols, idx) in groups_by_columns(self.updates.iter().map(|c| c.1), t, false) {
            jobs.push(Job {
                sql: if guarded {
                    update_all_peers_rows(t, &cols)
                } else {
                    update_peers_rows(t, &cols)
                },
                arrays: value_params(&self.updates, &idx, &cols, Some(npk))?,
                layout: Layout::ArraysOrigins,
                expected: count(idx.len()),
                reply: if guarded {
                    Reply::Guard
                } else {
                    Reply::Updated(idx)
                },
            });
        }
        let mut copies: Vec<CopyGroup> = Vec::new();
        for (cols, idx) in groups_by_columns(self.inserts.iter().map(|c| c.1), t, true) {
            if idx.len() >= COPY_MIN_ROWS {
                copies.push((cols, idx));
                continue;
            }
            // Guarded: no ON CONFLICT, so a taken key fails the statement.
            jobs.push(Job {
                sql: if guarded {
                    sql::insert_new_rows(t, &cols)
                } else {
                    sql::insert_rows(t, &cols)
                },
                arrays: value_params(&self.inserts, &idx, &cols, None)?,
                layout: Layout::Arrays,
                expected: None,
                reply: if guarded {
                    Reply::Guard
                } else {
                    Reply::Inserted(idx)
                },
            });
        }
        // With no COPY the tombstones are read in the same pipeline, after the inserts:
        // a statement of its own, so that it sees a local delete that freed a key while
        // the insert ran (a statement's snapshot is taken when it starts).
        if !self.inserts.is_empty() && copies.is_empty() {
            let keys: Vec<&Key> = self.inserts.iter().map(|c| c.0).collect();
            jobs.push(Job {
                sql: if guarded {
                    no_tombstones(t)
                } else {
                    sql::select_tombstones(t)
                },
                arrays: key_params(&keys, npk)?,
                layout: Layout::NameArrays,
                expected: None,
                reply: if guarded {
                    Reply::Guard
                } else {
                    Reply::Tombstones
                },
            });
        }
        Ok((jobs, copies))
    }
}

impl Db<'_> {
    /// Writes the changes of one table (no unique constraint but the key) that need no
    /// decision, and hands back the positions in `changes` of the rest, in order.
    ///
    /// With `commit` (the table is the chunk's last, and the chunk small: see
    /// `Resolver::may_commit_with_writes`), every statement is guarded — it fails unless
    /// it wrote every row it covers, an insert fails on a taken key, the tombstone read
    /// fails on any tombstone — and the commit goes out in the same pipeline: the chunk
    /// costs one round trip. A failure aborts the transaction, and the session applies
    /// the chunk again the careful way (`ApplySession::apply_and_commit`).
    pub(super) async fn write_uncontested(
        &mut self,
        map: &TableMap,
        changes: &[Keyed<'_>],
        sides: Sides<'_>,
        stats: &mut ApplyStats,
        commit: Option<&str>,
    ) -> Result<Uncontested, ApplyError> {
        let t = &map.local;
        let peer_origins = sides.peer_origins();
        let sorted = Sorted::new(changes);
        let commit = commit.filter(|_| sorted.rest.is_empty() && changes.len() < COPY_MIN_ROWS);
        let (jobs, copies) = sorted.jobs(t, commit.is_some())?;
        let mut statements = Vec::with_capacity(jobs.len());
        for j in &jobs {
            statements.push(self.statement(&j.sql).await?);
        }
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = jobs
            .iter()
            .map(|j| {
                j.args()
                    .into_iter()
                    .map(|a| match a {
                        Arg::Array(a) => a as &(dyn ToSql + Sync),
                        Arg::Name => &t.name,
                        Arg::Origins => &peer_origins,
                        Arg::Expected(n) => n,
                    })
                    .collect()
            })
            .collect();
        let client = self.client;
        let writes = try_join_all(
            statements
                .iter()
                .zip(&params)
                .map(|(st, p)| client.query(st, p)),
        );
        // Polled after the writes, so queued after them on the connection.
        let commit_sent = async {
            match commit {
                Some(sql) => client.batch_execute(sql).await.map(|()| true),
                None => Ok(false),
            }
        };
        let (replies, committed) = try_join(writes, commit_sent).await?;
        if committed {
            stats.add(&sorted.all_written());
            return Ok(Uncontested {
                rest: Vec::new(),
                committed,
            });
        }

        let ords = |rows: &[tokio_postgres::Row]| -> Vec<i64> {
            rows.iter().map(|r| r.get::<_, i64>(0)).collect()
        };
        let Sorted {
            deletes,
            delete_pos,
            updates,
            update_pos,
            inserts,
            insert_pos,
            mut rest,
        } = sorted;
        let mut deleted = vec![false; deletes.len()];
        let mut updated = vec![false; updates.len()];
        let mut not_inserted: Vec<usize> = Vec::new();
        let mut tombstone_rows = None;
        for (job, rows) in jobs.iter().zip(replies) {
            match &job.reply {
                Reply::Deleted => mark(&mut deleted, None, ords(&rows)),
                Reply::Updated(idx) => mark(&mut updated, Some(idx), ords(&rows)),
                Reply::Inserted(idx) => {
                    not_inserted.extend(stats.count_inserted(ords(&rows), idx));
                }
                Reply::Tombstones => tombstone_rows = Some(rows),
                Reply::Guard => {}
            }
        }
        for (cols, idx) in &copies {
            not_inserted.extend(
                self.insert_group(t, &inserts, idx, cols, true, stats)
                    .await?,
            );
        }
        let tombstones = match tombstone_rows {
            Some(rows) => tombstones_from(rows, sides.origins),
            None => {
                let keys: Vec<&Key> = inserts.iter().map(|c| c.0).collect();
                self.tombstones(t, &keys, sides.origins).await?
            }
        };

        // Inserted over a tombstone that `decide` does not let it pass: take it back.
        let skipped: std::collections::HashSet<usize> = not_inserted.iter().copied().collect();
        let mut undo: Vec<usize> = Vec::new();
        for (j, tomb) in &tombstones {
            if !skipped.contains(j) && !insert_stays_over(tomb, inserts[*j].2, sides) {
                undo.push(*j);
            }
        }
        if !undo.is_empty() {
            let keys: Vec<&Key> = undo.iter().map(|&j| inserts[j].0).collect();
            self.delete_keys(t, &keys).await?;
            stats.inserted -= undo.len() as u64;
        }

        stats.deleted += deleted.iter().filter(|d| **d).count() as u64;
        stats.updated += updated.iter().filter(|u| **u).count() as u64;
        rest.extend(left(&delete_pos, &deleted));
        rest.extend(left(&update_pos, &updated));
        rest.extend(not_inserted.iter().chain(&undo).map(|&j| insert_pos[j]));
        rest.sort_unstable();
        rest.dedup();
        Ok(Uncontested {
            rest,
            committed: false,
        })
    }
}

/// Marks as written the entries a statement handed back by 1-based position, in a group
/// (`idx`: the group's positions in the list) or in the whole list.
fn mark(done: &mut [bool], idx: Option<&Vec<usize>>, ords: Vec<i64>) {
    for ord in ords {
        let Some(o) = usize::try_from(ord - 1).ok() else {
            continue;
        };
        let slot = match idx {
            Some(idx) => idx.get(o).copied(),
            None => Some(o),
        };
        if let Some(flag) = slot.and_then(|s| done.get_mut(s)) {
            *flag = true;
        }
    }
}

/// The positions (`pos`) of the entries not written.
fn left<'a>(pos: &'a [usize], done: &'a [bool]) -> impl Iterator<Item = usize> + 'a {
    pos.iter().zip(done).filter(|(_, d)| !**d).map(|(&p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_map_back_through_groups() {
        let mut done = vec![false; 5];
        // A group holding list entries 4, 1 and 2; the statement wrote its 1st and 3rd.
        mark(&mut done, Some(&vec![4, 1, 2]), vec![1, 3, 9, 0]);
        assert_eq!(done, vec![false, false, true, false, true]);
        let mut whole = vec![false; 3];
        mark(&mut whole, None, vec![2, -1]);
        assert_eq!(
            left(&[10, 11, 12], &whole).collect::<Vec<_>>(),
            vec![10, 12]
        );
    }
}
