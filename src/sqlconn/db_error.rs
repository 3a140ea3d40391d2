//! What a database error means for whoever ran the statement: worth a retry or not,
//! and the server's own words (tokio-postgres prints just "db error").

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

/// What to do about a database error: transient ones ([`db_error_is_transient`]) are
/// retried; one without a SQLSTATE that is not an I/O failure (a parameter that does not
/// serialize, a message the driver did not expect, a row count) is a bug; the rest
/// (data, schema, privileges) need an operator.
#[must_use]
pub fn db_error_kind(e: &tokio_postgres::Error) -> crate::ErrorKind {
    if db_error_is_transient(e) {
        crate::ErrorKind::Transient
    } else if e.code().is_none() {
        crate::ErrorKind::Bug
    } else {
        crate::ErrorKind::NeedsOperator
    }
}

/// tokio-postgres prints server errors as just "db error"; show what the server said.
pub fn describe_db_error(e: &tokio_postgres::Error) -> String {
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
