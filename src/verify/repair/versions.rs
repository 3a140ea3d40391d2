//! Reading what a node holds for a key, as repair's decision needs it: the row (column
//! texts, JSON for the ledger, `xmin`) with its commit time and writer, or the tombstone
//! that dates its delete.
//!
//! The writer of a version comes from its commit's replication origin, mapped to a node
//! name as the apply path maps it ([`Origins`]): no origin is the node itself,
//! `pgmesh_<peer>` is that peer. Tombstones are read with the apply path's statement
//! ([`crate::apply::sql::select_tombstones`]): a key tombstone and a whole-table one
//! (TRUNCATE) both count, the later wins, and a tombstone a unique-constraint decision
//! left carries its version explicitly.

use std::time::SystemTime;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::super::{query_err, sql, VerifyError};
use super::plan::Version;
use crate::apply::Origins;
use crate::protocol::pgoutput::PgTimestamp;
use crate::table::local::LocalTable;

/// One node's version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    pub version: Version,
    /// The row's column texts (table order), `None` without a row.
    pub cols: Option<Vec<Option<String>>>,
    /// The row as JSON text (`to_jsonb`), for the ledger.
    pub json: Option<String>,
    /// The row version, to notice a change between planning and writing.
    pub xmin: Option<String>,
}

/// Origin id → node name on one node (`pgmesh_b` → `b`, none → the node itself).
pub async fn origins(client: &Client, node: &str) -> Result<Origins, VerifyError> {
    Origins::load(client, node)
        .await
        .map_err(query_err(node, "reading replication origins"))
}

fn pg_ts(t: Option<SystemTime>) -> Option<PgTimestamp> {
    t.and_then(PgTimestamp::from_system_time)
}

/// Reads `key` of table `t` on one node; with `lock`, the row is locked `FOR UPDATE`
/// (inside the caller's transaction).
pub async fn read(
    client: &Client,
    node: &str,
    origins: &Origins,
    t: &LocalTable,
    key: &[String],
    lock: bool,
) -> Result<KeyVersion, VerifyError> {
    let what = format!("reading a row of {}", t.name);
    let params: Vec<&(dyn ToSql + Sync)> = key.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
    let row = client
        .query_opt(&sql::key_version(t, lock), &params)
        .await
        .map_err(query_err(node, &what))?;
    if let Some(r) = row {
        let roident: Option<u32> = r.get(4);
        return Ok(KeyVersion {
            version: Version::Row {
                ts: pg_ts(r.get(3)),
                writer: origins.node_of(roident).to_string(),
            },
            cols: Some(r.get(0)),
            json: Some(r.get(1)),
            xmin: Some(r.get(2)),
        });
    }
    // No row: the latest tombstone dates the delete.
    let arrays: Vec<Vec<&str>> = key.iter().map(|k| vec![k.as_str()]).collect();
    let mut tparams: Vec<&(dyn ToSql + Sync)> = vec![&t.name];
    tparams.extend(arrays.iter().map(|a| a as &(dyn ToSql + Sync)));
    let tombs = client
        .query(&crate::apply::sql::select_tombstones(t), &tparams)
        .await
        .map_err(query_err(
            node,
            &format!("reading tombstones of {}", t.name),
        ))?;
    let mut best: Option<(Option<PgTimestamp>, String)> = None;
    for r in tombs {
        let decided: Option<String> = r.get(3);
        let writer = decided.unwrap_or_else(|| origins.node_of(r.get(2)).to_string());
        let found = (pg_ts(r.get(1)), writer);
        if best.as_ref().is_none_or(|b| found.0 > b.0) {
            best = Some(found);
        }
    }
    Ok(KeyVersion {
        version: match best {
            Some((ts, writer)) => Version::Deleted { ts, writer },
            None => Version::Absent,
        },
        cols: None,
        json: None,
        xmin: None,
    })
}
