//! What the apply path reads of the local table before deciding: the rows of a chunk's
//! keys (locked `FOR UPDATE`, with their commit time and origin), the tombstones of keys
//! without a row, and the rows holding a value of another unique constraint.

use std::collections::HashMap;
use std::time::SystemTime;

use tokio_postgres::types::ToSql;

use super::db::Db;
use super::error::ApplyError;
use super::origins::Origins;
use super::params::{as_params, key_params};
use super::sql;
use crate::protocol::pgoutput::PgTimestamp;
use crate::table::local::LocalTable;
use crate::table::row::Key;

/// A local row of a key the chunk touches.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LocalRow {
    /// The row as `to_jsonb` text (for the ledger).
    pub(super) json: String,
    /// Commit time of its last write (`None`: before commit timestamps were tracked).
    pub(super) ts: Option<PgTimestamp>,
    /// Replication origin of its last write (`None` or 0: a local session).
    pub(super) roident: Option<u32>,
}

/// A key's tombstone: when it was deleted, and by which node.
pub(super) type Tombstone = (Option<PgTimestamp>, String);

/// Local rows by key position.
pub(super) type LocalRows = HashMap<usize, LocalRow>;
/// Tombstones by key position.
pub(super) type Tombstones = HashMap<usize, Tombstone>;

pub(super) fn pg_ts(t: Option<SystemTime>) -> Option<PgTimestamp> {
    t.and_then(PgTimestamp::from_system_time)
}

/// The 0-based key position of a 1-based `ord` column.
fn position(ord: i64) -> usize {
    usize::try_from(ord - 1).unwrap_or(usize::MAX)
}

/// Locked rows by key position (see [`sql::select_rows`]).
fn local_rows_from(rows: Vec<tokio_postgres::Row>) -> LocalRows {
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        out.insert(
            position(r.get(0)),
            LocalRow {
                json: r.get(1),
                ts: pg_ts(r.get(2)),
                roident: r.get(3),
            },
        );
    }
    out
}

/// Tombstone rows by key position; of a key tombstone and a whole-table one, the later
/// delete is the one that counts.
pub(super) fn tombstones_from(rows: Vec<tokio_postgres::Row>, origins: &Origins) -> Tombstones {
    let mut out: Tombstones = HashMap::new();
    for r in rows {
        let decided: Option<String> = r.get(3);
        let node = decided.unwrap_or_else(|| origins.node_of(r.get(2)).to_string());
        let found = (pg_ts(r.get(1)), node);
        let slot = position(r.get(0));
        match out.get(&slot) {
            Some(have) if have.0 >= found.0 => {}
            _ => {
                out.insert(slot, found);
            }
        }
    }
    out
}

impl Db<'_> {
    /// The rows of `keys`, locked.
    pub(super) async fn local_rows(
        &mut self,
        t: &LocalTable,
        keys: &[&Key],
    ) -> Result<LocalRows, ApplyError> {
        let params = key_params(keys, t.pk.len())?;
        let rows = self
            .query(&sql::select_rows(t), &as_params(&params))
            .await?;
        Ok(local_rows_from(rows))
    }

    /// Rows and tombstones of `keys` in one round trip (both statements pipelined; the
    /// tombstones of keys that have a row are dropped).
    pub(super) async fn rows_and_tombstones(
        &mut self,
        t: &LocalTable,
        keys: &[&Key],
        origins: &Origins,
    ) -> Result<(LocalRows, Tombstones), ApplyError> {
        let cols = key_params(keys, t.pk.len())?;
        let row_params = as_params(&cols);
        let mut tomb_params: Vec<&(dyn ToSql + Sync)> = vec![&t.name];
        tomb_params.extend(as_params(&cols));
        let rows_stmt = self.statement(&sql::select_rows(t)).await?;
        let tombs_stmt = self.statement(&sql::select_tombstones(t)).await?;
        let (rows, tombs) = futures_util::future::try_join(
            self.client.query(&rows_stmt, &row_params),
            self.client.query(&tombs_stmt, &tomb_params),
        )
        .await?;
        let rows = local_rows_from(rows);
        let mut tombs = tombstones_from(tombs, origins);
        tombs.retain(|i, _| !rows.contains_key(i));
        Ok((rows, tombs))
    }

    /// The tombstones of `keys`.
    pub(super) async fn tombstones(
        &mut self,
        t: &LocalTable,
        keys: &[&Key],
        origins: &Origins,
    ) -> Result<Tombstones, ApplyError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let cols = key_params(keys, t.pk.len())?;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&t.name];
        params.extend(as_params(&cols));
        let found = self.query(&sql::select_tombstones(t), &params).await?;
        Ok(tombstones_from(found, origins))
    }

    /// The rows holding `vals` in the unique constraint over columns `unique`, each with
    /// its key, as `(key, row)`.
    pub(super) async fn unique_holders(
        &mut self,
        t: &LocalTable,
        unique: &[usize],
        vals: &[&str],
    ) -> Result<Vec<(Key, LocalRow)>, ApplyError> {
        let params: Vec<&(dyn ToSql + Sync)> =
            vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let stmt = self
            .statement(&sql::select_unique_holder(t, unique))
            .await?;
        let npk = t.pk.len();
        Ok(self
            .client
            .query(&stmt, &params)
            .await?
            .into_iter()
            .map(|h| {
                let key = Key((0..npk)
                    .map(|i| bytes::Bytes::from(h.get::<_, String>(i)))
                    .collect());
                let row = LocalRow {
                    json: h.get(npk),
                    ts: pg_ts(h.get(npk + 1)),
                    roident: h.get(npk + 2),
                };
                (key, row)
            })
            .collect())
    }
}
