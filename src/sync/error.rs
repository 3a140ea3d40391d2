//! Why an initial copy stopped. Each names the node and what to do; the copy's progress is
//! kept in `pgmesh.table_sync`, so running setup again resumes it.

use crate::config::ConfigError;
use crate::source::SourceError;
use crate::sqlconn::SqlConnectError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error(transparent)]
    Config(ConfigError),
    #[error(transparent)]
    Connect(#[from] SqlConnectError),
    /// The walsender connection that pins the snapshot failed.
    #[error("node {node}: {source}")]
    Source {
        node: String,
        #[source]
        source: SourceError,
    },
    #[error("node {node}: {message}")]
    Protocol { node: String, message: String },
    /// A statement failed; `what` says which step.
    #[error("node {node}: {what}: {message}")]
    Query {
        node: String,
        what: String,
        message: String,
    },
    /// The table cannot be copied as it is; `message` says why and what to do.
    #[error("table {table}: {message}")]
    Refused { table: String, message: String },
}

/// Wraps a driver error of step `what` on `node`.
pub(crate) fn query_err(node: &str, what: &str) -> impl FnOnce(tokio_postgres::Error) -> SyncError {
    let node = node.to_string();
    let what = what.to_string();
    move |e| SyncError::Query {
        node,
        what,
        message: crate::sqlconn::pg_message(&e),
    }
}
