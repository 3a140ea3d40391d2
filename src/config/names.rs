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

/// Replication origin on a node for a big transaction of `peer` applied while it is still
/// open there (pgoutput streaming, `[apply] stream_after`): `pgmesh__stream_<peer>`. The
/// stream session writes beside the session that holds [`origin_name`], and PostgreSQL
/// lets one session at a time hold an origin.
#[must_use]
pub fn stream_origin_name(peer: &str) -> String {
    format!("pgmesh__stream_{peer}")
}

/// Replication origin on a node for the fixes `pgmesh repair` writes there with
/// `winner`'s version: `pgmesh__repair_<winner>`, so they are not streamed back (see
/// `verify/repair/fix.rs`).
#[must_use]
pub fn repair_origin_name(winner: &str) -> String {
    format!("pgmesh__repair_{winner}")
}

/// The node whose writes a replication origin carries: `pgmesh_<n>`, `pgmesh__copy_<n>`,
/// `pgmesh__repair_<n>` and `pgmesh__stream_<n>` → `n`; any other origin keeps its own
/// name.
#[must_use]
pub fn node_of_origin(origin: &str) -> &str {
    origin
        .strip_prefix("pgmesh__copy_")
        .or_else(|| origin.strip_prefix("pgmesh__repair_"))
        .or_else(|| origin.strip_prefix("pgmesh__stream_"))
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
    format!(
        "{}.{}",
        crate::sqlquote::ident(schema),
        crate::sqlquote::ident(table)
    )
}

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
    fn every_origin_of_a_peer_names_the_peer() {
        for origin in [
            origin_name("a"),
            copy_origin_name("a"),
            repair_origin_name("a"),
            stream_origin_name("a"),
        ] {
            assert_eq!(node_of_origin(&origin), "a", "{origin}");
        }
        assert_eq!(node_of_origin("other"), "other");
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
    }
}
