//! One node's part of `pgmesh ddl` (I/O): in the open transaction, run the statements,
//! then check and refresh what pgmesh keeps per replicated table.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::classify::{Statement, TableName};
use super::split::short;
use super::DdlError;
use crate::apply::shape_io::read_shape;
use crate::config::{names, Config};
use crate::setup::facts::table_facts;
use crate::setup::{fence_trigger, tombstone};

/// What one node's transaction did, before commit.
#[derive(Debug, Default)]
pub struct NodeOutcome {
    /// What pgmesh refreshed beside the statements (tombstone functions, fence trigger,
    /// publication).
    pub notes: Vec<String>,
    /// New columns with a default on non-empty tables: (table.column, default, two
    /// evaluations), compared across nodes before anything commits.
    pub defaults: Vec<NewDefault>,
    /// OIDs of the tables touched, to compare across nodes after commit.
    pub tables: Vec<u32>,
    /// The transaction rewrote a table and is bound to [`REWRITE_ORIGIN`] (reset it and
    /// drop the origin after commit or rollback).
    pub stamped: bool,
}

/// The replication origin a table rewrite is committed under (not a possible node name,
/// so never a peer's origin); created for the transaction and dropped after it.
pub const REWRITE_ORIGIN: &str = "pgmesh-ddl";

/// The commit time rewritten rows read back with: older than any change in flight.
const REWRITE_TIME: &str = "1970-01-01 00:00:00+00";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDefault {
    pub column: String,
    pub expr: String,
    pub values: (Option<String>, Option<String>),
}

/// A statement failed because a lock was not granted in time (retry the whole run).
pub struct LockTimeout;

/// Runs `stmts` in the transaction open on `client`. `Err(Ok(LockTimeout))` asks for a
/// retry; `Err(Err(e))` stops the run.
pub async fn run_on_node(
    client: &Client,
    node: &str,
    cfg: &Config,
    stmts: &[(String, Statement)],
) -> Result<NodeOutcome, Result<LockTimeout, DdlError>> {
    let fail = |what: String| {
        let node = node.to_string();
        move |e: tokio_postgres::Error| {
            if e.code().map(|c| c.code()) == Some("55P03") {
                Ok(LockTimeout)
            } else {
                Err(DdlError::Node {
                    node,
                    what,
                    message: crate::sqlconn::pg_message(&e),
                })
            }
        }
    };
    // Column names of altered tables before the change (to find the new ones), and their
    // files (a new file means the table was rewritten).
    let mut before: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut files: Vec<(u32, Option<u32>)> = Vec::new();
    for (_, s) in stmts {
        if let Statement::AlterTable { table, .. } = s {
            if let Some((schema, rel, oid)) = resolve(client, table)
                .await
                .map_err(fail("reading the table".into()))?
            {
                let file = relfilenode(client, oid)
                    .await
                    .map_err(fail("reading the table".into()))?;
                files.push((oid, file));
                let cols = read_shape(client, &schema, &rel)
                    .await
                    .map_err(fail("reading the table".into()))?
                    .map(|s| s.columns.into_iter().map(|c| c.name).collect())
                    .unwrap_or_default();
                before.push((names::qualified_table(&schema, &rel), cols));
            }
        }
    }
    for (sql, _) in stmts {
        client
            .batch_execute(sql)
            .await
            .map_err(fail(format!("running `{}`", short(sql))))?;
    }
    let mut out = NodeOutcome::default();
    let mut rewritten = Vec::new();
    for (oid, file) in &files {
        let now = relfilenode(client, *oid)
            .await
            .map_err(fail("reading the table".into()))?;
        if now.is_some() && now != *file {
            rewritten.push(*oid);
        }
    }
    if !rewritten.is_empty() {
        stamp_rewrite(client, node).await?;
        out.stamped = true;
        out.notes.push(format!(
            "the change rewrote {} table(s); their rows read back as written at {REWRITE_TIME} (origin {REWRITE_ORIGIN}), so the peer's changes still in flight win over them",
            rewritten.len()
        ));
    }
    let has_pgmesh: bool = client
        .query_one("SELECT to_regnamespace('pgmesh') IS NOT NULL", &[])
        .await
        .map_err(fail("looking for schema pgmesh".into()))?
        .get(0);
    let mut seen = BTreeSet::new();
    for (_, s) in stmts {
        let (table, created) = match s {
            Statement::AlterTable { table, .. } | Statement::CreateIndex { table } => {
                (table, false)
            }
            Statement::CreateTable { table } => (table, true),
            Statement::DropIndex | Statement::Plain => continue,
        };
        let Some((schema, rel, oid)) = resolve(client, table)
            .await
            .map_err(fail("reading the table".into()))?
        else {
            continue;
        };
        if !seen.insert(oid) {
            continue;
        }
        out.tables.push(oid);
        let q = names::qualified_table(&schema, &rel);
        let old_cols = before.iter().find(|(t, _)| *t == q).map(|(_, c)| c);
        new_defaults(client, node, oid, &q, old_cols, &mut out.defaults).await?;
        if let (Some(old), true) = (old_cols, has_pgmesh) {
            record_change(client, &schema, &rel, old, stmts)
                .await
                .map_err(fail(format!("recording the change of {q}")))?;
        }
        if !cfg.replication.selects(&schema, &rel) {
            continue;
        }
        let Some(facts) = table_facts(client, oid)
            .await
            .map_err(fail("reading the table".into()))?
        else {
            continue;
        };
        let full_ok =
            cfg.replication.allows_full_identity(&schema, &rel) && facts.replica_identity == 'f';
        if facts.primary_key.is_empty() && !full_ok {
            return Err(Err(DdlError::Refused(format!(
                "table {q} is replicated ([replication].tables selects it) but would have no primary key on node {node}: give it one in the same run (ALTER TABLE {q} ADD PRIMARY KEY (…)), or list it in [replication].full_identity and set REPLICA IDENTITY FULL; nothing was changed"
            ))));
        }
        if !has_pgmesh {
            out.notes.push(format!(
                "schema pgmesh does not exist on {node}: run `pgmesh setup` before replicating {q}"
            ));
            continue;
        }
        if created {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {q}",
                    names::PUBLICATION
                ))
                .await
                .map_err(fail(format!(
                    "adding {q} to publication {}",
                    names::PUBLICATION
                )))?;
            out.notes
                .push(format!("added {q} to publication {}", names::PUBLICATION));
        }
        // The tombstone function names the key columns: regenerate it when they change.
        let func = names::tombstone_function(oid);
        let body: Option<String> = client
            .query_opt(
                "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'pgmesh' AND p.proname = $1",
                &[&func],
            )
            .await
            .map_err(fail("reading the tombstone function".into()))?
            .map(|r| r.get(0));
        if body.as_deref() != Some(tombstone::function_body(&facts).as_str()) {
            let sql = format!(
                "{};\n{};\n{}",
                tombstone::function_sql(&facts),
                tombstone::drop_triggers_sql(&q),
                tombstone::trigger_sql(&facts)
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(fail(format!("regenerating the tombstone trigger of {q}")))?;
            out.notes.push(format!(
                "{} tombstone trigger of {q} (key: {})",
                if body.is_some() {
                    "regenerated"
                } else {
                    "created"
                },
                facts.key_columns().join(", ")
            ));
        }
        // The fence must hold writes to every replicated table: a table that starts
        // replicating here gets the trigger setup gives the others.
        let unguarded = client
            .query_one(
                "SELECT to_regprocedure('pgmesh.fence_guard()') IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2)",
                &[&oid, &fence_trigger::TRIGGER],
            )
            .await
            .map_err(fail(format!("looking for the fence trigger of {q}")))?
            .get::<_, bool>(0);
        if unguarded {
            client
                .batch_execute(&fence_trigger::create_sql(&q))
                .await
                .map_err(fail(format!("creating the fence trigger of {q}")))?;
            out.notes.push(format!("created fence trigger on {q}"));
        }
    }
    Ok(out)
}

/// Writes which columns the statements dropped and added to `pgmesh.schema_changes` (if
/// this node's schema has it): a sidecar reading the peer's older changes then knows a
/// column gone on both nodes was dropped, not renamed.
async fn record_change(
    client: &Client,
    schema: &str,
    table: &str,
    before: &BTreeSet<String>,
    stmts: &[(String, Statement)],
) -> Result<(), tokio_postgres::Error> {
    let after: BTreeSet<String> = read_shape(client, schema, table)
        .await?
        .map(|s| s.columns.into_iter().map(|c| c.name).collect())
        .unwrap_or_default();
    let dropped: Vec<&String> = before.difference(&after).collect();
    let added: Vec<&String> = after.difference(before).collect();
    if dropped.is_empty() && added.is_empty() {
        return Ok(());
    }
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('pgmesh.schema_changes') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(());
    }
    let statement: Vec<&str> = stmts.iter().map(|(s, _)| s.as_str()).collect();
    client
        .execute(
            "INSERT INTO pgmesh.schema_changes (table_name, dropped, added, statement)
             VALUES ($1, $2, $3, $4)",
            &[
                &names::qualified_table(schema, table),
                &dropped,
                &added,
                &statement.join(";\n"),
            ],
        )
        .await?;
    Ok(())
}

/// A table's file (`None` for a table without storage, e.g. partitioned).
async fn relfilenode(client: &Client, oid: u32) -> Result<Option<u32>, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT pg_relation_filenode($1::oid::regclass)", &[&oid])
        .await?
        .get(0))
}

/// A table rewrite gives every row a new version stamped with this transaction's commit
/// time and origin, which last-writer-wins reads as the row's last write: a change the
/// peer made just before its own ALTER, still on its way here, would lose against it and
/// be dropped. Committing the rewrite under a replication origin with an old time
/// (PostgreSQL records the origin's time as the commit time) makes those rows older than
/// any change in flight, and the peer's changes apply.
async fn stamp_rewrite(client: &Client, node: &str) -> Result<(), Result<LockTimeout, DdlError>> {
    let sql = format!(
        "SELECT pg_replication_origin_create('{REWRITE_ORIGIN}')
          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = '{REWRITE_ORIGIN}');
         SELECT pg_replication_origin_session_setup('{REWRITE_ORIGIN}');
         SELECT pg_replication_origin_xact_setup('0/0', '{REWRITE_TIME}')"
    );
    client.batch_execute(&sql).await.map_err(|e| {
        Err(DdlError::Refused(format!(
            "the change rewrites a replicated table on node {node}; pgmesh ddl commits a rewrite under a replication origin so the peer's changes in flight are not lost, and that failed: {}. Run pgmesh ddl as a superuser (or a role with EXECUTE on pg_replication_origin_create, _session_setup, _xact_setup, _session_reset and _drop); nothing was changed",
            crate::sqlconn::pg_message(&e)
        )))
    })
}

/// Unbinds the session from [`REWRITE_ORIGIN`] (after commit or rollback) and drops the
/// origin; best effort.
pub async fn unstamp(client: &Client) {
    let _ = client
        .batch_execute("SELECT pg_replication_origin_session_reset()")
        .await;
    let _ = client
        .batch_execute(&format!(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = '{REWRITE_ORIGIN}'"
        ))
        .await;
}

/// (schema, table, oid) of a table name on this node (search path applied).
async fn resolve(
    client: &Client,
    t: &TableName,
) -> Result<Option<(String, String, u32)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.oid FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&t.sql()],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// New columns with a default (or an identity) on a table that has rows: each node fills
/// its existing rows itself, so the value must not depend on the node or the moment.
async fn new_defaults(
    client: &Client,
    node: &str,
    oid: u32,
    table: &str,
    before: Option<&BTreeSet<String>>,
    out: &mut Vec<NewDefault>,
) -> Result<(), Result<LockTimeout, DdlError>> {
    let Some(before) = before else {
        return Ok(());
    };
    let q = |what: &str| {
        let (node, what) = (node.to_string(), what.to_string());
        move |e: tokio_postgres::Error| {
            Err(DdlError::Node {
                node,
                what,
                message: crate::sqlconn::pg_message(&e),
            })
        }
    };
    let cols = client
        .query(
            "SELECT a.attname::text, a.attidentity <> '', pg_get_expr(d.adbin, d.adrelid)
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                AND (d.oid IS NOT NULL OR a.attidentity <> '')",
            &[&oid],
        )
        .await
        .map_err(q("reading column defaults"))?;
    let mut has_rows = None;
    for c in cols {
        let name: String = c.get(0);
        if before.contains(&name) {
            continue;
        }
        if has_rows.is_none() {
            let rows: bool = client
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
                .await
                .map_err(q("looking for rows"))?
                .get(0);
            has_rows = Some(rows);
        }
        if has_rows != Some(true) {
            return Ok(());
        }
        let column = format!("{table}.{}", crate::sqlquote::ident(&name));
        if c.get::<_, bool>(1) {
            return Err(Err(DdlError::Refused(format!(
                "new identity column {column} on a table with rows: each node would number its existing rows itself and the nodes would differ. Add the column without identity, fill it with an UPDATE on one node (replicated), then add the identity on every node and run `pgmesh sequences --apply`; nothing was changed"
            ))));
        }
        let expr: String = c.get(2);
        let row = client
            .query_one(&format!("SELECT ({expr})::text, ({expr})::text"), &[])
            .await
            .map_err(q("evaluating a new column's default"))?;
        out.push(NewDefault {
            column,
            expr,
            values: (row.get(0), row.get(1)),
        });
    }
    Ok(())
}
