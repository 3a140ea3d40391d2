//! Writing one fix on the node whose version lost, with its ledger row.
//!
//! **How a fix is written, and why.** On the losing node, in a session bound to the
//! replication origin [`names::repair_origin_name`]`(winner)` with
//! `session_replication_role = replica`,
//! in one transaction whose commit is dated by the winning version's commit time
//! (`pg_replication_origin_xact_setup`):
//! - The origin keeps the fix out of the stream to the peer (PostgreSQL 16+ drops
//!   changes with an origin in the walsender, `origin 'none'`; on 15 the sidecar's
//!   origin filter drops the transaction). The winning node already holds this version,
//!   so sending it there would only make it a conflict on that node: a ledger row per
//!   fixed key and a write of a row that was right.
//! - The commit time makes the losing node hold exactly the winner's version: same data,
//!   same time. A plain local write (the alternative: let the fix replicate normally)
//!   would be dated *now* and reach the winner as a new write; had the winner changed the
//!   row after repair read it, that copy of the older data would beat the newer change by
//!   last-writer-wins and the change would be lost. Dated by the winning version, a fix
//!   loses to any later write on either node, so concurrent writes still converge.
//! - Not the winner's own origin `pgmesh_<winner>`: the running sidecar's apply session
//!   holds it (an origin is bound to one session at a time) and its progress is the
//!   stream's position, not ours to move. `pgmesh__repair_<winner>` still counts as the
//!   winner's write when the apply path reads a repaired row's origin
//!   ([`names::node_of_origin`]): the loser then holds the winner's version in every
//!   respect, including the node that breaks a tie of equal commit times.
//! - `session_replication_role = replica`, as in the apply session: the tombstone trigger
//!   stays quiet (a repaired delete records its own tombstone, dated by the winning
//!   delete) and so do user and foreign-key triggers (the other node holds these rows).
//!
//! Before writing, the losing row is locked and both nodes' versions are checked against
//! the plan; a version that changed since (a write, or the sidecar applying it) is
//! skipped with that reason, not overwritten.

use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::super::{query_err, sql, NodeSession, Pair, VerifyError};
use super::plan::{Action, Version};
use super::versions::{self, KeyVersion};
use super::PlannedFix;
use crate::apply::ledger::ConflictRecord;
use crate::apply::Origins;
use crate::config::names;
use crate::conflict::{LedgerKind, Resolution, Winner};
use crate::pgtime::rfc3339;
use crate::protocol::pgoutput::PgTimestamp;
use crate::table::local::LocalTable;

/// What happened to one planned fix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum FixOutcome {
    Repaired,
    /// Not written (the reason says why; nothing changed).
    Skipped(String),
    /// Tried and rolled back.
    Failed(String),
}

/// Binds a session to the repair origin of `winner` (created if missing) and the replica
/// role.
pub async fn prepare(node: &NodeSession, winner: &str) -> Result<(), VerifyError> {
    let origin = names::repair_origin_name(winner);
    let q = |what: &str| query_err(&node.name, what);
    node.client
        .batch_execute("SET session_replication_role = replica")
        .await
        .map_err(q("setting session_replication_role = replica (the role needs `GRANT SET ON PARAMETER session_replication_role`, see pgmesh setup --print-grants)"))?;
    node.client
        .execute(
            "SELECT pg_replication_origin_create($1) \
              WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
            &[&origin],
        )
        .await
        .map_err(q("creating the repair replication origin"))?;
    node.client
        .execute(
            "SELECT pg_replication_origin_session_setup($1)",
            &[&origin],
        )
        .await
        .map_err(q(&format!(
            "binding the session to origin {origin} (is another pgmesh repair running against this node?)"
        )))?;
    Ok(())
}

fn ts_of(v: &Version) -> Option<PgTimestamp> {
    match v {
        Version::Row { ts, .. } | Version::Deleted { ts, .. } => *ts,
        Version::Absent => None,
    }
}

fn writer_of(v: &Version, node: &str) -> String {
    match v {
        Version::Row { writer, .. } | Version::Deleted { writer, .. } => writer.clone(),
        Version::Absent => node.to_string(),
    }
}

fn json(text: Option<&String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

/// `[[k1], [k2]]`: one single-element text array per key column.
fn key_arrays(key: &[String]) -> Vec<Vec<Option<&str>>> {
    key.iter().map(|k| vec![Some(k.as_str())]).collect()
}

fn params<'p>(arrays: &'p [Vec<Option<&str>>]) -> Vec<&'p (dyn ToSql + Sync)> {
    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

/// A step inside the fix's transaction: `Ok(Some(reason))` asks to roll back and skip.
type Step = Result<Option<String>, VerifyError>;

/// Runs `body` in a transaction on `node`; commits dated `ts` (now when unknown) under
/// the repair origin.
async fn in_transaction<F>(node: &NodeSession, ts: Option<PgTimestamp>, body: F) -> FixOutcome
where
    F: std::future::Future<Output = Step>,
{
    let q = query_err(&node.name, "starting the fix's transaction");
    if let Err(e) = node
        .client
        .batch_execute("BEGIN; SET CONSTRAINTS ALL IMMEDIATE")
        .await
        .map_err(q)
    {
        return FixOutcome::Failed(e.to_string());
    }
    let outcome = match body.await {
        Ok(None) => {
            let when = ts.map_or_else(
                || "now()".to_string(),
                |t| crate::sqlquote::literal(&rfc3339(t.0)),
            );
            let commit = format!("SELECT pg_replication_origin_xact_setup('0/0', {when}); COMMIT");
            match node.client.batch_execute(&commit).await {
                Ok(()) => return FixOutcome::Repaired,
                Err(e) => {
                    FixOutcome::Failed(query_err(&node.name, "committing the fix")(e).to_string())
                }
            }
        }
        Ok(Some(reason)) => FixOutcome::Skipped(reason),
        Err(e) => FixOutcome::Failed(e.to_string()),
    };
    let _ = node.client.batch_execute("ROLLBACK").await;
    outcome
}

async fn write_ledger(
    client: &Client,
    node: &str,
    records: &[ConflictRecord],
) -> Result<(), VerifyError> {
    let json = serde_json::to_string(records).map_err(|e| VerifyError::Query {
        node: node.to_string(),
        what: "encoding the ledger row".into(),
        message: e.to_string(),
    })?;
    client
        .execute(crate::apply::sql::INSERT_CONFLICTS, &[&json])
        .await
        .map_err(query_err(node, "writing the ledger (pgmesh.conflicts)"))?;
    Ok(())
}

/// The ledger row of a fix on the losing node: its version is `local`, the winner's is
/// `remote` (and wins).
fn record(
    t: &LocalTable,
    key: &Value,
    resolution: Resolution,
    local: (&Version, Option<Value>, &str),
    remote: (&Version, Option<Value>, &str),
) -> ConflictRecord {
    ConflictRecord {
        kind: LedgerKind::Repair,
        table_name: t.name.clone(),
        key: key.clone(),
        local_row: local.1,
        remote_row: remote.1,
        local_commit_ts: ts_of(local.0).map(|t| rfc3339(t.0)),
        remote_commit_ts: ts_of(remote.0).map(|t| rfc3339(t.0)),
        local_origin: Some(writer_of(local.0, local.2)),
        remote_origin: Some(writer_of(remote.0, remote.2)),
        winner: Winner::Remote,
        resolution,
        remote_lsn: None,
    }
}

/// Applies one fix of a table with a key.
async fn keyed(
    pair: &Pair,
    origins: &[Origins; 2],
    fix: &PlannedFix,
    planned: &[KeyVersion; 2],
) -> FixOutcome {
    let t = &*fix.def;
    let key = &fix.diff.key_values;
    let (winner, loser) = match fix.action {
        Action::Copy { from, to } => (from, to),
        Action::Delete { on, winner } => (winner, on),
        _ => return FixOutcome::Skipped("not a fix for a keyed table".into()),
    };
    let (w, l) = (&pair.nodes[winner], &pair.nodes[loser]);
    match versions::read(&w.client, &w.name, &origins[winner], t, key, false).await {
        Ok(now) if now.xmin == planned[winner].xmin => {}
        Ok(_) => {
            return FixOutcome::Skipped(format!(
                "the row changed on node {} since it was read: run verify again",
                w.name
            ))
        }
        Err(e) => return FixOutcome::Failed(e.to_string()),
    }
    let win = &planned[winner];
    let lose = &planned[loser];
    let ts = ts_of(&win.version);
    let body = async {
        let now = versions::read(&l.client, &l.name, &origins[loser], t, key, true).await?;
        if now.xmin != lose.xmin {
            return Ok(Some(format!(
                "the row changed on node {} since it was read: run verify again",
                l.name
            )));
        }
        let keys = key_arrays(key);
        let resolution = match &fix.action {
            Action::Copy { .. } => {
                let Some(values) = &win.cols else {
                    return Ok(Some("the winning row is gone".into()));
                };
                if lose.cols.is_some() {
                    let cols: Vec<usize> =
                        (0..t.columns.len()).filter(|c| !t.pk.contains(c)).collect();
                    let mut arrays = keys.clone();
                    arrays.extend(
                        cols.iter()
                            .map(|&c| vec![values.get(c).and_then(|v| v.as_deref())]),
                    );
                    l.client
                        .execute(&crate::apply::sql::update_rows(t, &cols), &params(&arrays))
                        .await
                        .map_err(query_err(&l.name, &format!("updating a row of {}", t.name)))?;
                } else {
                    let cols: Vec<usize> = (0..t.columns.len()).collect();
                    let arrays: Vec<Vec<Option<&str>>> = cols
                        .iter()
                        .map(|&c| vec![values.get(c).and_then(|v| v.as_deref())])
                        .collect();
                    let done = l
                        .client
                        .query(&crate::apply::sql::insert_rows(t, &cols), &params(&arrays))
                        .await
                        .map_err(query_err(
                            &l.name,
                            &format!("inserting a row of {}", t.name),
                        ))?;
                    if done.is_empty() {
                        return Ok(Some(format!(
                            "not inserted on node {}: a row with this key, or another row holding \
                             one of its unique values, is there now: run verify again",
                            l.name
                        )));
                    }
                }
                Resolution::RepairedCopy
            }
            _ => {
                l.client
                    .execute(&crate::apply::sql::delete_rows(t), &params(&keys))
                    .await
                    .map_err(query_err(&l.name, &format!("deleting a row of {}", t.name)))?;
                let mut p: Vec<&(dyn ToSql + Sync)> = vec![&t.name];
                let (when, by);
                let stmt = match &win.version {
                    Version::Deleted {
                        ts: Some(ts),
                        writer,
                    } => {
                        when = rfc3339(ts.0);
                        by = writer.clone();
                        p.push(&when);
                        p.push(&by);
                        crate::apply::sql::upsert_decided_tombstones(t)
                    }
                    _ => crate::apply::sql::upsert_tombstones(t),
                };
                p.extend(params(&keys));
                l.client
                    .execute(&stmt, &p)
                    .await
                    .map_err(query_err(&l.name, "recording the tombstone"))?;
                Resolution::RepairedDelete
            }
        };
        let rec = record(
            t,
            &fix.diff.key,
            resolution,
            (&lose.version, json(lose.json.as_ref()), &l.name),
            (&win.version, json(win.json.as_ref()), &w.name),
        );
        write_ledger(&l.client, &l.name, &[rec]).await?;
        Ok(None)
    };
    in_transaction(l, ts, body).await
}

/// Copies of `text` on one node (locked with `lock`).
async fn copies(
    node: &NodeSession,
    t: &LocalTable,
    text: &str,
    lock: bool,
) -> Result<i64, VerifyError> {
    let texts = vec![text];
    let rows = node
        .client
        .query(&sql::row_counts(t, lock), &[&texts])
        .await
        .map_err(query_err(
            &node.name,
            &format!("counting rows of {}", t.name),
        ))?;
    Ok(rows.first().map_or(0, |r| r.get(1)))
}

/// Adds one copy of the row with values `p`, or deletes one (the copies are locked).
/// Returns how many rows changed.
async fn write_copy(
    node: &NodeSession,
    t: &LocalTable,
    add: bool,
    all: &[usize],
    p: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    use crate::apply::keyless_sql::{delete_at, insert_one, locate_one};
    if add {
        return node.client.execute(&insert_one(t, all), p).await;
    }
    let Some(r) = node.client.query_opt(&locate_one(t, all), p).await? else {
        return Ok(0);
    };
    let (table, ctid): (u32, String) = (r.get(0), r.get(1));
    node.client.execute(&delete_at(t), &[&table, &ctid]).await
}

/// Applies one fix of a table without a key (`--prefer` chose the node).
async fn keyless(pair: &Pair, fix: &PlannedFix) -> FixOutcome {
    let t = &*fix.def;
    let (on, winner, n, add) = match fix.action {
        Action::AddCopies { on, winner, n } => (on, winner, n, true),
        Action::DeleteCopies { on, winner, n } => (on, winner, n, false),
        _ => return FixOutcome::Skipped("not a fix for a table without a key".into()),
    };
    let (Some(text), Some(cols)) = (&fix.diff.row_text, &fix.diff.values[0]) else {
        return FixOutcome::Skipped("the row's values are unknown".into());
    };
    let (w, o) = (&pair.nodes[winner], &pair.nodes[on]);
    match copies(w, t, text, false).await {
        Ok(c) if c == fix.diff.counts[winner] => {}
        Ok(_) => {
            return FixOutcome::Skipped(format!(
                "the copies changed on node {} since they were counted: run verify again",
                w.name
            ))
        }
        Err(e) => return FixOutcome::Failed(e.to_string()),
    }
    let values: Vec<Option<&str>> = cols.iter().map(|v| v.as_deref()).collect();
    let all: Vec<usize> = (0..t.columns.len()).collect();
    let body = async {
        if copies(o, t, text, true).await? != fix.diff.counts[on] {
            return Ok(Some(format!(
                "the copies changed on node {} since they were counted: run verify again",
                o.name
            )));
        }
        let p: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        for _ in 0..n {
            let changed = write_copy(o, t, add, &all, &p)
                .await
                .map_err(query_err(&o.name, &format!("writing a row of {}", t.name)))?;
            if changed != 1 {
                return Ok(Some(format!(
                    "a copy is gone from node {}: run verify again",
                    o.name
                )));
            }
        }
        let row = Some(fix.diff.key.clone());
        let (resolution, local_row, remote_row) = if add {
            (Resolution::RepairedCopy, None, row)
        } else {
            (Resolution::RepairedDelete, row, None)
        };
        let rec = record(
            t,
            &fix.diff.key,
            resolution,
            (&Version::Absent, local_row, &o.name),
            (&Version::Absent, remote_row, &w.name),
        );
        let n = usize::try_from(n).unwrap_or(0);
        write_ledger(&o.client, &o.name, &vec![rec; n]).await?;
        Ok(None)
    };
    in_transaction(o, None, body).await
}

/// Applies one planned fix (sessions already [`prepare`]d).
pub async fn apply(pair: &Pair, origins: &[Origins; 2], fix: &PlannedFix) -> FixOutcome {
    if let Action::Skip { reason } = &fix.action {
        return FixOutcome::Skipped(reason.clone());
    }
    match &fix.versions {
        Some(planned) => keyed(pair, origins, fix, planned).await,
        None => keyless(pair, fix).await,
    }
}
