//! One node's part of `pgmesh ddl` (I/O): in the open transaction, run the statements,
//! then check and refresh what pgmesh keeps per replicated table.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::classify::{Statement, TableName};
use super::DdlError;
use crate::apply::shape_io::read_shape;
use crate::config::{names, Config};
use crate::setup::facts::table_facts;
use crate::setup::tombstone;

/// What one node's transaction did, before commit.
#[derive(Debug, Default)]
pub struct NodeOutcome {
    /// What pgmesh refreshed beside the statements (tombstone functions, publication).
    pub notes: Vec<String>,
    /// New columns with a default on non-empty tables: (table.column, default, two
    /// evaluations), compared across nodes before anything commits.
    pub defaults: Vec<NewDefault>,
    /// OIDs of the tables touched, to compare across nodes after commit.
    pub tables: Vec<u32>,
}

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
    // Column names of altered tables before the change (to find the new ones).
    let mut before: Vec<(String, BTreeSet<String>)> = Vec::new();
    for (_, s) in stmts {
        if let Statement::AlterTable { table, .. } = s {
            if let Some((schema, rel, _)) = resolve(client, table).await.map_err(fail("reading the table".into()))? {
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
    let has_pgmesh: bool = client
        .query_one("SELECT to_regnamespace('pgmesh') IS NOT NULL", &[])
        .await
        .map_err(fail("looking for schema pgmesh".into()))?
        .get(0);
    let mut seen = BTreeSet::new();
    for (_, s) in stmts {
        let (table, created) = match s {
            Statement::AlterTable { table, .. } | Statement::CreateIndex { table } => (table, false),
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
        if !cfg.replication.selects(&schema, &rel) {
            continue;
        }
        let Some(facts) = table_facts(client, oid)
            .await
            .map_err(fail("reading the table".into()))?
        else {
            continue;
        };
        let full_ok = cfg.replication.allows_full_identity(&schema, &rel)
            && facts.replica_identity == 'f';
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
                .batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {q}", names::PUBLICATION))
                .await
                .map_err(fail(format!("adding {q} to publication {}", names::PUBLICATION)))?;
            out.notes.push(format!("added {q} to publication {}", names::PUBLICATION));
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
                if body.is_some() { "regenerated" } else { "created" },
                facts.key_columns().join(", ")
            ));
        }
    }
    Ok(out)
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
        let column = format!("{table}.{}", names::quote_ident(&name));
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

/// The first line of a statement, shortened, for messages.
pub fn short(sql: &str) -> String {
    let line = sql.lines().next().unwrap_or("").trim();
    if line.chars().count() > 80 || sql.lines().count() > 1 {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_string()
    }
}
