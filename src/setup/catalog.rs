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

#[derive(Clone, Debug)]
pub struct SlotFacts {
    pub name: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
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
