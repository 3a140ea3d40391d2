//! The local side of a replicated table: columns, types, keys, unique constraints; and the
//! mapping from the peer's Relation message onto it.

use std::sync::Arc;

use tokio_postgres::Client;

use super::TableError;
use crate::protocol::pgoutput::Relation;

/// One column of a local table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalColumn {
    pub name: String,
    /// `quote_ident(name)`.
    pub quoted: String,
    /// `format_type(atttypid, atttypmod)`: the cast applied to text values.
    pub type_sql: String,
}

/// A local table as the apply statements need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTable {
    /// `schema.table`, each part quoted where needed: the name used in SQL, in the
    /// ledger and in tombstones.
    pub name: String,
    /// The schema and table names as they are (unquoted), to find the table again.
    pub schema: String,
    pub relname: String,
    pub columns: Vec<LocalColumn>,
    /// Indices into `columns` of the primary key, in key order; empty for a table
    /// without one (REPLICA IDENTITY FULL, see [`crate::apply::keyless`]).
    pub pk: Vec<usize>,
    /// Other unique constraints / unique indexes (column indices), for resolving a
    /// conflict on a value that another row holds.
    pub uniques: Vec<Vec<usize>>,
}

impl LocalTable {
    /// Reads `schema.table` from the local catalog.
    pub async fn load(
        client: &Client,
        schema: &str,
        table: &str,
    ) -> Result<LocalTable, TableError> {
        let rows = client
            .query(
                "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&schema, &table],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(TableError::MissingTable {
                table: format!("{schema}.{table}"),
            });
        };
        let oid: u32 = row.get(0);
        let name: String = row.get(1);
        let cols = client
            .query(
                "SELECT attname::text, quote_ident(attname), format_type(atttypid, atttypmod), attnum
                   FROM pg_attribute
                  WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
                  ORDER BY attnum",
                &[&oid],
            )
            .await?;
        let mut columns = Vec::with_capacity(cols.len());
        let mut attnums = Vec::with_capacity(cols.len());
        for c in &cols {
            columns.push(LocalColumn {
                name: c.get(0),
                quoted: c.get(1),
                type_sql: c.get(2),
            });
            attnums.push(c.get::<_, i16>(3));
        }
        let idx = client
            .query(
                "SELECT indisprimary, indkey::int2[]
                   FROM pg_index
                  WHERE indrelid = $1 AND indisunique AND indisvalid AND indpred IS NULL
                    AND indexprs IS NULL
                  ORDER BY indisprimary DESC, indexrelid",
                &[&oid],
            )
            .await?;
        let mut pk = Vec::new();
        let mut uniques = Vec::new();
        for i in &idx {
            let primary: bool = i.get(0);
            let keys: Vec<i16> = i.get(1);
            let Some(positions) = keys
                .iter()
                .map(|k| attnums.iter().position(|a| a == k))
                .collect::<Option<Vec<usize>>>()
            else {
                continue;
            };
            if primary {
                pk = positions;
            } else {
                uniques.push(positions);
            }
        }
        if pk.is_empty() {
            refuse_keyless_unique(client, oid, &name).await?;
        }
        Ok(LocalTable {
            name,
            schema: schema.to_string(),
            relname: table.to_string(),
            columns,
            pk,
            uniques,
        })
    }
}

impl LocalTable {
    /// A table without a primary key: rows are identified by their whole content.
    #[must_use]
    pub fn is_keyless(&self) -> bool {
        self.pk.is_empty()
    }
}

/// A table without a primary key must have no unique index either (partial and
/// expression indexes included): with no key there is no row version to decide a
/// collision by, so two nodes inserting the same value would stop replication only after
/// the nodes had diverged. Refusing up front says so before any change is applied.
async fn refuse_keyless_unique(client: &Client, oid: u32, table: &str) -> Result<(), TableError> {
    let rows = client
        .query(
            "SELECT quote_ident(i.relname) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
              WHERE x.indrelid = $1 AND x.indisunique ORDER BY 1 LIMIT 1",
            &[&oid],
        )
        .await?;
    match rows.first() {
        Some(r) => Err(TableError::KeylessUnique {
            table: table.to_string(),
            index: r.get(0),
        }),
        None => Ok(()),
    }
}

/// How the peer's columns (Relation message order) land in the local table.
#[derive(Debug, Clone)]
pub struct TableMap {
    pub local: Arc<LocalTable>,
    /// For each remote column, its index in `local.columns`; `None` for a column both
    /// nodes have dropped since the change was made (its value is discarded; see
    /// [`super::shape`]).
    pub remote_to_local: Vec<Option<usize>>,
    /// Local columns the peer does not send (they keep their default / current value).
    pub local_only: Vec<usize>,
}

impl TableMap {
    /// Maps by column name; `discard` names remote columns whose values are dropped.
    /// Any other remote column missing locally stops the stream (writing the row without
    /// it would lose data); [`super::shape_io::map_relation`] checks this first and says
    /// more, this is the guard.
    pub fn new(
        local: Arc<LocalTable>,
        remote: &Relation,
        discard: &[String],
        node: &str,
    ) -> Result<TableMap, TableError> {
        let mut remote_to_local = Vec::with_capacity(remote.columns.len());
        for rc in &remote.columns {
            match local.columns.iter().position(|lc| lc.name == rc.name) {
                Some(i) => remote_to_local.push(Some(i)),
                None if discard.contains(&rc.name) => remote_to_local.push(None),
                None => {
                    return Err(TableError::MissingColumn {
                        table: local.name.clone(),
                        column: rc.name.clone(),
                        node: node.to_string(),
                    })
                }
            }
        }
        for &k in &local.pk {
            if !remote_to_local.contains(&Some(k)) {
                return Err(TableError::MissingColumn {
                    table: local.name.clone(),
                    column: format!("{} (primary key, on the peer)", local.columns[k].name),
                    node: node.to_string(),
                });
            }
        }
        let local_only = (0..local.columns.len())
            .filter(|i| !remote_to_local.contains(&Some(*i)))
            .collect();
        Ok(TableMap {
            local,
            remote_to_local,
            local_only,
        })
    }
}
