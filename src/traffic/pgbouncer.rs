//! pgbouncer through its admin console: PAUSE an endpoint's database (waits until its
//! running transactions end, then holds new queries), repoint it at the new owner, RESUME.
//! Clients in transaction pooling see a pause, not an error.
//!
//! pgbouncer 1.18 has no admin command that changes a database's host, so the agent owns
//! a small file with the endpoints' `[databases]` lines, which the user's `pgbouncer.ini`
//! includes inside its `[databases]` section (checked with 1.18):
//!
//! ```ini
//! [databases]
//! %include /etc/pgbouncer/pgmesh-databases.ini
//! ```
//!
//! Repointing rewrites that file (atomically), sends `RELOAD` and checks with
//! `SHOW DATABASES` that the database now points at the new host and port. At `RELOAD`
//! pgbouncer closes server connections to the old host once they are released; at
//! `RESUME` it opens new ones to the new host. The admin console speaks only the simple
//! query protocol; names are double-quoted (`app-eu` is not a plain identifier).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

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
    /// pgbouncer database names = the endpoints it serves.
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
    #[error("after RELOAD, pgbouncer shows database {db:?} at {shows} instead of {wanted}: is {file} %include'd in the [databases] section of pgbouncer.ini?")]
    NotRepointed {
        db: String,
        shows: String,
        wanted: String,
        file: String,
    },
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

/// A session on the admin console.
pub struct Admin {
    client: Client,
    dsn: String,
    timeout: Duration,
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
        })
    }

    async fn run(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Vec<SimpleQueryMessage>, PgbouncerError> {
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

    /// `PAUSE db`: returns once the database's running transactions ended (new queries
    /// wait in pgbouncer). Pausing a paused database is fine. When transactions do not end
    /// within `timeout`, the pause is undone on a new session (clients must not hang on a
    /// pause nobody finishes) and the error says so.
    pub async fn pause(&self, db: &str, timeout: Duration) -> Result<(), PgbouncerError> {
        let command = format!("PAUSE {}", quote(db));
        match self.run(&command, timeout).await {
            Ok(_) => Ok(()),
            Err(PgbouncerError::Timeout { .. }) => {
                // The pause stays in force after this session goes: lift it.
                let undone = match Admin::connect(&self.dsn, self.timeout).await {
                    Ok(other) => other.resume(db).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                Err(PgbouncerError::Command {
                    command,
                    message: format!(
                        "running transactions did not end within {timeout:?} (raise pause_timeout, or find long transactions with SHOW SERVERS); {}",
                        match undone {
                            Ok(()) => "resumed again".to_string(),
                            Err(e) => format!("could not resume it: {e}"),
                        }
                    ),
                })
            }
            Err(e) => Err(e),
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

    /// `RELOAD`: pgbouncer rereads its config, the included databases file with it.
    pub async fn reload(&self) -> Result<(), PgbouncerError> {
        self.run("RELOAD", self.timeout).await.map(|_| ())
    }

    /// `SHOW DATABASES`, read by column name.
    pub async fn databases(&self) -> Result<Vec<DatabaseRow>, PgbouncerError> {
        let rows = self.run("SHOW DATABASES", self.timeout).await?;
        Ok(rows
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .map(|r| {
                let get = |c: &str| r.try_get(c).ok().flatten().unwrap_or("").to_string();
                DatabaseRow {
                    name: get("name"),
                    host: get("host"),
                    port: get("port"),
                    database: get("database"),
                    paused: get("paused") == "1",
                    disabled: get("disabled") == "1",
                }
            })
            .collect())
    }
}

/// A database name as the admin console takes it.
fn quote(db: &str) -> String {
    format!("\"{}\"", db.replace('"', "\"\""))
}

/// The databases file for `entries` (database → connection string), in name order.
#[must_use]
pub fn render_databases_file(entries: &BTreeMap<String, String>) -> String {
    let mut out =
        String::from("; managed by pgmesh agent: rewritten when an endpoint moves, do not edit\n");
    for (db, conn) in entries {
        out.push_str(&format!("{db} = {conn}\n"));
    }
    out
}

/// Replaces `path` with `text` atomically: a temporary file beside it, synced, renamed.
pub async fn write_databases_file(path: &Path, text: &str) -> Result<(), PgbouncerError> {
    let err = |source| PgbouncerError::File {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("pgmesh-tmp");
    let file = tokio::fs::File::create(&tmp).await.map_err(err)?;
    let mut file = file;
    tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes())
        .await
        .map_err(err)?;
    file.sync_all().await.map_err(err)?;
    drop(file);
    tokio::fs::rename(&tmp, path).await.map_err(err)
}

/// `host` and `port` of a `[databases]` connection string (defaults as pgbouncer's).
#[must_use]
pub fn host_port(conn: &str) -> (String, String) {
    let mut host = String::new();
    let mut port = "5432".to_string();
    for part in conn.split_whitespace() {
        if let Some(v) = part.strip_prefix("host=") {
            host = v.to_string();
        } else if let Some(v) = part.strip_prefix("port=") {
            port = v.to_string();
        }
    }
    (host, port)
}

/// Rewrites the databases file with `entries` when it differs, RELOADs and checks that
/// pgbouncer shows each database at its new host and port.
pub async fn repoint(
    admin: &Admin,
    file: &Path,
    entries: &BTreeMap<String, String>,
) -> Result<bool, PgbouncerError> {
    let text = render_databases_file(entries);
    let current = tokio::fs::read_to_string(file).await.unwrap_or_default();
    if current == text {
        return Ok(false);
    }
    write_databases_file(file, &text).await?;
    admin.reload().await?;
    let rows = admin.databases().await?;
    for (db, conn) in entries {
        let (host, port) = host_port(conn);
        let shows = rows
            .iter()
            .find(|r| &r.name == db)
            .map(|r| format!("{}:{}", r.host, r.port));
        if shows.as_deref() != Some(&format!("{host}:{port}")) {
            return Err(PgbouncerError::NotRepointed {
                db: db.clone(),
                shows: shows.unwrap_or_else(|| "nothing (no such database)".into()),
                wanted: format!("{host}:{port}"),
                file: file.display().to_string(),
            });
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_databases_file_has_one_line_per_endpoint_in_name_order() {
        let mut e = BTreeMap::new();
        e.insert(
            "app-us".to_string(),
            "host=10.0.2.5 port=5432 dbname=app".to_string(),
        );
        e.insert(
            "app-eu".to_string(),
            "host=10.0.1.5 port=5432 dbname=app".to_string(),
        );
        let text = render_databases_file(&e);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("; managed by pgmesh"));
        assert_eq!(lines[1], "app-eu = host=10.0.1.5 port=5432 dbname=app");
        assert_eq!(lines[2], "app-us = host=10.0.2.5 port=5432 dbname=app");
    }

    #[test]
    fn host_and_port_come_from_the_connection_string() {
        assert_eq!(
            host_port("host=10.0.1.5 port=6543 dbname=app"),
            ("10.0.1.5".to_string(), "6543".to_string())
        );
        assert_eq!(
            host_port("dbname=app host=db.internal"),
            ("db.internal".to_string(), "5432".to_string())
        );
    }

    #[test]
    fn names_are_quoted_for_the_console() {
        assert_eq!(quote("app-eu"), "\"app-eu\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
