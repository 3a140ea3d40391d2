//! Tombstone triggers: an AFTER DELETE OR UPDATE OF <key> row trigger on every replicated
//! table that records the key a row leaves in `pgmesh.tombstones` (deleted, or moved by a
//! primary-key change), so update-vs-delete races can be decided later. A key change must
//! leave a tombstone too: otherwise a concurrent write to the old key from the peer finds
//! nothing here and resurrects the row.
//!
//! **One generated function per table** (`pgmesh.tomb_<oid>()`), not one generic function
//! taking key columns as trigger arguments: the generic one must build the key with
//! dynamic SQL (`EXECUTE format(...) USING OLD`), which parses and plans a statement on
//! every deleted row, while a generated function's INSERT is planned once per session and
//! then runs from the plan cache. Deletes are on the user's hot path, so setup pays the
//! generation instead.
//!
//! The key is `ARRAY[OLD.k1::text, …]` in key-column order, produced under fixed settings
//! ([`names::CANONICAL_TEXT_SETTINGS`]) so the text never depends on the deleting
//! session's DateStyle, TimeZone, float digits, IntervalStyle or bytea_output: the apply
//! session compares it with text from pgoutput. The function is SECURITY DEFINER (owned by
//! the setup role, `search_path` pinned) so application roles need no grant on the pgmesh
//! schema to delete rows. The trigger is ENABLEd normally: it fires for local sessions and
//! not for the sidecar's apply session (`session_replication_role = replica`), which writes
//! tombstones for remote deletes itself.
//!
//! A table without a primary key gets only whole-table (TRUNCATE) tombstones; see
//! [`keyless_function_body`].

use super::catalog::TableFacts;
use crate::config::names;
use crate::sqlquote;

/// `CREATE OR REPLACE FUNCTION pgmesh.tomb_<oid>() …` for one table.
#[must_use]
pub fn function_sql(t: &TableFacts) -> String {
    let settings: String = names::CANONICAL_TEXT_SETTINGS
        .iter()
        .map(|(k, v)| format!("\n  SET {k} = {}", sqlquote::literal(v)))
        .collect();
    format!(
        "CREATE OR REPLACE FUNCTION {}.{}() RETURNS trigger\n  LANGUAGE plpgsql SECURITY DEFINER\n  SET search_path = pg_catalog, pg_temp{settings}\nAS $pgmesh${}$pgmesh$",
        names::SCHEMA,
        names::tombstone_function(t.oid),
        function_body(t)
    )
}

/// The PL/pgSQL body; compared with `pg_proc.prosrc` to decide whether to replace.
#[must_use]
pub fn function_body(t: &TableFacts) -> String {
    if t.primary_key.is_empty() {
        return keyless_function_body(t);
    }
    let key: Vec<String> = t
        .key_columns()
        .iter()
        .map(|c| format!("OLD.{}::text", sqlquote::ident(c)))
        .collect();
    let new_key: Vec<String> = t
        .key_columns()
        .iter()
        .map(|c| format!("NEW.{}", sqlquote::ident(c)))
        .collect();
    let old_key: Vec<String> = t
        .key_columns()
        .iter()
        .map(|c| format!("OLD.{}", sqlquote::ident(c)))
        .collect();
    format!(
        "\nBEGIN\n  IF TG_OP = 'TRUNCATE' THEN\n    INSERT INTO pgmesh.tombstones (table_name, key)\n    VALUES ({2}, '{{}}'::text[])\n    ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = now(), decided_ts = NULL, decided_node = NULL;\n    RETURN NULL;\n  END IF;\n  IF TG_OP = 'UPDATE' AND ROW({}) IS NOT DISTINCT FROM ROW({}) THEN\n    RETURN NULL;\n  END IF;\n  INSERT INTO pgmesh.tombstones (table_name, key)\n  VALUES ({}, ARRAY[{}]::text[])\n  ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = now(), decided_ts = NULL, decided_node = NULL;\n  RETURN NULL;\nEND\n",
        old_key.join(", "),
        new_key.join(", "),
        sqlquote::literal(&t.qualified()),
        key.join(", ")
    )
}

/// A table without a primary key (REPLICA IDENTITY FULL) keeps only the whole-table
/// tombstone of a TRUNCATE. Its rows are identified by their whole content and applied as
/// a multiset (`apply::keyless`), which never reads a row tombstone; writing one per
/// deleted row would grow `pgmesh.tombstones` for nothing, and a row whose text passes
/// the btree limit (~2.7 kB) would make the application's own DELETE or UPDATE fail on
/// the tombstone's key index. The row trigger stays (doing nothing) so that setup, which
/// recognises an installed table by it, replaces the function of an older install in
/// place.
fn keyless_function_body(t: &TableFacts) -> String {
    format!(
        "\nBEGIN\n  IF TG_OP = 'TRUNCATE' THEN\n    INSERT INTO pgmesh.tombstones (table_name, key)\n    VALUES ({}, '{{}}'::text[])\n    ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = now(), decided_ts = NULL, decided_node = NULL;\n  END IF;\n  RETURN NULL;\nEND\n",
        sqlquote::literal(&t.qualified())
    )
}

/// `CREATE TRIGGER pgmesh_tombstone AFTER DELETE OR UPDATE OF <key> ON <table> …` and the
/// statement-level `pgmesh_truncate AFTER TRUNCATE` beside it (same function).
#[must_use]
pub fn trigger_sql(t: &TableFacts) -> String {
    let key: Vec<String> = t.key_columns().iter().map(|c| sqlquote::ident(c)).collect();
    format!(
        "CREATE TRIGGER {} AFTER DELETE OR UPDATE OF {} ON {} FOR EACH ROW EXECUTE FUNCTION {}.{}();\n\
         CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}.{}()",
        names::TOMBSTONE_TRIGGER,
        key.join(", "),
        t.qualified(),
        names::SCHEMA,
        names::tombstone_function(t.oid),
        names::TRUNCATE_TRIGGER,
        t.qualified(),
        names::SCHEMA,
        names::tombstone_function(t.oid)
    )
}

/// Drops both triggers of a table (if there).
#[must_use]
pub fn drop_triggers_sql(table: &str) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {table}; DROP TRIGGER IF EXISTS {} ON {table}",
        names::TOMBSTONE_TRIGGER,
        names::TRUNCATE_TRIGGER
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyless_tables_keep_only_truncate_tombstones() {
        let t = TableFacts {
            oid: 16400,
            schema: "public".into(),
            name: "log".into(),
            replica_identity: 'f',
            primary_key: vec![],
            columns: vec![("a".into(), "integer".into()), ("d".into(), "text".into())],
        };
        let body = function_body(&t);
        assert!(
            body.contains("VALUES ('public.log', '{}'::text[])"),
            "{body}"
        );
        assert!(!body.contains("OLD."), "{body}");
    }

    #[test]
    fn generates_canonical_key_function() {
        let t = TableFacts {
            oid: 16390,
            schema: "public".into(),
            name: "Order".into(),
            replica_identity: 'd',
            primary_key: vec!["id".into(), "when".into()],
            columns: vec![
                ("id".into(), "integer".into()),
                ("when".into(), "timestamptz".into()),
            ],
        };
        let f = function_sql(&t);
        assert!(
            f.starts_with("CREATE OR REPLACE FUNCTION pgmesh.tomb_16390() RETURNS trigger"),
            "{f}"
        );
        assert!(
            f.contains("SET TimeZone = 'UTC'") && f.contains("SET DateStyle = 'ISO, MDY'"),
            "{f}"
        );
        assert!(
            f.contains(
                "VALUES ('public.\"Order\"', ARRAY[OLD.id::text, OLD.\"when\"::text]::text[])"
            ),
            "{f}"
        );
        assert_eq!(
            trigger_sql(&t),
            "CREATE TRIGGER pgmesh_tombstone AFTER DELETE OR UPDATE OF id, \"when\" ON public.\"Order\" FOR EACH ROW EXECUTE FUNCTION pgmesh.tomb_16390();\n\
             CREATE TRIGGER pgmesh_truncate AFTER TRUNCATE ON public.\"Order\" FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.tomb_16390()"
        );
    }
}
