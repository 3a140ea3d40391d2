//! What a replicated row is, below every stage that handles one: the local table it
//! belongs to and the mapping of the peer's columns onto it ([`local`]), and row images
//! and primary keys in local column order ([`row`]). Batching collapses changes by
//! [`row::Key`]; apply writes [`row::Row`]s into a [`local::LocalTable`]; verify and
//! repair read the same tables. Nothing here imports a stage.

pub mod local;
pub mod row;

pub use local::{LocalColumn, LocalTable, TableMap};
pub use row::{Key, Row, Val};

/// Why a table could not be described or a row not built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    #[error("database error: {}", crate::sqlconn::describe_db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("table {table} does not exist on this node: create it with the same columns as on the peer (pgmesh setup --check compares them)")]
    MissingTable { table: String },
    #[error("column {column} of table {table} is missing on node {node}: add it (ALTER TABLE {table} ADD COLUMN …) with the peer's type; replication resumes by itself")]
    MissingColumn {
        table: String,
        column: String,
        node: String,
    },
    #[error("table {table} has no primary key but a unique index {index}: without a key pgmesh cannot decide which of two rows holding the same value wins. Make it the key (ALTER TABLE {table} ADD PRIMARY KEY USING INDEX {index}, if its columns are NOT NULL) or drop the index")]
    KeylessUnique { table: String, index: String },
    /// A value or tuple that does not fit the table (the peer sent something this node's
    /// table cannot hold as it is described).
    #[error("unexpected replication data: {0}")]
    Protocol(String),
}

impl TableError {
    /// What to do about it: retry a lost connection or a column that changed under the
    /// reader; a table or column that is missing needs an operator; data that does not
    /// fit the table as described is a bug.
    #[must_use]
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            TableError::Db(e) => crate::sqlconn::db_error_kind(e),
            TableError::MissingTable { .. }
            | TableError::MissingColumn { .. }
            | TableError::KeylessUnique { .. } => crate::ErrorKind::NeedsOperator,
            TableError::Protocol(_) => crate::ErrorKind::Bug,
        }
    }

    /// Worth retrying after a pause with nothing changed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind() == crate::ErrorKind::Transient
    }
}
