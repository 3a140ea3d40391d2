//! The write phase of a table without other unique constraints, pipelined: its deletes,
//! tombstones, updates and inserts touch different keys and share no unique value, so
//! nothing one of them does can change another's outcome. They are all sent at once and
//! their results awaited together (tokio-postgres queues the requests on the connection in
//! the order they are first polled; the server runs them in that order), which saves a
//! round trip per statement for the small batches of steady state.
//!
//! Tables with other unique constraints keep the sequential path in `resolve.rs`: there an
//! update may fail on a value another row holds and is retried under a savepoint.

use futures_util::future::{try_join, try_join_all};
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::copy::COPY_MIN_ROWS;
use super::db::Db;
use super::error::ApplyError;
use super::params::{as_params, groups_by_columns, key_params, value_params, Change, Columns};
use super::sql;
use super::stats::ApplyStats;
use crate::table::local::TableMap;
use crate::table::row::Key;

/// What a pipelined write phase did.
pub(super) struct Written {
    /// The commit went out with the writes and succeeded.
    pub(super) committed: bool,
    /// Positions of the inserts skipped because a local session inserted the key (or
    /// another unique value) since the lookup: to be decided again.
    pub(super) not_inserted: Vec<usize>,
}

impl Db<'_> {
    /// Deletes `deletes`, records tombstones for `tomb_keys`, updates `updates` and inserts
    /// `inserts`, all pipelined; hands back the rows an insert skipped (a local session
    /// inserted the key meanwhile), for the caller to decide again.
    ///
    /// With `commit`, the commit statement goes out last in the same pipeline and the
    /// result says it succeeded. Inserts then have no `ON CONFLICT`: a key a local session
    /// inserted since the lookup fails the whole transaction with a unique violation
    /// instead of leaving rows to decide after the commit, and the caller applies the
    /// chunk again the careful way (`ApplySession::apply_and_commit`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_pipelined(
        &mut self,
        map: &TableMap,
        deletes: &[&Key],
        tomb_keys: &[&Key],
        updates: &[Change<'_>],
        inserts: &[Change<'_>],
        stats: &mut ApplyStats,
        commit: Option<&str>,
    ) -> Result<Written, ApplyError> {
        let t = &map.local;
        let npk = t.pk.len();
        // Statements and parameters first: the futures below borrow them.
        let mut exec: Vec<(Statement, Columns<'_>, bool)> = Vec::new();
        if !deletes.is_empty() {
            let stmt = self.statement(&sql::delete_rows(t)).await?;
            exec.push((stmt, key_params(deletes, npk)?, false));
        }
        if !tomb_keys.is_empty() {
            let mut keys = tomb_keys.to_vec();
            keys.sort_unstable();
            keys.dedup();
            let stmt = self.statement(&sql::upsert_tombstones(t)).await?;
            exec.push((stmt, key_params(&keys, npk)?, true));
        }
        for (cols, idx) in groups_by_columns(updates.iter().map(|c| c.1), t, false) {
            let stmt = self.statement(&sql::update_rows(t, &cols)).await?;
            exec.push((stmt, value_params(updates, &idx, &cols, Some(npk))?, false));
        }
        let mut query: Vec<(Statement, Columns<'_>, Vec<usize>)> = Vec::new();
        // Large groups of new rows go through COPY after the pipeline (see `super::copy`).
        let mut copies: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        for (cols, idx) in groups_by_columns(inserts.iter().map(|c| c.1), t, true) {
            if commit.is_some() {
                let stmt = self.statement(&sql::insert_new_rows(t, &cols)).await?;
                exec.push((stmt, value_params(inserts, &idx, &cols, None)?, false));
                stats.inserted += idx.len() as u64;
                continue;
            }
            if idx.len() >= COPY_MIN_ROWS {
                copies.push((cols, idx));
                continue;
            }
            let stmt = self.statement(&sql::insert_rows(t, &cols)).await?;
            let params = value_params(inserts, &idx, &cols, None)?;
            query.push((stmt, params, idx));
        }
        // Parameter lists: the tombstone upsert takes the table name first.
        let exec_params: Vec<Vec<&(dyn ToSql + Sync)>> = exec
            .iter()
            .map(|(_, p, with_table)| {
                let mut v: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(p.len() + 1);
                if *with_table {
                    v.push(&t.name);
                }
                v.extend(as_params(p));
                v
            })
            .collect();
        let query_params: Vec<Vec<&(dyn ToSql + Sync)>> =
            query.iter().map(|(_, p, _)| as_params(p)).collect();
        let client = self.client;
        let execs = exec
            .iter()
            .zip(&exec_params)
            .map(|((s, _, _), p)| client.execute(s, p));
        let queries = query
            .iter()
            .zip(&query_params)
            .map(|((s, _, _), p)| client.query(s, p));
        // Polled after the writes, so queued after them on the connection.
        let commit_sent = async {
            match commit {
                Some(sql) => client.batch_execute(sql).await.map(|()| true),
                None => Ok(false),
            }
        };
        let ((_, inserted), committed) = try_join(
            try_join(try_join_all(execs), try_join_all(queries)),
            commit_sent,
        )
        .await?;
        stats.deleted += deletes.len() as u64;
        stats.updated += updates.len() as u64;
        if committed {
            return Ok(Written {
                committed,
                not_inserted: Vec::new(),
            });
        }

        let mut not_inserted: Vec<usize> = Vec::new();
        for ((_, _, idx), rows) in query.iter().zip(inserted) {
            not_inserted.extend(stats.count_inserted(rows.iter().map(|r| r.get::<_, i64>(0)), idx));
        }
        for (cols, idx) in &copies {
            not_inserted.extend(
                self.insert_group(t, inserts, idx, cols, true, stats)
                    .await?,
            );
        }
        Ok(Written {
            committed,
            not_inserted,
        })
    }
}
