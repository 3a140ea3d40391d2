//! The thin I/O layer of preflight: reads a node's settings, role, slots, tables and
//! sequences into [`NodeFacts`]. No judgement here; that is [`super::checks`].

use super::catalog::{NodeFacts, RoleFacts, SlotFacts, TableFacts};
use super::error::{query_err, SetupError};
use crate::config::{names, ReplicationConfig};
use tokio_postgres::Client;

const SETTINGS_SQL: &str = "\
SELECT current_setting('server_version_num')::int4,
       current_database()::text,
       current_setting('wal_level'),
       current_setting('track_commit_timestamp') = 'on',
       current_setting('max_replication_slots')::int8,
       current_setting('max_wal_senders')::int8,
       current_setting('max_worker_processes')::int8,
       (SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'),
       current_user::text, r.rolsuper, r.rolreplication,
       has_database_privilege(current_database(), 'CREATE'),
       CASE WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')
            THEN (SELECT system_identifier FROM pg_control_system()) END,
       to_regclass('pgmesh.refinery_schema_history') IS NOT NULL
  FROM pg_roles r WHERE r.rolname = current_user";

/// `invalidation_reason` exists from PostgreSQL 17 on: read through jsonb, NULL before.
const SLOTS_SQL: &str = "\
SELECT slot_name::text, plugin::text, database::text, active_pid, wal_status,
       to_jsonb(s) ->> 'invalidation_reason'
  FROM pg_replication_slots s";

/// Walsenders not serving one of this database's pgmesh slots.
const OTHER_WALSENDERS_SQL: &str = "\
SELECT count(*) FROM pg_stat_replication r
 WHERE r.pid NOT IN (SELECT active_pid FROM pg_replication_slots
                      WHERE active_pid IS NOT NULL AND database = current_database()
                        AND slot_name ~ '^pgmesh_[a-z][a-z0-9_]*$')";

const TABLES_SQL: &str = "\
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relreplident::text,
       ARRAY(SELECT a.attname::text
               FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a
              WHERE i.indrelid = c.oid AND i.indisprimary
                AND a.attrelid = c.oid AND a.attnum = k.attnum
              ORDER BY k.ord),
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgmesh')
   AND n.nspname NOT LIKE 'pg\\_%'";

/// One table's facts (as [`gather`] reads them), by OID; `None` when it is not an
/// ordinary user table (gone, a partition, a system table).
pub async fn table_facts(
    client: &Client,
    oid: u32,
) -> Result<Option<TableFacts>, tokio_postgres::Error> {
    let row = client
        .query_opt(&format!("{TABLES_SQL} AND c.oid = $1"), &[&oid])
        .await?;
    Ok(row.map(|r| table_from_row(&r)))
}

fn table_from_row(r: &tokio_postgres::Row) -> TableFacts {
    let replident: String = r.get(3);
    let names: Vec<String> = r.get(5);
    let types: Vec<String> = r.get(6);
    TableFacts {
        oid: u32::try_from(r.get::<_, i64>(0)).unwrap_or_default(),
        schema: r.get(1),
        name: r.get(2),
        replica_identity: replident.chars().next().unwrap_or('d'),
        primary_key: r.get(4),
        columns: names.into_iter().zip(types).collect(),
    }
}

/// Row counts above this are reported as "at least"; comparing them needs `verify`.
pub const ROW_COUNT_CAP: i64 = 1_000_000;

/// Reads every fact preflight needs from one node, counting rows of the selected tables.
pub async fn gather(
    client: &Client,
    node: &str,
    repl: &ReplicationConfig,
) -> Result<NodeFacts, SetupError> {
    let q = |what: &'static str| query_err(node, what);
    let s = client
        .query_one(SETTINGS_SQL, &[])
        .await
        .map_err(q("reading settings"))?;
    let mut f = NodeFacts {
        node: node.to_string(),
        server_version_num: s.get(0),
        database: s.get(1),
        wal_level: s.get(2),
        track_commit_timestamp: s.get(3),
        max_replication_slots: s.get(4),
        max_wal_senders: s.get(5),
        max_worker_processes: s.get(6),
        output_plugin_libraries: s.get(7),
        role: RoleFacts {
            name: s.get(8),
            superuser: s.get(9),
            replication: s.get(10),
            create_on_database: s.get(11),
        },
        system_identifier: s.get(12),
        ..NodeFacts::default()
    };
    if s.get::<_, bool>(13) {
        f.schema_version = client
            .query_one(
                "SELECT max(version) FROM pgmesh.refinery_schema_history",
                &[],
            )
            .await
            .map_err(q("reading the pgmesh schema version"))?
            .get(0);
    }
    f.slots = client
        .query(SLOTS_SQL, &[])
        .await
        .map_err(q("listing replication slots"))?
        .iter()
        .map(|r| SlotFacts {
            name: r.get(0),
            plugin: r.get(1),
            database: r.get(2),
            active_pid: r.get(3),
            wal_status: r.get(4),
            invalidation_reason: r.get(5),
        })
        .collect();
    f.other_walsenders = client
        .query_one(OTHER_WALSENDERS_SQL, &[])
        .await
        .map_err(q("counting walsenders"))?
        .get(0);
    f.tables = client
        .query(TABLES_SQL, &[])
        .await
        .map_err(q("listing tables"))?
        .iter()
        .map(table_from_row)
        .collect();
    // Their state only; `pgmesh sequences` also reads the columns' largest values.
    f.sequences = crate::sequences::gather(client, repl, None)
        .await
        .map_err(q("reading sequences"))?;
    f.published = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&names::PUBLICATION],
        )
        .await
        .map_err(q("reading the publication's tables"))?
        .iter()
        .map(|r| names::qualified_table(r.get(0), r.get(1)))
        .collect();
    if f.schema_version.unwrap_or(0) >= 3 {
        f.unfinished_syncs = client
            .query(
                "SELECT table_name, source_node, mode FROM pgmesh.table_sync WHERE state = 'copying'",
                &[],
            )
            .await
            .map_err(q("reading unfinished initial copies"))?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
    }
    let selected: Vec<String> = f
        .selected_tables(repl)
        .iter()
        .map(|t| t.qualified())
        .collect();
    for table in selected {
        // Capped: setup must not scan a huge table end to end just to compare counts.
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {ROW_COUNT_CAP}) s"),
                &[],
            )
            .await
            .map_err(q("counting rows"))?
            .get(0);
        if n > 0 {
            f.row_counts.insert(table, n);
        }
    }
    Ok(f)
}
