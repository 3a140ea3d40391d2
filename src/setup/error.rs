//! Errors of setup and teardown. All of them need an operator (nothing here retries), and
//! each names the node and what to do.

use crate::config::ConfigError;

/// Why setup or teardown stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node could not be reached or refused the login. `target` is host:port/dbname,
    /// never the DSN (it may hold a password).
    #[error("cannot connect to node {node} ({target}): {message}")]
    Connect {
        node: String,
        target: String,
        message: String,
    },
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
}

/// The useful text of a driver error: the server's message, detail and hint for database
/// errors, the cause chain otherwise (tokio-postgres's own Display is often just "db error").
#[must_use]
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{} ({})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            m.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = db.hint() {
            m.push_str(&format!("; hint: {h}"));
        }
        return m;
    }
    let mut m = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        m.push_str(&format!(": {s}"));
        src = s.source();
    }
    m
}

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
