//! Errors of the replication source, each with a [`ErrorKind`] that drives the retry policy.
//!
//! - [`ErrorKind::Transient`]: the network or the server went away for a while (connection
//!   refused/reset, server shutting down or starting up, timeouts, slot still held by a
//!   walsender that has not noticed its client is gone). Retry with backoff from the
//!   caller's flushed LSN.
//! - [`ErrorKind::NeedsOperator`]: configuration or privileges are wrong, or the slot can
//!   no longer serve (PostgreSQL invalidated it). Stop this stream, keep the position, and
//!   show the message: it names the object and the fix.
//! - [`ErrorKind::Bug`]: the server sent something we do not understand. Fail loudly.
//!
//! Server errors keep their SQLSTATE and the server's own message ([`DbError`]).

use std::fmt;
use std::time::Duration;

pub use crate::ErrorKind;

/// The fields of a server ErrorResponse / NoticeResponse that we keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, … (non-localized when available).
    pub severity: String,
    /// SQLSTATE, e.g. `42704`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl DbError {
    /// The first double-quoted name in the message (`replication slot "x" does not exist`).
    #[must_use]
    pub fn quoted_name(&self) -> Option<&str> {
        let start = self.message.find('"')? + 1;
        let len = self.message.get(start..)?.find('"')?;
        self.message.get(start..start + len)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong on a replication connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("invalid connection string: {0}")]
    Config(String),

    #[error("could not connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },

    #[error("i/o error on the replication connection to {target}: {source}")]
    Io {
        target: String,
        source: std::io::Error,
    },

    #[error("the server {target} closed the replication connection unexpectedly")]
    Closed { target: String },

    #[error("timed out after {after:?} {what} ({target})")]
    Timeout {
        target: String,
        what: &'static str,
        after: Duration,
    },

    #[error("TLS with {target} failed: {detail}")]
    Tls { target: String, detail: String },

    #[error(
        "the server {target} does not accept TLS but sslmode={sslmode} requires it: \
         set ssl = on on the server (with ssl_cert_file/ssl_key_file) or lower sslmode"
    )]
    TlsNotSupported { target: String, sslmode: String },

    #[error(
        "the server {target} asks for {method} authentication, which pgmesh does not \
         support: use scram-sha-256, md5, password or trust in pg_hba.conf"
    )]
    UnsupportedAuth { target: String, method: String },

    #[error(
        "the server {target} asks for a password for user {user:?} but none is set: pass \
         password= in the DSN, set PGPASSWORD, or a passfile"
    )]
    PasswordMissing { target: String, user: String },

    #[error(
        "password authentication failed for user {user:?} on {target} ({db}): check the \
         password, and that the role exists and has LOGIN"
    )]
    AuthFailed {
        target: String,
        user: String,
        db: Box<DbError>,
    },

    #[error("PostgreSQL {version} on {target} is too old: pgmesh needs PostgreSQL 15 or newer")]
    ServerTooOld { target: String, version: String },

    #[error(
        "replication slot {slot:?} does not exist on {target} ({db}): create it with \
         `pgmesh tail --create-slot` or `pgmesh setup`"
    )]
    SlotMissing {
        target: String,
        slot: String,
        db: Box<DbError>,
    },

    #[error(
        "replication slot {slot:?} on {target} is in use by another walsender ({db}); \
         if this persists past wal_sender_timeout, find the other consumer in \
         pg_stat_replication or run SELECT pg_terminate_backend(active_pid) FROM \
         pg_replication_slots WHERE slot_name = '{slot}'"
    )]
    SlotActive {
        target: String,
        slot: String,
        db: Box<DbError>,
    },

    /// PostgreSQL invalidated the slot (on a primary: its WAL passed
    /// `max_slot_wal_keep_size`, or on 18+ it sat idle past `idle_replication_slot_timeout`).
    /// It can never stream again; the changes it still held are gone.
    #[error(
        "replication slot {slot:?} on {target} was invalidated by PostgreSQL ({cause}) ({db}): \
         the changes it still held are gone and it can never stream again; drop it and create \
         it again (`pgmesh setup` does both for pgmesh's slots), then bring over what was \
         missed with `pgmesh verify` and `pgmesh repair`"
    )]
    SlotInvalidated {
        target: String,
        slot: String,
        cause: Invalidation,
        db: Box<DbError>,
    },

    #[error(
        "publication {publication:?} does not exist in the database on {target} ({db}): \
         create it with `pgmesh setup` (or CREATE PUBLICATION {publication} FOR ...)"
    )]
    PublicationMissing {
        target: String,
        publication: String,
        db: Box<DbError>,
    },

    #[error(
        "logical decoding is off on {target} ({db}): set wal_level = logical in \
         postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server"
    )]
    WalLevelNotLogical { target: String, db: Box<DbError> },

    #[error(
        "output plugin {plugin:?} is not allowed on {target} ({db}): add it to the \
         server setting output_plugin_libraries (ALTER SYSTEM SET output_plugin_libraries \
         = 'pgoutput, test_decoding, {plugin}'; SELECT pg_reload_conf())"
    )]
    PluginNotAllowed {
        target: String,
        plugin: String,
        db: Box<DbError>,
    },

    #[error(
        "role {user:?} may not open a replication connection to {target} ({db}): run \
         ALTER ROLE {user} WITH REPLICATION (and allow it in pg_hba.conf)"
    )]
    PermissionDenied {
        target: String,
        user: String,
        db: Box<DbError>,
    },

    #[error("server error from {target}: {db}")]
    Server {
        target: String,
        kind: ErrorKind,
        db: Box<DbError>,
    },

    #[error("protocol error on the replication connection to {target}: {detail}")]
    Protocol { target: String, detail: String },
}

impl SourceError {
    /// What the caller should do: retry, stop for an operator, or report a bug.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        use SourceError as E;
        match self {
            E::Connect { .. }
            | E::Io { .. }
            | E::Closed { .. }
            | E::Timeout { .. }
            // A slot held by a stale walsender frees itself at wal_sender_timeout.
            | E::SlotActive { .. } => ErrorKind::Transient,
            E::Config(_)
            | E::Tls { .. }
            | E::TlsNotSupported { .. }
            | E::UnsupportedAuth { .. }
            | E::PasswordMissing { .. }
            | E::AuthFailed { .. }
            | E::ServerTooOld { .. }
            | E::SlotMissing { .. }
            | E::SlotInvalidated { .. }
            | E::PublicationMissing { .. }
            | E::WalLevelNotLogical { .. }
            | E::PluginNotAllowed { .. }
            | E::PermissionDenied { .. } => ErrorKind::NeedsOperator,
            E::Server { kind, .. } => *kind,
            E::Protocol { .. } => ErrorKind::Bug,
        }
    }

    /// Whether a retry with backoff may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The server's error, if this came from an ErrorResponse.
    #[must_use]
    pub fn db_error(&self) -> Option<&DbError> {
        use SourceError as E;
        match self {
            E::AuthFailed { db, .. }
            | E::SlotMissing { db, .. }
            | E::SlotActive { db, .. }
            | E::SlotInvalidated { db, .. }
            | E::PublicationMissing { db, .. }
            | E::WalLevelNotLogical { db, .. }
            | E::PluginNotAllowed { db, .. }
            | E::PermissionDenied { db, .. }
            | E::Server { db, .. } => Some(db),
            _ => None,
        }
    }

    /// The SQLSTATE of the server's error, if any.
    #[must_use]
    pub fn sqlstate(&self) -> Option<&str> {
        self.db_error().map(|d| d.code.as_str())
    }

    pub(crate) fn protocol(target: &str, detail: impl Into<String>) -> SourceError {
        SourceError::Protocol {
            target: target.to_string(),
            detail: detail.into(),
        }
    }
}

/// Why PostgreSQL invalidated a slot, as its error's detail says
/// (`pg_replication_slots.invalidation_reason` on 17+).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// `wal_removed`: the slot held more WAL than `max_slot_wal_keep_size` allows, and a
    /// checkpoint removed WAL it still needed.
    WalRemoved,
    /// Another reason, in PostgreSQL's words (`idle_timeout`, `wal_level_insufficient`,
    /// `rows_removed`, "it was conflicting with recovery", …).
    Other(String),
}

impl Invalidation {
    /// Reads the reason from the detail of the server's error: PG15–17 say "This slot has
    /// been invalidated because it exceeded the maximum reserved size.", PG18 "This
    /// replication slot has been invalidated due to \"wal_removed\"."
    #[must_use]
    pub fn from_detail(detail: Option<&str>) -> Invalidation {
        let Some(d) = detail.map(str::trim) else {
            return Invalidation::Other("no reason given".into());
        };
        if d.contains("maximum reserved size") || d.contains("\"wal_removed\"") {
            return Invalidation::WalRemoved;
        }
        let reason = if let Some(i) = d.find("due to \"") {
            let rest = &d[i + "due to \"".len()..];
            rest.split('"').next().unwrap_or(rest)
        } else if let Some(i) = d.find("invalidated because ") {
            &d[i + "invalidated because ".len()..]
        } else {
            d
        };
        Invalidation::Other(reason.trim_end_matches('.').to_string())
    }
}

impl fmt::Display for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalidation::WalRemoved => f.write_str("its WAL passed max_slot_wal_keep_size"),
            Invalidation::Other(r) => write!(f, "reason: {r}"),
        }
    }
}

/// Whether a server message says the slot was invalidated. The wording changed twice:
/// PG15 `cannot read from logical replication slot "s"` (walsender), PG16–17 `can no
/// longer get changes from replication slot "s"` (also PG15's SQL functions), PG18 `can
/// no longer access replication slot "s"`; all with SQLSTATE 55000.
fn says_invalidated(msg: &str) -> bool {
    msg.starts_with("cannot read from logical replication slot")
        || msg.starts_with("can no longer get changes from replication slot")
        || msg.starts_with("can no longer access replication slot")
}

/// What the failing command was about, so a server error can name the object.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorContext<'a> {
    pub target: &'a str,
    pub user: &'a str,
    pub slot: Option<&'a str>,
    pub plugin: Option<&'a str>,
}

/// Turns a server ErrorResponse into a [`SourceError`] that says what to do.
pub(crate) fn classify(db: DbError, ctx: &ErrorContext<'_>) -> SourceError {
    let db = Box::new(db);
    let target = ctx.target.to_string();
    let msg = db.message.as_str();
    let named = |fallback: Option<&str>| {
        db.quoted_name()
            .or(fallback)
            .unwrap_or("(unknown)")
            .to_string()
    };
    match db.code.as_str() {
        "28P01" => SourceError::AuthFailed {
            target,
            user: ctx.user.to_string(),
            db,
        },
        "42704" if msg.starts_with("replication slot") => SourceError::SlotMissing {
            target,
            slot: named(ctx.slot),
            db,
        },
        "42704" if msg.starts_with("publication") => SourceError::PublicationMissing {
            target,
            publication: named(None),
            db,
        },
        "55006" if msg.contains("replication slot") => SourceError::SlotActive {
            target,
            slot: named(ctx.slot),
            db,
        },
        "55000" if says_invalidated(msg) => SourceError::SlotInvalidated {
            target,
            slot: named(ctx.slot),
            cause: Invalidation::from_detail(db.detail.as_deref()),
            db,
        },
        "55000" if msg.contains("wal_level") => SourceError::WalLevelNotLogical { target, db },
        "42501" if msg.contains("may not be used as an output plugin") => {
            SourceError::PluginNotAllowed {
                target,
                plugin: named(ctx.plugin),
                db,
            }
        }
        "42501" | "28000" => SourceError::PermissionDenied {
            target,
            user: ctx.user.to_string(),
            db,
        },
        code => SourceError::Server {
            target,
            kind: kind_of_sqlstate(code),
            db,
        },
    }
}

/// Retry policy by SQLSTATE class for errors without a dedicated variant.
#[must_use]
pub fn kind_of_sqlstate(code: &str) -> ErrorKind {
    match code {
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up / recovering)
        "57P01" | "57P02" | "57P03" | "57P05" => ErrorKind::Transient,
        // query_canceled (statement_timeout etc.)
        "57014" => ErrorKind::Transient,
        // serialization / deadlock
        "40001" | "40P01" => ErrorKind::Transient,
        _ if code.starts_with("08") => ErrorKind::Transient, // connection exception
        _ if code.starts_with("53") => ErrorKind::Transient, // insufficient resources
        "XX000" | "XX001" | "XX002" => ErrorKind::NeedsOperator,
        "08P01" => ErrorKind::Bug,
        _ => ErrorKind::NeedsOperator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &str, message: &str) -> DbError {
        DbError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            ..DbError::default()
        }
    }

    fn ctx() -> ErrorContext<'static> {
        ErrorContext {
            target: "127.0.0.1:5432",
            user: "rep",
            slot: Some("s1"),
            plugin: Some("pgoutput"),
        }
    }

    #[test]
    fn classifies_server_errors_with_fix() {
        let cases: &[(&str, &str, ErrorKind, &str)] = &[
            (
                "42704",
                "replication slot \"pgmesh_b\" does not exist",
                ErrorKind::NeedsOperator,
                "pgmesh tail --create-slot",
            ),
            (
                "42704",
                "publication \"pub\" does not exist",
                ErrorKind::NeedsOperator,
                "CREATE PUBLICATION pub",
            ),
            (
                "55000",
                "logical decoding requires \"wal_level\" >= \"logical\"",
                ErrorKind::NeedsOperator,
                "wal_level = logical",
            ),
            (
                "42501",
                "library \"wal2json\" may not be used as an output plugin",
                ErrorKind::NeedsOperator,
                "output_plugin_libraries",
            ),
            (
                "42501",
                "permission denied to start WAL sender",
                ErrorKind::NeedsOperator,
                "ALTER ROLE rep WITH REPLICATION",
            ),
            (
                "28P01",
                "password authentication failed for user \"rep\"",
                ErrorKind::NeedsOperator,
                "check the password",
            ),
            (
                "55006",
                "replication slot \"s1\" is active for PID 4242",
                ErrorKind::Transient,
                "pg_terminate_backend",
            ),
            (
                "57P01",
                "terminating connection due to administrator command",
                ErrorKind::Transient,
                "57P01",
            ),
            (
                "57P03",
                "the database system is starting up",
                ErrorKind::Transient,
                "starting up",
            ),
            ("42601", "syntax error", ErrorKind::NeedsOperator, "42601"),
        ];
        for (code, message, kind, needle) in cases {
            let e = classify(db(code, message), &ctx());
            assert_eq!(e.kind(), *kind, "{code} {message}");
            let text = e.to_string();
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
            assert!(text.contains(message), "{text:?} lacks the server message");
            assert_eq!(e.sqlstate(), Some(*code));
        }
    }

    #[test]
    fn names_the_object_from_the_message() {
        let e = classify(
            db("42704", "replication slot \"other\" does not exist"),
            &ctx(),
        );
        assert!(matches!(e, SourceError::SlotMissing { ref slot, .. } if slot == "other"));
        let e = classify(
            db("42501", "library \"x\" may not be used as an output plugin"),
            &ctx(),
        );
        assert!(matches!(e, SourceError::PluginNotAllowed { ref plugin, .. } if plugin == "x"));
    }

    /// START_REPLICATION on slot pgmesh_b after its WAL passed max_slot_wal_keep_size
    /// (`wal_status = lost`), word for word as PostgreSQL 15.18, 16.15, 17.10 and 18.6 sent it.
    #[test]
    fn recognises_a_slot_invalidated_by_max_slot_wal_keep_size() {
        const SIZE: &str =
            "This slot has been invalidated because it exceeded the maximum reserved size.";
        let cases = [
            (
                15,
                "cannot read from logical replication slot \"pgmesh_b\"",
                SIZE,
            ),
            (
                16,
                "can no longer get changes from replication slot \"pgmesh_b\"",
                SIZE,
            ),
            (
                17,
                "can no longer get changes from replication slot \"pgmesh_b\"",
                SIZE,
            ),
            (
                18,
                "can no longer access replication slot \"pgmesh_b\"",
                "This replication slot has been invalidated due to \"wal_removed\".",
            ),
        ];
        for (major, message, detail) in cases {
            let mut d = db("55000", message);
            d.detail = Some(detail.into());
            let e = classify(d, &ctx());
            assert!(
                matches!(
                    e,
                    SourceError::SlotInvalidated { ref slot, cause: Invalidation::WalRemoved, .. }
                        if slot == "pgmesh_b"
                ),
                "PG{major}: {e:?}"
            );
            assert_eq!(e.kind(), ErrorKind::NeedsOperator, "PG{major}");
            assert!(!e.is_transient());
            assert_eq!(e.sqlstate(), Some("55000"));
            let text = e.to_string();
            for needle in [
                "\"pgmesh_b\"",
                "invalidated",
                "max_slot_wal_keep_size",
                "pgmesh setup",
                "pgmesh repair",
                message,
            ] {
                assert!(
                    text.contains(needle),
                    "PG{major}: {text:?} lacks {needle:?}"
                );
            }
        }
    }

    #[test]
    fn names_other_invalidation_reasons() {
        let cases = [
            (
                Some("This replication slot has been invalidated due to \"idle_timeout\"."),
                Invalidation::Other("idle_timeout".into()),
            ),
            (
                Some("This slot has been invalidated because it was conflicting with recovery."),
                Invalidation::Other("it was conflicting with recovery".into()),
            ),
            (None, Invalidation::Other("no reason given".into())),
        ];
        for (detail, want) in cases {
            assert_eq!(Invalidation::from_detail(detail), want, "{detail:?}");
        }
        let mut d = db("55000", "can no longer access replication slot \"s9\"");
        d.detail =
            Some("This replication slot has been invalidated due to \"idle_timeout\".".into());
        let text = classify(d, &ctx()).to_string();
        assert!(
            text.contains("\"s9\"") && text.contains("reason: idle_timeout"),
            "{text}"
        );
        // Other 55000 errors keep their own variant.
        let e = classify(
            db(
                "55000",
                "logical decoding requires \"wal_level\" >= \"logical\"",
            ),
            &ctx(),
        );
        assert!(matches!(e, SourceError::WalLevelNotLogical { .. }), "{e:?}");
    }

    #[test]
    fn quoted_name_is_robust() {
        assert_eq!(db("1", "no quotes").quoted_name(), None);
        assert_eq!(db("1", "one \" quote").quoted_name(), None);
        assert_eq!(db("1", "\"\"").quoted_name(), Some(""));
    }
}
