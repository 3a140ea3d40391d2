//! Why a SQL session could not be opened, named by node and host, with the fix.
//!
//! TLS failures get their own variants because their fix is in the DSN or on the server,
//! never a retry: the message names the sslmode in force and what to change. Other
//! failures keep the driver's cause chain and a retry kind (see [`ErrorKind`]).

use crate::source::{ErrorKind, SourceError, SslMode};

use super::SqlConfig;

/// A SQL session that did not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlConnectError {
    /// The DSN does not parse (the message never contains the DSN: it may hold a password).
    #[error("node {node}: invalid dsn: {message}")]
    Config { node: String, message: String },

    /// The handshake failed or the certificate was rejected; `detail` says which and why.
    #[error("TLS to node {node} ({target}) failed: {detail}")]
    Tls {
        node: String,
        target: String,
        sslmode: SslMode,
        detail: String,
    },

    #[error(
        "node {node} ({target}) does not accept TLS but sslmode={sslmode} requires it: set \
         ssl = on on the server (with ssl_cert_file/ssl_key_file), or lower sslmode in the \
         node's dsn"
    )]
    TlsNotSupported {
        node: String,
        target: String,
        sslmode: SslMode,
    },

    /// pg_hba.conf has no entry for an unencrypted connection (e.g. `hostssl` only).
    #[error(
        "node {node} ({target}) refused a connection without TLS (sslmode={sslmode}): \
         {server}; set sslmode=verify-full with sslrootcert=<CA file> (or sslmode=require) \
         in the node's dsn"
    )]
    TlsRequired {
        node: String,
        target: String,
        sslmode: SslMode,
        server: String,
    },

    /// Anything else: unreachable, authentication, a server error at startup.
    #[error("cannot connect to node {node} ({target}): {message}")]
    Connect {
        node: String,
        target: String,
        message: String,
        kind: ErrorKind,
    },
}

impl SqlConnectError {
    /// Retry (unreachable, starting up), or stop for an operator (TLS, DSN, password).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            SqlConnectError::Connect { kind, .. } => *kind,
            _ => ErrorKind::NeedsOperator,
        }
    }

    /// Whether the fix is in the TLS settings (DSN sslmode/sslrootcert or the server's ssl).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            SqlConnectError::Tls { .. }
                | SqlConnectError::TlsNotSupported { .. }
                | SqlConnectError::TlsRequired { .. }
        )
    }

    /// From building the rustls config (an unreadable sslrootcert, verify-ca without one).
    pub(super) fn from_source(cfg: &SqlConfig, mode: SslMode, e: SourceError) -> Self {
        match e {
            SourceError::Tls { target, detail } => SqlConnectError::Tls {
                node: cfg.node.clone(),
                target,
                sslmode: mode,
                detail,
            },
            other => SqlConnectError::Config {
                node: cfg.node.clone(),
                message: match other {
                    SourceError::Config(m) => m,
                    o => o.to_string(),
                },
            },
        }
    }

    /// Sorts a driver error from connecting into the variants above.
    pub(super) fn classify(cfg: &SqlConfig, mode: SslMode, e: tokio_postgres::Error) -> Self {
        let node = cfg.node.clone();
        let target = cfg.target();
        if let Some(db) = e.as_db_error() {
            // PostgreSQL's wording since 9.x: `no pg_hba.conf entry for host …, no encryption`.
            if db.code().code() == "28000" && db.message().contains("no encryption") {
                return SqlConnectError::TlsRequired {
                    node,
                    target,
                    sslmode: mode,
                    server: db.message().to_string(),
                };
            }
            return SqlConnectError::Connect {
                node,
                target,
                message: pg_message(&e),
                kind: crate::source::error::kind_of_sqlstate(db.code().code()),
            };
        }
        // tokio-postgres exposes no error kind; its Display of a TLS failure is fixed text.
        if e.to_string() == "error performing TLS handshake" {
            let source = std::error::Error::source(&e);
            if let Some(io) = source.and_then(|s| s.downcast_ref::<std::io::Error>()) {
                return SqlConnectError::Tls {
                    node,
                    target,
                    sslmode: mode,
                    detail: crate::source::tls::describe_handshake_error(io, mode),
                };
            }
            if source.is_some_and(|s| s.to_string().contains("does not support TLS")) {
                return SqlConnectError::TlsNotSupported {
                    node,
                    target,
                    sslmode: mode,
                };
            }
            return SqlConnectError::Tls {
                node,
                target,
                sslmode: mode,
                detail: format!("TLS handshake failed (sslmode={mode}): {}", pg_message(&e)),
            };
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        SqlConnectError::Connect {
            node,
            target,
            message: pg_message(&e),
            kind: if io || e.is_closed() {
                ErrorKind::Transient
            } else {
                ErrorKind::NeedsOperator
            },
        }
    }
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
