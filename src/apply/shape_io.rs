//! Catalog reads around [`super::shape`]: a table's shape on a node, and
//! [`map_relation`], the one place where the peer's description of a table (its Relation
//! message) meets the table on this node.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use super::error::ApplyError;
use super::shape::{compare, ColumnType, RemoteShape, SchemaMismatch, Shape, ShapeColumn};
use crate::config::names;
use crate::protocol::pgoutput::{Oid, Relation, Type};
use crate::sqlconn::SqlConfig;
use crate::table::local::{LocalTable, TableMap};

/// Live, non-generated columns (what pgoutput sends) with type identity, nullability and
/// default, and the primary key in key order.
const SHAPE_SQL: &str = "
WITH rel AS (
  SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))
SELECT a.attname::text, a.atttypid::int8, a.atttypmod, format_type(a.atttypid, a.atttypmod),
       tn.nspname::text, t.typname::text, a.attnotnull, a.atthasdef OR a.attidentity <> '',
       ARRAY(SELECT pa.attname::text
               FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute pa
              WHERE i.indrelid = rel.oid AND i.indisprimary
                AND pa.attrelid = rel.oid AND pa.attnum = k.attnum
              ORDER BY k.ord)
  FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid
  JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace
 WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
 ORDER BY a.attnum";

/// How long a schema check waits for a schema change in progress (another session's
/// ALTER TABLE, e.g. `pgmesh ddl` on its way to committing on every node).
const LOCK_TIMEOUT: &str = "30s";

/// The table `schema.table` on the node of `client`; `None` when it does not exist.
pub async fn read_shape(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<Shape>, tokio_postgres::Error> {
    let rows = client.query(SHAPE_SQL, &[&schema, &table]).await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let columns = rows
        .iter()
        .map(|r| {
            let oid = Oid::try_from(r.get::<_, i64>(1)).unwrap_or(Oid::MAX);
            ShapeColumn {
                name: r.get(0),
                ty: ColumnType::from_catalog(oid, r.get(4), r.get(5), r.get(2), r.get(3)),
                not_null: r.get(6),
                has_default: r.get(7),
            }
        })
        .collect();
    Ok(Some(Shape {
        columns,
        primary_key: first.get(8),
    }))
}

/// [`read_shape`] once no schema change of the table is in progress: under an ACCESS
/// SHARE lock, which waits for an uncommitted ALTER TABLE (up to [`LOCK_TIMEOUT`]; then a
/// transient error, and the direction retries).
pub async fn read_shape_settled(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<Shape>, tokio_postgres::Error> {
    client
        .batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .await?;
    let locked = client
        .batch_execute(&format!(
            "LOCK TABLE {} IN ACCESS SHARE MODE",
            names::qualified_table(schema, table)
        ))
        .await;
    let result = match locked {
        Ok(()) => read_shape(client, schema, table).await,
        // Gone (or never there): nothing to wait for.
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => Ok(None),
        Err(e) => Err(e),
    };
    let end = client.batch_execute("ROLLBACK").await;
    let shape = result?;
    end?;
    Ok(shape)
}

/// The peer's table as it is now (after any schema change in progress there commits).
pub async fn read_peer_shape(
    peer_sql: &SqlConfig,
    schema: &str,
    table: &str,
) -> Result<Option<Shape>, ApplyError> {
    let (client, task) = crate::sqlconn::connect_sql(peer_sql).await?;
    let _ = client
        .batch_execute("SET application_name = 'pgmesh schema check'")
        .await;
    let shape = read_shape_settled(&client, schema, table).await;
    drop(client);
    task.abort();
    Ok(shape?)
}

/// Columns `pgmesh ddl` dropped from `schema.table` on the node of `client`
/// (`pgmesh.schema_changes`); empty where that table does not exist or is not readable.
pub async fn dropped_by_ddl(client: &Client, schema: &str, table: &str) -> Vec<String> {
    let rows = client
        .query(
            "SELECT DISTINCT d FROM pgmesh.schema_changes, unnest(dropped) AS d
              WHERE table_name = $1",
            &[&names::qualified_table(schema, table)],
        )
        .await;
    match rows {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Names the stream's built-in column types with this node's `format_type` (a built-in
/// OID is the same type on every node), for messages.
async fn name_builtin_types(client: &Client, remote: &mut RemoteShape) -> Result<(), ApplyError> {
    let builtins = remote.builtin_types();
    if builtins.is_empty() {
        return Ok(());
    }
    let oids: Vec<Oid> = builtins.iter().map(|b| b.1).collect();
    let mods: Vec<i32> = builtins.iter().map(|b| b.2).collect();
    let rows = client
        .query(
            "SELECT format_type(o, m) FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS u(o, m, ord) ORDER BY ord",
            &[&oids, &mods],
        )
        .await?;
    for ((i, _, _), r) in builtins.iter().zip(&rows) {
        if let Some(name) = r.get::<_, Option<String>>(0) {
            remote.columns[*i].ty.display = name;
        }
    }
    Ok(())
}

/// Who is comparing: this node, its peer and how to reach the peer.
#[derive(Debug, Clone, Copy)]
pub struct Sides<'a> {
    pub node: &'a str,
    pub peer: &'a str,
    pub peer_sql: &'a SqlConfig,
}

/// Maps the peer's relation onto the local table, or stops with [`ApplyError::SchemaMismatch`]
/// saying what differs. The common case costs one catalog query beyond loading the table;
/// only when the first comparison finds differences does it wait for a schema change in
/// progress here, read the peer's table as it is now (both under a lock, so an ALTER on
/// its way to committing is seen), and compare again (see [`super::shape`] on history).
pub async fn map_relation(
    catalog: &Client,
    rel: &Relation,
    types: &HashMap<Oid, Type>,
    sides: Sides<'_>,
) -> Result<TableMap, ApplyError> {
    let (schema, relname) = (rel.schema(), rel.name.as_str());
    let mut local = LocalTable::load(catalog, schema, relname).await?;
    let mut remote = RemoteShape::from_relation(rel, types);
    let shape = read_shape(catalog, schema, relname).await?.ok_or_else(|| {
        crate::table::TableError::MissingTable {
            table: format!("{schema}.{relname}"),
        }
    })?;
    let mut check = compare(&remote, &shape, None, &[]);
    if !check.fits() {
        let settled = read_shape_settled(catalog, schema, relname)
            .await?
            .ok_or_else(|| crate::table::TableError::MissingTable {
                table: format!("{schema}.{relname}"),
            })?;
        local = LocalTable::load(catalog, schema, relname).await?;
        let peer_now = read_peer_shape(sides.peer_sql, schema, relname).await?;
        let dropped = dropped_by_ddl(catalog, schema, relname).await;
        check = compare(&remote, &settled, peer_now.as_ref(), &dropped);
        if !check.fits() {
            name_builtin_types(catalog, &mut remote).await?;
            let check = compare(&remote, &settled, peer_now.as_ref(), &dropped);
            return Err(ApplyError::SchemaMismatch(Box::new(SchemaMismatch {
                table: local.name.clone(),
                schema: schema.to_string(),
                relname: relname.to_string(),
                node: sides.node.to_string(),
                peer: sides.peer.to_string(),
                differences: check.differences,
                remote,
            })));
        }
        for h in &check.history {
            tracing::info!(table = %local.name, peer = %sides.peer, "{h}");
        }
    }
    Ok(TableMap::new(
        Arc::new(local),
        rel,
        &check.discard,
        sides.node,
    )?)
}

/// Whether the tables of a stopped direction match now (this node's and the peer's
/// current table against the stream's description).
pub async fn mismatch_fixed(
    m: &SchemaMismatch,
    local_sql: &SqlConfig,
    peer_sql: &SqlConfig,
) -> Result<bool, ApplyError> {
    let (client, task) = crate::sqlconn::connect_sql(local_sql).await?;
    let _ = client
        .batch_execute("SET application_name = 'pgmesh schema check'")
        .await;
    let local = read_shape_settled(&client, &m.schema, &m.relname).await;
    let dropped = dropped_by_ddl(&client, &m.schema, &m.relname).await;
    drop(client);
    task.abort();
    let Some(local) = local? else {
        return Ok(false);
    };
    let peer_now = read_peer_shape(peer_sql, &m.schema, &m.relname).await?;
    Ok(compare(&m.remote, &local, peer_now.as_ref(), &dropped).fits())
}
