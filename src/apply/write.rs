//! The apply path's writes, one statement per kind and column set (`unnest` over one
//! `text[]` per column): deletes, tombstones, updates and inserts of decided rows.

use tokio_postgres::types::ToSql;

use super::copy::COPY_MIN_ROWS;
use super::db::Db;
use super::error::ApplyError;
use super::kill::Version;
use super::params::{as_params, key_params, value_params, Change};
use super::sql;
use super::stats::ApplyStats;
use crate::table::local::LocalTable;
use crate::table::row::Key;

impl Db<'_> {
    /// Deletes the rows of `keys`.
    pub(super) async fn delete_keys(
        &mut self,
        t: &LocalTable,
        keys: &[&Key],
    ) -> Result<(), ApplyError> {
        if keys.is_empty() {
            return Ok(());
        }
        let params = key_params(keys, t.pk.len())?;
        self.execute(&sql::delete_rows(t), &as_params(&params))
            .await?;
        Ok(())
    }

    /// Records the tombstones of `keys` (deleted by the peer's changes being applied).
    pub(super) async fn write_tombstones(
        &mut self,
        t: &LocalTable,
        keys: &[&Key],
    ) -> Result<(), ApplyError> {
        if keys.is_empty() {
            return Ok(());
        }
        // One statement may not upsert a key twice (a row can lose to several incoming
        // rows, or on two unique constraints at once).
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let cols = key_params(&keys, t.pk.len())?;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&t.name];
        params.extend(as_params(&cols));
        self.execute(&sql::upsert_tombstones(t), &params).await?;
        Ok(())
    }

    /// Upserts the tombstone of `key` dated by `winner` (a unique-constraint decision).
    pub(super) async fn write_decided_tombstone(
        &mut self,
        t: &LocalTable,
        key: &Key,
        winner: &Version,
    ) -> Result<(), ApplyError> {
        let cols = key_params(&[key], t.pk.len())?;
        let ts = winner.timestamp().map(crate::apply::ledger::ts_text);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&t.name, &ts, &winner.node];
        params.extend(as_params(&cols));
        self.execute(&sql::upsert_decided_tombstones(t), &params)
            .await?;
        Ok(())
    }

    /// Updates the rows of `group`, which all set the columns `cols` (key excluded).
    pub(super) async fn update_group(
        &mut self,
        t: &LocalTable,
        cols: &[usize],
        group: &[Change<'_>],
    ) -> Result<(), ApplyError> {
        let idx: Vec<usize> = (0..group.len()).collect();
        let params = value_params(group, &idx, cols, Some(t.pk.len()))?;
        self.execute(&sql::update_rows(t, cols), &as_params(&params))
            .await?;
        Ok(())
    }

    /// Takes the rows of `keys` out of the table, handing back each one's position in
    /// `keys` and its values of every column (text; `None` for NULL).
    pub(super) async fn take_rows(
        &mut self,
        t: &LocalTable,
        keys: &[&Key],
    ) -> Result<Vec<(usize, Vec<Option<String>>)>, ApplyError> {
        let params = key_params(keys, t.pk.len())?;
        let taken = self.query(&sql::take_rows(t), &as_params(&params)).await?;
        Ok(taken
            .into_iter()
            .filter_map(|r| {
                let ord: i64 = r.get(0);
                let i = usize::try_from(ord - 1).ok().filter(|&i| i < keys.len())?;
                Some((i, (1..r.len()).map(|c| r.get(c)).collect()))
            })
            .collect())
    }

    /// Inserts the rows at `idx` of `rows`, which all carry the columns `cols` (key
    /// included); returns the positions it skipped because their key or another unique
    /// value is taken. Large groups go through COPY when `copy` allows (see
    /// [`super::copy`]).
    pub(super) async fn insert_group(
        &mut self,
        t: &LocalTable,
        rows: &[Change<'_>],
        idx: &[usize],
        cols: &[usize],
        copy: bool,
        stats: &mut ApplyStats,
    ) -> Result<Vec<usize>, ApplyError> {
        if copy
            && idx.len() >= COPY_MIN_ROWS
            && self
                .copy_new_rows(t, idx.iter().map(|&i| rows[i].1), cols)
                .await?
        {
            stats.inserted += idx.len() as u64;
            return Ok(Vec::new());
        }
        let params = value_params(rows, idx, cols, None)?;
        let done = self
            .query(&sql::insert_rows(t, cols), &as_params(&params))
            .await?;
        Ok(stats.count_inserted(done.iter().map(|r| r.get::<_, i64>(0)), idx))
    }
}
