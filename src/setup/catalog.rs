//! Facts about one node, as the preflight checks and setup steps need them. Plain data:
//! gathered by [`super::facts`] (I/O), judged by [`super::checks`] (pure).

use crate::config::{names, ReplicationConfig};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::sequences::SequenceFacts;

/// Everything preflight looks at on one node.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub node: String,
    pub server_version_num: i32,
    pub database: String,
    /// `pg_control_system().system_identifier`, when the role may read it: two nodes with
    /// the same identifier and database are one database configured twice.
    pub system_identifier: Option<i64>,
    /// Newest applied pgmesh migration, `None` before the first setup.
    pub schema_version: Option<i32>,
    pub wal_level: String,
    pub track_commit_timestamp: bool,
    pub max_replication_slots: i64,
    pub max_wal_senders: i64,
    pub max_worker_processes: i64,
    /// `None` on minors without the allow-list GUC.
    pub output_plugin_libraries: Option<String>,
    pub role: RoleFacts,
    /// Every slot on the server (all databases).
    pub slots: Vec<SlotFacts>,
    /// Walsenders running now that do not serve a pgmesh slot of this database.
    pub other_walsenders: i64,
    /// User tables (ordinary, not partitions) outside system schemas and pgmesh.
    pub tables: Vec<TableFacts>,
    /// Sequences that fill a column (serial, identity, or a `nextval` default).
    pub sequences: Vec<SequenceFacts>,
    /// Row counts of the selected non-empty tables, by qualified name (absent = empty).
    pub row_counts: BTreeMap<String, i64>,
    /// Tables in publication pgmesh on this node (qualified names): already replicated.
    pub published: BTreeSet<String>,
    /// Initial copies into this node that have not finished: table → (source node, mode).
    pub unfinished_syncs: BTreeMap<String, (String, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct RoleFacts {
    pub name: String,
    pub superuser: bool,
    pub replication: bool,
    /// CREATE on the database (needed to create schema pgmesh).
    pub create_on_database: bool,
}

#[derive(Clone, Debug, Default)]
pub struct SlotFacts {
    pub name: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved`, or `lost`: PostgreSQL invalidated the slot
    /// (its WAL passed `max_slot_wal_keep_size`) and it can never stream again.
    pub wal_status: Option<String>,
    /// `pg_replication_slots.invalidation_reason` (PostgreSQL 17+), e.g. `wal_removed`.
    pub invalidation_reason: Option<String>,
}

impl SlotFacts {
    /// PostgreSQL invalidated it: setup drops it and creates it again.
    #[must_use]
    pub fn lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// Why a slot with `wal_status = lost` was invalidated, from its `invalidation_reason`
/// (PostgreSQL 17+; before 17 the only cause on a primary is removed WAL).
#[must_use]
pub fn lost_cause(invalidation_reason: Option<&str>) -> String {
    match invalidation_reason {
        None | Some("wal_removed") => {
            "its WAL was removed, past max_slot_wal_keep_size".to_string()
        }
        Some(r) => format!("invalidation_reason {r}"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableFacts {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `pg_class.relreplident`: d(efault), n(othing), f(ull), i(ndex).
    pub replica_identity: char,
    /// Primary-key columns in key order; empty without a primary key.
    pub primary_key: Vec<String>,
    /// (name, `format_type`) in column order.
    pub columns: Vec<(String, String)>,
}

impl TableFacts {
    /// `schema.table`, quoted as in the ledger and tombstones.
    #[must_use]
    pub fn qualified(&self) -> String {
        names::qualified_table(&self.schema, &self.name)
    }

    /// Columns that identify a row for tombstones: the primary key, or every column of a
    /// REPLICA IDENTITY FULL table without one (the whole row is its identity).
    #[must_use]
    pub fn key_columns(&self) -> Vec<String> {
        if self.primary_key.is_empty() {
            self.columns.iter().map(|(n, _)| n.clone()).collect()
        } else {
            self.primary_key.clone()
        }
    }
}

impl NodeFacts {
    /// The tables `[replication]` selects on this node, in name order.
    #[must_use]
    pub fn selected_tables<'f>(&'f self, repl: &ReplicationConfig) -> Vec<&'f TableFacts> {
        let mut v: Vec<&TableFacts> = self
            .tables
            .iter()
            .filter(|t| repl.selects(&t.schema, &t.name))
            .collect();
        v.sort_by_key(|t| t.qualified());
        v
    }
}
