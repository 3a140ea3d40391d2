//! Apply: writing a chunk of remote changes into the local primary, deciding every
//! conflict by last-writer-wins and recording it in the ledger, in one transaction bound
//! to the peer's replication origin (so progress moves atomically with the data).

pub mod copy;
pub mod keyless;
pub mod keyless_sql;
pub mod kill;
pub mod ledger;
pub mod peer_read;
mod pipelined;
pub mod resolve;
pub mod row;
pub mod session;
pub mod shape;
pub mod shape_io;
pub mod sql;
pub mod table;

pub use session::ApplySession;

/// Why applying failed. [`ApplyError::is_transient`] drives the retry policy: transient
/// errors roll back and resume from the durable origin progress after a backoff; the rest
/// need an operator (the stream stops with its position kept, and retries slowly so it
/// resumes by itself once the cause is fixed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("database error: {}", describe_db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The apply session or the peer read session did not open (TLS errors included).
    #[error(transparent)]
    Connect(#[from] crate::sqlconn::SqlConnectError),
    #[error("table {table} does not exist on this node: create it with the same columns as on the peer (pgmesh setup --check compares them)")]
    MissingTable { table: String },
    #[error("column {column} of table {table} is missing on node {node}: add it (ALTER TABLE {table} ADD COLUMN …) with the peer's type; replication resumes by itself")]
    MissingColumn {
        table: String,
        column: String,
        node: String,
    },
    /// The peer's table differs from this node's (from its Relation message): the
    /// direction stops with its position kept until the tables match.
    #[error("{0}")]
    SchemaMismatch(Box<shape::SchemaMismatch>),
    #[error("table {table} has no primary key but a unique index {index}: without a key pgmesh cannot decide which of two rows holding the same value wins. Make it the key (ALTER TABLE {table} ADD PRIMARY KEY USING INDEX {index}, if its columns are NOT NULL) or drop the index")]
    KeylessUnique { table: String, index: String },
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
    /// Worth retrying after a pause with nothing changed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Db(e) => db_error_is_transient(e),
            ApplyError::Connect(e) => e.kind() == crate::source::ErrorKind::Transient,
            _ => false,
        }
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
            ApplyError::Db(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Connection loss, deadlocks, serialization failures, lock timeouts, cancels, shutdowns
/// and resource shortages (a full disk among them) pass; data and schema errors do not.
#[must_use]
pub fn db_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O failure of the connection is transient; anything else
        // (a parameter that does not serialize, an unexpected message) is a bug.
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
                || c == "55P03"
                // Cancelled: a statement_timeout, or an operator's pg_cancel_backend.
                || c == "57014"
                || c == "58030"
                // A column or type of the local table changed after its definition was
                // read (e.g. `pgmesh ddl` committed here): the retry reads it again, and
                // a real difference then stops with what differs (apply::shape).
                || c == "42703"
                || c == "42804"
        }
    }
}

/// tokio-postgres prints server errors as just "db error"; show what the server said.
fn describe_db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            if db.code().code() == "42501" {
                // The sidecar may run as a least-privilege role: say where the list is.
                s.push_str(
                    " (fix: as a superuser, run the statements `pgmesh setup --print-grants \
                     <role>` prints on every node; see docs/setup.md, Privileges)",
                );
            }
            s
        }
        None => e.to_string(),
    }
}
