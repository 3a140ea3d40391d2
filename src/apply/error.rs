//! Why applying failed, and what to do about it.

use super::shape;

/// Why applying failed. [`ApplyError::is_transient`] drives the retry policy: transient
/// errors roll back and resume from the durable origin progress after a backoff; the rest
/// need an operator (the stream stops with its position kept, and retries slowly so it
/// resumes by itself once the cause is fixed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("database error: {}", crate::sqlconn::describe_db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The apply session or the peer read session did not open (TLS errors included).
    #[error(transparent)]
    Connect(#[from] crate::sqlconn::SqlConnectError),
    /// The local table, or a row built for it (`crate::table`).
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
    /// The peer's table differs from this node's (from its Relation message): the
    /// direction stops with its position kept until the tables match.
    #[error("{0}")]
    SchemaMismatch(Box<shape::SchemaMismatch>),
    #[error("table {table} has no primary key on this node but the peer sent {what}: set REPLICA IDENTITY FULL on the peer and give the table the same primary key (or none) on every node")]
    KeylessWithoutFullImage { table: String, what: &'static str },
    #[error("unexpected replication data: {0}")]
    Protocol(String),
    #[error("could not apply a change to {table} key {key}: {detail}")]
    Unresolved {
        table: String,
        key: String,
        detail: String,
    },
}

impl ApplyError {
    /// What to do about it.
    #[must_use]
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            ApplyError::Db(e) => crate::sqlconn::db_error_kind(e),
            ApplyError::Connect(e) => e.kind(),
            ApplyError::Table(e) => e.kind(),
            ApplyError::SchemaMismatch(_)
            | ApplyError::KeylessWithoutFullImage { .. }
            | ApplyError::Unresolved { .. } => K::NeedsOperator,
            ApplyError::Protocol(_) => K::Bug,
        }
    }

    /// Worth retrying after a pause with nothing changed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind() == crate::ErrorKind::Transient
    }

    /// The table difference that stopped the direction, if that is what happened.
    #[must_use]
    pub fn schema_mismatch(&self) -> Option<&shape::SchemaMismatch> {
        match self {
            ApplyError::SchemaMismatch(m) => Some(m),
            _ => None,
        }
    }

    /// The SQLSTATE of a database error.
    #[must_use]
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ApplyError::Db(e) | ApplyError::Table(crate::table::TableError::Db(e)) => {
                e.code().map(|c| c.code())
            }
            _ => None,
        }
    }
}
