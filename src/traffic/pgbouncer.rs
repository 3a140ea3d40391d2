//! pgbouncer through its admin console: PAUSE an endpoint's database (waits until its
//! running transactions end, then holds new queries), repoint it at the new owner, RESUME.
//! Clients in transaction pooling see a pause, not an error.
//!
//! pgbouncer 1.18 has no admin command that changes a database's host, so the agent owns
//! a small file with the endpoints' `[databases]` lines, which the user's `pgbouncer.ini`
//! includes inside its `[databases]` section (checked with 1.18.0; see
//! `examples/pgbouncer.ini`):
//!
//! ```ini
//! [databases]
//! %include /etc/pgbouncer/pgmesh-databases.ini
//! ```
//!
//! The file starts with its own `[databases]` header ([`render_databases_file`]), so it
//! also works when the `%include` line is the last line of pgbouncer.ini (after
//! `[pgbouncer]`); it must not sit in the middle of the `[pgbouncer]` section, whose
//! remaining settings would then be read as databases.
//!
//! Repointing rewrites that file (atomically), sends `RELOAD` and checks with
//! `SHOW DATABASES` that the database now points at the new host and port. The check is
//! needed: `RELOAD` answers `RELOAD` even when pgbouncer could not load the file (it only
//! logs "config file loading failed"), and a file with an error is applied up to the bad
//! line. At `RELOAD` pgbouncer closes server connections to the old host once they are
//! released; at `RESUME` it opens new ones to the new host. The admin console speaks only
//! the simple query protocol; names are double-quoted (`app-eu` is not a plain identifier).
//!
//! What clients see during [`switch`]:
//! - a client *inside* a transaction when PAUSE arrives keeps running it on the old host,
//!   undisturbed; PAUSE answers once it (and every other running transaction of that
//!   database) committed or rolled back. A transaction that stays open longer than
//!   `pause_timeout` makes the switch fail with [`PgbouncerError::PauseTimedOut`], which
//!   names it (backend pid, client address); the database is resumed again at once.
//! - a client that starts a transaction (sends any query) while the database is paused
//!   waits inside pgbouncer, its connection open, and runs on the new host after RESUME.
//!   pgbouncer's `query_wait_timeout` (default 120 s) bounds that wait.
//! - server-side session state (prepared statements, `SET` outside a transaction, temp
//!   tables) never survives transaction pooling anyway, and does not survive a switch.
//!
//! Console answers in 1.18.0 (the idempotency below rests on them): `PAUSE db` on a paused
//! database answers `PAUSE` again; `RESUME db` on a database that is not paused fails with
//! `database db is not paused`; both fail with `no such database: db` for an unknown name
//! and `PAUSE db` fails with `already suspended/paused` while the whole pooler is paused or
//! suspended. A PAUSE whose session goes away leaves the database paused, and a waiting
//! PAUSE never gets its answer once another session RESUMEd the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// How long connecting to the console and each command but PAUSE may take in [`switch`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// `[[traffic.pgbouncer]]`: one pgbouncer that serves endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct PgbouncerConfig {
    pub name: String,
    /// The region whose agent rewrites `databases_file` (it must be on that host).
    pub node: String,
    /// libpq DSN of the admin console (`dbname=pgbouncer`, a user in `admin_users`).
    pub admin: String,
    /// The file pgmesh owns, `%include`d from pgbouncer.ini's `[databases]`.
    pub databases_file: PathBuf,
    /// pgbouncer database names = the endpoints it serves (the config fills in every
    /// endpoint when the key is left out; an empty list serves none).
    pub endpoints: Vec<String>,
    /// Per region: the connection part of the `[databases]` line while it owns an endpoint.
    pub targets: BTreeMap<String, String>,
    /// How long PAUSE may wait for running transactions.
    pub pause_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgbouncerError {
    #[error("cannot reach pgbouncer's admin console: {0}")]
    Connect(String),
    #[error("pgbouncer admin command {command:?} failed: {message}")]
    Command { command: String, message: String },
    #[error("pgbouncer admin command {command:?} got no answer within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("cannot write {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("after RELOAD, pgbouncer shows database {db:?} at {shows} instead of {wanted}: check that the [databases] section of pgbouncer.ini has the line `%include {file}`, that pgbouncer's OS user can read that file, and pgbouncer's log for \"config file loading failed\"")]
    NotRepointed {
        db: String,
        shows: String,
        wanted: String,
        file: String,
    },
    #[error("PAUSE {db:?}: {} running transaction(s) did not end within {timeout:?}: {}; {resumed}. Raise pause_timeout or end those transactions (pg_terminate_backend on the old primary)", .running.len(), .running.join("; "))]
    PauseTimedOut {
        db: String,
        timeout: Duration,
        running: Vec<String>,
        resumed: String,
    },
    #[error("pgbouncer is paused or suspended as a whole (PAUSE or SUSPEND without a database name), so {db:?} cannot be paused on its own: run RESUME on its admin console, then retry")]
    PoolerPaused { db: String },
    #[error("this admin session was given up after a PAUSE that did not finish: connect again")]
    Abandoned,
    #[error("pgbouncer {name} does not serve endpoint {db:?} (its endpoints: {endpoints:?})")]
    NotServed {
        name: String,
        db: String,
        endpoints: Vec<String>,
    },
    #[error("{cause}; and RESUME {db:?} failed too ({resume}), so its clients wait: run RESUME \"{db}\" on pgbouncer's admin console")]
    LeftPaused {
        db: String,
        cause: String,
        resume: String,
    },
}

impl PgbouncerError {
    /// Whether retrying cannot help until someone changes pgbouncer's setup (as opposed
    /// to an unreachable console or a transaction that happened to run long).
    #[must_use]
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            PgbouncerError::File { .. }
                | PgbouncerError::NotRepointed { .. }
                | PgbouncerError::PoolerPaused { .. }
                | PgbouncerError::NotServed { .. }
                | PgbouncerError::LeftPaused { .. }
        )
    }
}

/// One row of `SHOW DATABASES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseRow {
    pub name: String,
    pub host: String,
    pub port: String,
    pub database: String,
    pub paused: bool,
    pub disabled: bool,
}

impl DatabaseRow {
    /// From a row of `SHOW DATABASES` by column name (1.18: name, host, port, database,
    /// force_user, pool_size, ..., paused, disabled; `paused`/`disabled` are 0 or 1).
    #[must_use]
    pub fn from_columns(row: &BTreeMap<String, String>) -> DatabaseRow {
        let get = |c: &str| row.get(c).cloned().unwrap_or_default();
        DatabaseRow {
            name: get("name"),
            host: get("host"),
            port: get("port"),
            database: get("database"),
            paused: get("paused") == "1",
            disabled: get("disabled") == "1",
        }
    }
}

/// A transaction that holds a server connection (`SHOW SERVERS` state `active`), with
/// its client when `SHOW CLIENTS` still lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningTransaction {
    /// The PostgreSQL backend's pid (for `pg_stat_activity` / `pg_terminate_backend`).
    pub backend_pid: String,
    pub server: String,
    pub user: String,
    pub last_request: String,
    pub client: Option<String>,
    pub application_name: String,
}

impl std::fmt::Display for RunningTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backend pid {} on {} (user {}, last request {}",
            self.backend_pid, self.server, self.user, self.last_request
        )?;
        if let Some(c) = &self.client {
            write!(f, ", client {c}")?;
        }
        if !self.application_name.is_empty() {
            write!(f, ", application {}", self.application_name)?;
        }
        f.write_str(")")
    }
}

/// The transactions of database `db` that hold a server, from the rows of `SHOW SERVERS`
/// and `SHOW CLIENTS` (a server's `link` is its client's `ptr`).
#[must_use]
pub fn running_transactions_in(
    db: &str,
    servers: &[BTreeMap<String, String>],
    clients: &[BTreeMap<String, String>],
) -> Vec<RunningTransaction> {
    let get = |r: &BTreeMap<String, String>, c: &str| r.get(c).cloned().unwrap_or_default();
    servers
        .iter()
        .filter(|s| get(s, "database") == db && get(s, "state") == "active")
        .map(|s| {
            let link = get(s, "link");
            let client = clients
                .iter()
                .find(|c| !link.is_empty() && get(c, "ptr") == link)
                .map(|c| format!("{}:{}", get(c, "addr"), get(c, "port")));
            RunningTransaction {
                backend_pid: get(s, "remote_pid"),
                server: format!("{}:{}", get(s, "addr"), get(s, "port")),
                user: get(s, "user"),
                last_request: get(s, "request_time"),
                client,
                application_name: get(s, "application_name"),
            }
        })
        .collect()
}

/// A session on the admin console.
pub struct Admin {
    client: Client,
    dsn: String,
    timeout: Duration,
    /// Set when a PAUSE timed out: its answer may still come (or never), so this session
    /// is not trusted with another command.
    abandoned: AtomicBool,
}

impl Admin {
    /// Connects; `timeout` bounds the connection and every later command but PAUSE.
    pub async fn connect(dsn: &str, timeout: Duration) -> Result<Admin, PgbouncerError> {
        let config: tokio_postgres::Config = dsn
            .parse()
            .map_err(|e: tokio_postgres::Error| PgbouncerError::Connect(e.to_string()))?;
        let (client, conn) = tokio::time::timeout(timeout, config.connect(NoTls))
            .await
            .map_err(|_| PgbouncerError::Connect(format!("no answer within {timeout:?}")))?
            .map_err(|e| PgbouncerError::Connect(crate::sqlconn::pg_message(&e)))?;
        tokio::spawn(conn);
        Ok(Admin {
            client,
            dsn: dsn.to_string(),
            timeout,
            abandoned: AtomicBool::new(false),
        })
    }

    async fn run(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Vec<SimpleQueryMessage>, PgbouncerError> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(PgbouncerError::Abandoned);
        }
        tokio::time::timeout(timeout, self.client.simple_query(command))
            .await
            .map_err(|_| PgbouncerError::Timeout {
                command: command.to_string(),
                timeout,
            })?
            .map_err(|e| PgbouncerError::Command {
                command: command.to_string(),
                message: crate::sqlconn::pg_message(&e),
            })
    }

    /// A `SHOW ...` result as rows of column name → value (NULL as "").
    async fn show(&self, what: &str) -> Result<Vec<BTreeMap<String, String>>, PgbouncerError> {
        let messages = self.run(&format!("SHOW {what}"), self.timeout).await?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .map(|r| {
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let v = r.try_get(i).ok().flatten().unwrap_or("");
                        (c.name().to_string(), v.to_string())
                    })
                    .collect()
            })
            .collect())
    }

    /// `PAUSE db`: returns once the database's running transactions ended (new queries
    /// wait in pgbouncer). Pausing a paused database is fine. When transactions do not end
    /// within `timeout`, this session is given up (later commands on it fail with
    /// [`PgbouncerError::Abandoned`]), the database is resumed on a new session (clients
    /// must not hang on a pause nobody finishes) and the error names the transactions.
    pub async fn pause(&self, db: &str, timeout: Duration) -> Result<(), PgbouncerError> {
        let command = format!("PAUSE {}", quote(db));
        match self.run(&command, timeout).await {
            Ok(_) => Ok(()),
            Err(PgbouncerError::Timeout { .. }) => {
                self.abandoned.store(true, Ordering::Relaxed);
                Err(self.undo_pause(db, timeout).await)
            }
            Err(PgbouncerError::Command { message, .. })
                if message.contains("already suspended/paused") =>
            {
                Err(PgbouncerError::PoolerPaused { db: db.to_string() })
            }
            Err(e) => Err(e),
        }
    }

    /// After a PAUSE timed out: on a new session, note what still runs, then RESUME.
    async fn undo_pause(&self, db: &str, timeout: Duration) -> PgbouncerError {
        let (running, resumed) = match Admin::connect(&self.dsn, self.timeout).await {
            Ok(other) => {
                let running = match other.running_transactions(db).await {
                    Ok(r) if r.is_empty() => vec!["(none left by now)".to_string()],
                    Ok(r) => r.iter().map(ToString::to_string).collect(),
                    Err(e) => vec![format!("(SHOW SERVERS failed: {e})")],
                };
                let resumed = match other.resume(db).await {
                    Ok(()) => "resumed it again".to_string(),
                    Err(e) => format!(
                        "could not RESUME it ({e}): its clients wait until RESUME \"{db}\" runs on the admin console"
                    ),
                };
                (running, resumed)
            }
            Err(e) => (
                vec![format!("(unknown: {e})")],
                format!("could not RESUME it ({e}): its clients wait until RESUME \"{db}\" runs on the admin console"),
            ),
        };
        PgbouncerError::PauseTimedOut {
            db: db.to_string(),
            timeout,
            running,
            resumed,
        }
    }

    /// `RESUME db`; resuming a database that is not paused is fine.
    pub async fn resume(&self, db: &str) -> Result<(), PgbouncerError> {
        match self
            .run(&format!("RESUME {}", quote(db)), self.timeout)
            .await
        {
            Err(PgbouncerError::Command { message, .. }) if message.contains("is not paused") => {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// `RELOAD`: pgbouncer rereads its config, the included databases file with it. It
    /// answers success even when the config failed to load: check with `SHOW DATABASES`.
    pub async fn reload(&self) -> Result<(), PgbouncerError> {
        self.run("RELOAD", self.timeout).await.map(|_| ())
    }

    /// `SHOW DATABASES`, read by column name.
    pub async fn databases(&self) -> Result<Vec<DatabaseRow>, PgbouncerError> {
        Ok(self
            .show("DATABASES")
            .await?
            .iter()
            .map(DatabaseRow::from_columns)
            .collect())
    }

    /// `SHOW VERSION`, e.g. `PgBouncer 1.18.0`.
    pub async fn version(&self) -> Result<String, PgbouncerError> {
        Ok(self
            .show("VERSION")
            .await?
            .first()
            .and_then(|r| r.get("version").cloned())
            .unwrap_or_default())
    }

    /// The transactions of `db` holding a server now (`SHOW SERVERS` + `SHOW CLIENTS`).
    pub async fn running_transactions(
        &self,
        db: &str,
    ) -> Result<Vec<RunningTransaction>, PgbouncerError> {
        let servers = self.show("SERVERS").await?;
        let clients = self.show("CLIENTS").await?;
        Ok(running_transactions_in(db, &servers, &clients))
    }
}

/// A database name as the admin console takes it.
fn quote(db: &str) -> String {
    format!("\"{}\"", db.replace('"', "\"\""))
}

/// The databases file for `entries` (database → connection string), in name order, with
/// its own `[databases]` header (see the module doc for where it may be included).
#[must_use]
pub fn render_databases_file(entries: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "; managed by pgmesh agent, do not edit: rewritten when an endpoint moves\n\
         ; (pgbouncer.ini includes it in [databases]: %include <this file>)\n\
         [databases]\n",
    );
    for (db, conn) in entries {
        out.push_str(&format!("{db} = {conn}\n"));
    }
    out
}

/// The entries of a databases file (the inverse of [`render_databases_file`]; comments,
/// section headers and `%` directives are skipped).
#[must_use]
pub fn parse_databases_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with([';', '#', '[', '%']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Replaces `path` with `text` atomically: a temporary file beside it, synced, given the
/// old file's mode and owner, renamed over it, and the directory synced.
pub async fn write_databases_file(path: &Path, text: &str) -> Result<(), PgbouncerError> {
    let err = |source| PgbouncerError::File {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("pgmesh-tmp");
    let written = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes()).await?;
        if let Ok(old) = tokio::fs::metadata(path).await {
            use std::os::unix::fs::MetadataExt as _;
            file.set_permissions(old.permissions()).await?;
            let new = file.metadata().await?;
            if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
                // Only root may give a file away; pgbouncer can read it by its mode then.
                if let Err(e) = std::os::unix::fs::chown(&tmp, Some(old.uid()), Some(old.gid())) {
                    tracing::debug!(path = %path.display(), "cannot keep the owner: {e}");
                }
            }
        }
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(err(e));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tokio::fs::File::open(dir)
        .await
        .map_err(err)?
        .sync_all()
        .await
        .map_err(err)
}

/// `host` and `port` of a `[databases]` connection string (defaults as pgbouncer's).
#[must_use]
pub fn host_port(conn: &str) -> (String, String) {
    let mut host = String::new();
    let mut port = "5432".to_string();
    for part in conn.split_whitespace() {
        if let Some(v) = part.strip_prefix("host=") {
            host = v.trim_matches('\'').to_string();
        } else if let Some(v) = part.strip_prefix("port=") {
            port = v.trim_matches('\'').to_string();
        }
    }
    (host, port)
}

/// Rewrites the databases file with `entries` when it differs and RELOADs; then (and
/// whenever pgbouncer shows something else) checks that pgbouncer shows each database at
/// its host and port. Returns whether the file changed.
pub async fn repoint(
    admin: &Admin,
    file: &Path,
    entries: &BTreeMap<String, String>,
) -> Result<bool, PgbouncerError> {
    let text = render_databases_file(entries);
    let current = tokio::fs::read_to_string(file).await.unwrap_or_default();
    let changed = current != text;
    if changed {
        write_databases_file(file, &text).await?;
        admin.reload().await?;
    }
    let mut wrong = misplaced(&admin.databases().await?, entries);
    if wrong.is_some() && !changed {
        // The file was right but pgbouncer had not read it (edited ini, missed RELOAD).
        admin.reload().await?;
        wrong = misplaced(&admin.databases().await?, entries);
    }
    match wrong {
        None => Ok(changed),
        Some((db, shows, wanted)) => Err(PgbouncerError::NotRepointed {
            db,
            shows,
            wanted,
            file: file.display().to_string(),
        }),
    }
}

/// The first entry pgbouncer does not show at its host and port: (db, shows, wanted).
fn misplaced(
    rows: &[DatabaseRow],
    entries: &BTreeMap<String, String>,
) -> Option<(String, String, String)> {
    entries.iter().find_map(|(db, conn)| {
        let (host, port) = host_port(conn);
        let wanted = format!("{host}:{port}");
        let shows = rows
            .iter()
            .find(|r| &r.name == db)
            .map(|r| format!("{}:{}", r.host, r.port));
        (shows.as_deref() != Some(wanted.as_str())).then(|| {
            let shows = shows.unwrap_or_else(|| "nothing (no such database)".into());
            (db.clone(), shows, wanted)
        })
    })
}

/// Points database `db` at `conn`, keeping the file's other lines (see [`repoint`]).
pub async fn repoint_one(
    admin: &Admin,
    file: &Path,
    db: &str,
    conn: &str,
) -> Result<bool, PgbouncerError> {
    let mut entries = match tokio::fs::read_to_string(file).await {
        Ok(text) => parse_databases_file(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(source) => {
            return Err(PgbouncerError::File {
                path: file.to_path_buf(),
                source,
            })
        }
    };
    entries.insert(db.to_string(), conn.to_string());
    repoint(admin, file, &entries).await
}

/// PAUSE `db`, repoint it at `new_conn`, RESUME; returns how long new transactions were
/// held (from sending PAUSE, which already holds them, to RESUME's answer). The database
/// is resumed whatever failed in between; see the module doc for what clients see.
pub async fn switch(
    cfg: &PgbouncerConfig,
    db: &str,
    new_conn: &str,
) -> Result<Duration, PgbouncerError> {
    if !cfg.endpoints.is_empty() && !cfg.endpoints.iter().any(|e| e == db) {
        return Err(PgbouncerError::NotServed {
            name: cfg.name.clone(),
            db: db.to_string(),
            endpoints: cfg.endpoints.clone(),
        });
    }
    let admin = Admin::connect(&cfg.admin, COMMAND_TIMEOUT).await?;
    let started = Instant::now();
    admin.pause(db, cfg.pause_timeout).await?;
    let moved = repoint_one(&admin, &cfg.databases_file, db, new_conn).await;
    let mut resumed = admin.resume(db).await;
    if resumed.is_err() {
        // The first session may be the problem: one more try on a new one.
        resumed = match Admin::connect(&cfg.admin, COMMAND_TIMEOUT).await {
            Ok(other) => other.resume(db).await,
            Err(e) => Err(e),
        };
    }
    let paused = started.elapsed();
    match (moved, resumed) {
        (Ok(_), Ok(())) => Ok(paused),
        (Err(e), Ok(())) => Err(e),
        (moved, Err(r)) => Err(PgbouncerError::LeftPaused {
            db: db.to_string(),
            cause: match moved {
                Ok(_) => format!("repointed {db:?} at {new_conn:?}"),
                Err(e) => e.to_string(),
            },
            resume: r.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[&str], values: &[&str]) -> BTreeMap<String, String> {
        cols.iter()
            .zip(values)
            .map(|(c, v)| (c.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_databases_file_has_a_header_and_one_line_per_endpoint_in_name_order() {
        let e = BTreeMap::from([
            ("app-us".into(), "host=10.0.2.5 port=5432 dbname=app".into()),
            ("app-eu".into(), "host=10.0.1.5 port=5432 dbname=app".into()),
        ]);
        let text = render_databases_file(&e);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("; managed by pgmesh agent, do not edit"));
        assert_eq!(lines[2], "[databases]");
        assert_eq!(lines[3], "app-eu = host=10.0.1.5 port=5432 dbname=app");
        assert_eq!(lines[4], "app-us = host=10.0.2.5 port=5432 dbname=app");
        assert_eq!(lines.len(), 5);
        assert_eq!(parse_databases_file(&text), e);
        assert!(render_databases_file(&BTreeMap::new()).ends_with("[databases]\n"));
    }

    #[test]
    fn parsing_a_databases_file_skips_comments_headers_and_directives() {
        let text = "# hand\n; note\n[databases]\n%include other.ini\n\n  a =  host=x port=1 \nb=host=y\nnot a line\n";
        assert_eq!(
            parse_databases_file(text),
            BTreeMap::from([
                ("a".into(), "host=x port=1".into()),
                ("b".into(), "host=y".into()),
            ])
        );
    }

    #[test]
    fn host_and_port_come_from_the_connection_string() {
        assert_eq!(
            host_port("host=10.0.1.5 port=6543 dbname=app"),
            ("10.0.1.5".to_string(), "6543".to_string())
        );
        assert_eq!(
            host_port("dbname=app host='db.internal'"),
            ("db.internal".to_string(), "5432".to_string())
        );
    }

    #[test]
    fn names_are_quoted_for_the_console() {
        assert_eq!(quote("app-eu"), "\"app-eu\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    /// Columns and values as pgbouncer 1.18.0 answers `SHOW DATABASES`.
    #[test]
    fn show_databases_rows_are_read_by_column_name() {
        let cols = [
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool",
            "pool_mode",
            "max_connections",
            "current_connections",
            "paused",
            "disabled",
        ];
        let app = row(
            &cols,
            &[
                "app-eu",
                "127.0.0.1",
                "55432",
                "postgres",
                "",
                "20",
                "0",
                "0",
                "",
                "0",
                "1",
                "1",
                "0",
            ],
        );
        assert_eq!(
            DatabaseRow::from_columns(&app),
            DatabaseRow {
                name: "app-eu".into(),
                host: "127.0.0.1".into(),
                port: "55432".into(),
                database: "postgres".into(),
                paused: true,
                disabled: false,
            }
        );
        // Another order (a later version) reads the same.
        let mut shuffled: Vec<&str> = cols.to_vec();
        shuffled.reverse();
        let mut values = [
            "app-eu",
            "127.0.0.1",
            "55432",
            "postgres",
            "",
            "20",
            "0",
            "0",
            "",
            "0",
            "1",
            "1",
            "0",
        ];
        values.reverse();
        assert_eq!(
            DatabaseRow::from_columns(&row(&shuffled, &values)),
            DatabaseRow::from_columns(&app)
        );
        let admin = row(
            &["name", "host", "port", "paused", "disabled"],
            &["pgbouncer", "", "6432", "0", "0"],
        );
        assert!(!DatabaseRow::from_columns(&admin).paused);
    }

    #[test]
    fn pgbouncer_shows_the_wrong_host_or_nothing() {
        let at = |name: &str, port: &str| DatabaseRow {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: port.into(),
            database: "postgres".into(),
            paused: false,
            disabled: false,
        };
        let want = BTreeMap::from([("app".into(), "host=127.0.0.1 port=2 dbname=postgres".into())]);
        assert_eq!(misplaced(&[at("app", "2")], &want), None);
        assert_eq!(
            misplaced(&[at("app", "1")], &want),
            Some(("app".into(), "127.0.0.1:1".into(), "127.0.0.1:2".into()))
        );
        assert_eq!(
            misplaced(&[at("other", "2")], &want).map(|m| m.1),
            Some("nothing (no such database)".into())
        );
    }

    /// `SHOW SERVERS` / `SHOW CLIENTS` columns of 1.18.0 (type, user, database, state,
    /// addr, port, local_addr, local_port, connect_time, request_time, wait, wait_us,
    /// close_needed, ptr, link, remote_pid, tls, application_name).
    #[test]
    fn running_transactions_are_active_servers_of_the_database_with_their_clients() {
        let cols = [
            "type",
            "user",
            "database",
            "state",
            "addr",
            "port",
            "request_time",
            "ptr",
            "link",
            "remote_pid",
            "application_name",
        ];
        let servers = vec![
            row(
                &cols,
                &[
                    "S",
                    "app",
                    "app",
                    "active",
                    "10.0.1.5",
                    "5432",
                    "2026-12-04 14:27:45 UTC",
                    "0xs1",
                    "0xc1",
                    "17583",
                    "billing",
                ],
            ),
            row(
                &cols,
                &[
                    "S", "app", "app", "idle", "10.0.1.5", "5432", "", "0xs2", "", "17584", "",
                ],
            ),
            row(
                &cols,
                &[
                    "S", "app", "other", "active", "10.0.1.5", "5432", "", "0xs3", "0xc3", "17585",
                    "",
                ],
            ),
        ];
        let clients = vec![row(
            &cols,
            &[
                "C", "app", "app", "active", "10.0.9.9", "40000", "", "0xc1", "0xs1", "0",
                "billing",
            ],
        )];
        let running = running_transactions_in("app", &servers, &clients);
        assert_eq!(running.len(), 1);
        assert_eq!(
            running[0].to_string(),
            "backend pid 17583 on 10.0.1.5:5432 (user app, last request 2026-12-04 14:27:45 UTC, client 10.0.9.9:40000, application billing)"
        );
        assert!(running_transactions_in("nope", &servers, &clients).is_empty());
    }

    #[test]
    fn a_pause_timeout_says_what_still_runs_and_what_happened() {
        let e = PgbouncerError::PauseTimedOut {
            db: "app".into(),
            timeout: Duration::from_millis(300),
            running: vec!["backend pid 7 on h:1 (user u, last request t)".into()],
            resumed: "resumed it again".into(),
        };
        let m = e.to_string();
        assert!(
            m.starts_with(
                "PAUSE \"app\": 1 running transaction(s) did not end within 300ms: backend pid 7"
            ),
            "{m}"
        );
        assert!(m.contains("resumed it again. Raise pause_timeout"), "{m}");
        assert!(!e.needs_operator());
        assert!(PgbouncerError::PoolerPaused { db: "app".into() }.needs_operator());
    }

    #[tokio::test]
    async fn the_databases_file_is_replaced_whole_keeping_its_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgmesh-databases.ini");
        write_databases_file(&path, "a = host=x\n").await.unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_databases_file(&path, "b = host=y\n").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b = host=y\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }
}
