//! Turning a node's DSN into a driver config, with the password found the libpq way.
//!
//! tokio-postgres reads neither `PGPASSWORD` nor `~/.pgpass`, so the lookup order libpq
//! users expect is done here: a password in the DSN, else `password_file` from the config,
//! else `PGPASSWORD`, else the first matching line of `PGPASSFILE` / `~/.pgpass`.

use super::{ConfigError, NodeConfig};
use std::path::PathBuf;
use std::str::FromStr;
use tokio_postgres::config::Host;

impl NodeConfig {
    /// The driver config for this node, password resolved. Errors never contain the DSN.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        let mut cfg =
            tokio_postgres::Config::from_str(self.dsn.expose()).map_err(|e| ConfigError::Dsn {
                node: self.name.clone(),
                message: e.to_string(),
            })?;
        if cfg.get_application_name().is_none() {
            cfg.application_name("pgmesh");
        }
        if cfg.get_password().is_some() {
            return Ok(cfg);
        }
        if let Some(path) = &self.password_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
                    node: self.name.clone(),
                    path: path.clone(),
                    source,
                })?;
            cfg.password(text.trim_end_matches(['\n', '\r']));
            return Ok(cfg);
        }
        if let Ok(pw) = std::env::var("PGPASSWORD") {
            cfg.password(pw);
            return Ok(cfg);
        }
        let pgpass = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
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
        Ok(cfg)
    }
}
