//! Names derived from the config: one place, pure functions, used by setup, run and
//! teardown alike, so the objects one command creates are the objects the others find.
//!
//! On node X, for each peer P:
//! - the publication is [`PUBLICATION`] (`pgmesh`) on every node;
//! - the logical slot that P's sidecar streams from X is [`slot_name`]`(P)` = `pgmesh_<P>`
//!   (node a holds slot `pgmesh_b`, which b's sidecar reads);
//! - the replication origin of changes X's sidecar applies from P is
//!   [`origin_name`]`(P)` = `pgmesh_<P>` (node b holds origin `pgmesh_a`).

/// Publication created on every node.
pub const PUBLICATION: &str = "pgmesh";

/// Schema holding pgmesh's own tables (ledger, tombstones, nodes, migration history).
pub const SCHEMA: &str = "pgmesh";

/// Refinery's migration history table, kept inside [`SCHEMA`].
pub const MIGRATION_TABLE: &str = "pgmesh.refinery_schema_history";

/// Name of the AFTER DELETE trigger setup installs on every replicated table.
pub const TOMBSTONE_TRIGGER: &str = "pgmesh_tombstone";
/// Statement trigger that records a local TRUNCATE as a whole-table tombstone (key `{}`).
pub const TRUNCATE_TRIGGER: &str = "pgmesh_truncate";

/// Output plugin of every pgmesh slot.
pub const OUTPUT_PLUGIN: &str = "pgoutput";

/// Session settings under which key values are turned into text, both by the tombstone
/// trigger functions and (the apply engine's side of the contract) by any session whose
/// text output is compared with tombstone keys, e.g. the walsender that feeds pgoutput.
/// Fixed values make `value::text` independent of the deleting session's settings.
pub const CANONICAL_TEXT_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("IntervalStyle", "postgres"),
    ("bytea_output", "hex"),
];

/// Slot on a node that `peer`'s sidecar streams from: `pgmesh_<peer>`.
#[must_use]
pub fn slot_name(peer: &str) -> String {
    format!("pgmesh_{peer}")
}

/// Replication origin on a node for changes applied from `peer`: `pgmesh_<peer>`.
#[must_use]
pub fn origin_name(peer: &str) -> String {
    format!("pgmesh_{peer}")
}

/// Replication origin on a node for rows the initial copy brought from `source`:
/// `pgmesh__copy_<source>`. Its own origin, because the sidecar applying `source`'s
/// stream may hold [`origin_name`] at the same time; the double underscore cannot start a
/// node name, so [`node_of_origin`] stays unambiguous.
#[must_use]
pub fn copy_origin_name(source: &str) -> String {
    format!("pgmesh__copy_{source}")
}

/// Replication origin on a node for the fixes `pgmesh repair` writes there with
/// `winner`'s version: `pgmesh__repair_<winner>`, so they are not streamed back (see
/// `verify/repair/fix.rs`).
#[must_use]
pub fn repair_origin_name(winner: &str) -> String {
    format!("pgmesh__repair_{winner}")
}

/// The node whose writes a replication origin carries: `pgmesh_<n>`, `pgmesh__copy_<n>`
/// and `pgmesh__repair_<n>` → `n`; any other origin keeps its own name.
#[must_use]
pub fn node_of_origin(origin: &str) -> &str {
    origin
        .strip_prefix("pgmesh__copy_")
        .or_else(|| origin.strip_prefix("pgmesh__repair_"))
        .or_else(|| origin.strip_prefix("pgmesh_"))
        .unwrap_or(origin)
}

/// Name of the generated tombstone function for the table with this OID, inside
/// [`SCHEMA`]. The OID keeps it unique and short (63-byte identifier limit) whatever the
/// table's name; it only has to be stable on one node, never across nodes.
#[must_use]
pub fn tombstone_function(table_oid: u32) -> String {
    format!("tomb_{table_oid}")
}

/// `schema.table`, each part quoted only when PostgreSQL's `quote_ident` would quote it.
/// The same string names a table in `pgmesh.tombstones` and `pgmesh.conflicts` on every
/// node, so it is computed here (not by the server, whose keyword list varies slightly
/// between majors; this list is the union of 15–18).
#[must_use]
pub fn qualified_table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// PostgreSQL's `quote_ident`: leaves `[a-z_][a-z0-9_]*` that is not a reserved-ish keyword
/// as is, otherwise wraps in double quotes and doubles embedded quotes.
#[must_use]
pub fn quote_ident(ident: &str) -> String {
    let safe = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && RESERVED_KEYWORDS.binary_search(&ident).is_err();
    if safe {
        ident.to_string()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

/// SQL string literal (`'…'` with quotes doubled); `standard_conforming_strings` is on in
/// every supported version, so backslashes need no escaping.
#[must_use]
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Keywords whose category is not UNRESERVED in PostgreSQL 15–18 (kwlist.h), sorted.
const RESERVED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "merge_action",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_and_origin_follow_the_peer() {
        assert_eq!(slot_name("b"), "pgmesh_b");
        assert_eq!(origin_name("a"), "pgmesh_a");
        assert_eq!(tombstone_function(16384), "tomb_16384");
    }

    #[test]
    fn keywords_are_sorted_for_binary_search() {
        let mut sorted = RESERVED_KEYWORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, RESERVED_KEYWORDS);
    }

    #[test]
    fn quoting_follows_quote_ident() {
        assert_eq!(qualified_table("public", "orders"), "public.orders");
        assert_eq!(qualified_table("public", "Orders"), "public.\"Orders\"");
        assert_eq!(qualified_table("public", "user"), "public.\"user\"");
        assert_eq!(qualified_table("public", "t_1"), "public.t_1");
        assert_eq!(qualified_table("public", "1t"), "public.\"1t\"");
        assert_eq!(
            qualified_table("my schema", "a\"b"),
            "\"my schema\".\"a\"\"b\""
        );
        assert_eq!(
            quote_ident("comment"),
            "comment",
            "unreserved keyword stays bare"
        );
        assert_eq!(quote_ident("é"), "\"é\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
