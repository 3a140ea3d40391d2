//! Errors of setup and teardown. All of them need an operator (nothing here retries), and
//! each names the node and what to do.

use crate::config::ConfigError;
use crate::sqlconn::SqlConnectError;

/// Why setup or teardown stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node could not be reached, refused the login or failed TLS. The message names
    /// the node and host:port/dbname, never the DSN (it may hold a password).
    #[error(transparent)]
    Connect(#[from] SqlConnectError),
    /// A statement failed; `what` says which step.
    #[error("node {node}: {what}: {message}")]
    Query {
        node: String,
        what: String,
        message: String,
    },
    #[error("node {node}: migrating schema pgmesh failed: {message}")]
    Migrate { node: String, message: String },
    /// Something exists that setup or teardown must not silently change.
    #[error("node {node}: {message}")]
    Conflict { node: String, message: String },
    /// The initial copy stopped; the next setup resumes it.
    #[error("initial copy: {0}")]
    Sync(#[from] crate::sync::SyncError),
}

pub use crate::sqlconn::pg_message;

/// Wraps a driver error of step `what` on `node`.
pub(crate) fn query_err(
    node: &str,
    what: &str,
) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let node = node.to_string();
    let what = what.to_string();
    move |e| SetupError::Query {
        node,
        what,
        message: pg_message(&e),
    }
}
