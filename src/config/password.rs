//! Turning a node's DSN into a SQL connection config, with the password found the libpq
//! way.
//!
//! tokio-postgres reads neither `PGPASSWORD` nor `~/.pgpass`, so the lookup order libpq
//! users expect is done here: a password in the DSN, else `password_file` from the config,
//! else `PGPASSWORD`, else the first matching line of the DSN's `passfile`, `PGPASSFILE`
//! or `~/.pgpass`.

use super::{ConfigError, NodeConfig};
use crate::source::{Password, SourceConfig};
use crate::sqlconn::{SqlConfig, SqlConnectError};
use std::path::PathBuf;
use tokio_postgres::config::Host;

impl NodeConfig {
    /// The SQL connection config for this node (sslmode and sslrootcert included),
    /// password resolved. Errors never contain the DSN.
    pub fn sql_config(&self) -> Result<SqlConfig, ConfigError> {
        let mut sql = SqlConfig::from_dsn(&self.name, self.dsn.expose()).map_err(|e| match e {
            SqlConnectError::Config { node, message } => ConfigError::Dsn { node, message },
            other => ConfigError::Dsn {
                node: self.name.clone(),
                message: other.to_string(),
            },
        })?;
        let cfg = &mut sql.pg;
        if cfg.get_password().is_some() {
            return Ok(sql);
        }
        if let Some(path) = &self.password_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
                    node: self.name.clone(),
                    path: path.clone(),
                    source,
                })?;
            cfg.password(text.trim_end_matches(['\n', '\r']));
            return Ok(sql);
        }
        if let Ok(pw) = std::env::var("PGPASSWORD") {
            cfg.password(pw);
            return Ok(sql);
        }
        let pgpass = sql
            .passfile
            .clone()
            .or_else(|| std::env::var_os("PGPASSFILE").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
        if let Some(text) = pgpass.and_then(|p| std::fs::read_to_string(p).ok()) {
            let host = match cfg.get_hosts().first() {
                Some(Host::Tcp(h)) => h.clone(),
                _ => "localhost".to_string(),
            };
            let port = cfg.get_ports().first().copied().unwrap_or(5432);
            let user = cfg.get_user().unwrap_or_default().to_string();
            let db = cfg.get_dbname().unwrap_or(&user).to_string();
            if let Some(pw) = crate::source::config::pgpass_lookup(&text, &host, port, &db, &user) {
                cfg.password(pw);
            }
        }
        Ok(sql)
    }

    /// The replication (walsender) connection config for this node, with the password
    /// found by the same lookup as [`NodeConfig::sql_config`].
    pub fn source_config(&self) -> Result<SourceConfig, ConfigError> {
        let mut source =
            SourceConfig::from_dsn(self.dsn.expose()).map_err(|e| ConfigError::Dsn {
                node: self.name.clone(),
                message: e.to_string(),
            })?;
        if source.password.is_none() {
            if let Some(pw) = self.sql_config()?.pg.get_password() {
                source.password = Some(Password::new(String::from_utf8_lossy(pw).into_owned()));
            }
        }
        Ok(source)
    }
}
