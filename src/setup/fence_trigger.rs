//! The fence trigger: `pgmesh_fence`, a `BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE …
//! FOR EACH STATEMENT` trigger on every replicated table, calling `pgmesh.fence_guard()`
//! (migration V6), which raises SQLSTATE 25006 for application roles while
//! `pgmesh.fence` says the node is fenced (see [`crate::control::fence`] for the why).
//!
//! **Why a trigger.** `default_transaction_read_only` is a default a client turns off
//! with one `SET`; revoking INSERT/UPDATE/DELETE from application roles rewrites the
//! user's ACLs (which must be restored exactly, on every table, and misses roles that own
//! the tables); read-only replicas need the sidecar's apply to stop. A statement trigger
//! reads one flag row per statement and holds whatever the client sets, and it is ENABLEd
//! normally (`tgenabled = 'O'`), so it does not fire for sessions with
//! `session_replication_role = replica`: the sidecar's apply (and table sync, repair)
//! keep writing while the node is fenced, so the fenced region keeps catching up.
//!
//! One shared function for all tables (unlike the tombstone functions): it needs nothing
//! from the table, and a statement trigger runs once per statement, not per row.

use crate::config::names::SCHEMA;
use crate::sqlquote;

/// The trigger's name on every replicated table.
pub const TRIGGER: &str = "pgmesh_fence";

/// The trigger function (created by migration V6, so it is part of the schema).
pub const FUNCTION: &str = "pgmesh.fence_guard()";

/// `pg_trigger.tgtype` of the trigger: BEFORE (2) | INSERT (4) | DELETE (8) | UPDATE (16)
/// | TRUNCATE (32), statement level (row bit 1 clear).
pub const TGTYPE: i16 = 2 | 4 | 8 | 16 | 32;

/// `CREATE TRIGGER pgmesh_fence …` on `table` (qualified, quoted).
#[must_use]
pub fn create_sql(table: &str) -> String {
    format!(
        "CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}"
    )
}

/// Drops the trigger of `table` (if there).
#[must_use]
pub fn drop_sql(table: &str) -> String {
    format!("DROP TRIGGER IF EXISTS {TRIGGER} ON {table}")
}

/// Sets the trigger back to firing for ordinary sessions and not for the apply (`O`),
/// after someone disabled it or set it to ALWAYS/REPLICA.
#[must_use]
pub fn enable_sql(table: &str) -> String {
    format!("ALTER TABLE {table} ENABLE TRIGGER {TRIGGER}")
}

/// The fence triggers of this database: `(table oid, table as regclass text, healthy)`,
/// where healthy means the right function, shape and firing mode (`O`). Columns:
/// `int8, text, bool, "char"::text`.
#[must_use]
pub fn list_sql() -> String {
    format!(
        "SELECT t.tgrelid::int8, t.tgrelid::regclass::text,
                t.tgfoid = to_regprocedure({func}) AND t.tgtype = {TGTYPE}, t.tgenabled::text
           FROM pg_trigger t
          WHERE t.tgname = {name} AND NOT t.tgisinternal",
        func = sqlquote::literal(FUNCTION),
        name = sqlquote::literal(TRIGGER),
    )
}

/// The replicated tables (publication pgmesh) without a healthy, enabled fence trigger,
/// as `schema.table` (quote_ident rules), sorted. Needs no grant beyond reading catalogs.
#[must_use]
pub fn unguarded_sql() -> String {
    format!(
        "SELECT p.schemaname::text, p.tablename::text
           FROM pg_publication_tables p
          WHERE p.pubname = {publication}
            AND NOT EXISTS (
              SELECT 1 FROM pg_trigger t
                JOIN pg_class c ON c.oid = t.tgrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = p.schemaname AND c.relname = p.tablename
                 AND t.tgname = {name} AND t.tgenabled = 'O' AND t.tgtype = {TGTYPE}
                 AND t.tgfoid = to_regprocedure({func}))
          ORDER BY 1, 2",
        publication = sqlquote::literal(crate::config::names::PUBLICATION),
        name = sqlquote::literal(TRIGGER),
        func = sqlquote::literal(FUNCTION),
    )
}

/// Whether the schema has the fence (migration V6 applied).
#[must_use]
pub fn installed_sql() -> String {
    format!(
        "SELECT to_regprocedure({}) IS NOT NULL AND to_regclass('{SCHEMA}.fence') IS NOT NULL",
        sqlquote::literal(FUNCTION)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_is_a_before_statement_trigger_on_every_write() {
        assert_eq!(
            create_sql("public.\"Order\""),
            "CREATE TRIGGER pgmesh_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.\"Order\" FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.fence_guard()"
        );
        assert_eq!(TGTYPE, 62);
        assert_eq!(
            drop_sql("s.t"),
            "DROP TRIGGER IF EXISTS pgmesh_fence ON s.t"
        );
        assert!(unguarded_sql().contains("t.tgenabled = 'O'"));
        assert!(list_sql().contains("to_regprocedure('pgmesh.fence_guard()')"));
    }
}
