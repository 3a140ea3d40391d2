//! Opening a plain (non-replication) session to a node.

use super::error::{pg_message, SetupError};
use crate::config::NodeConfig;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

/// How long to wait for a node before calling it unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `node` and drives the connection on a background task.
///
/// TLS is not wired yet (a later issue): `sslmode=require` in the DSN fails to connect.
pub async fn connect(node: &NodeConfig) -> Result<Client, SetupError> {
    let mut cfg = node.pg_config()?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, conn) = cfg.connect(NoTls).await.map_err(|e| SetupError::Connect {
        node: node.name.clone(),
        target: target(&cfg),
        message: pg_message(&e),
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %pg_message(&e), "setup connection closed");
        }
    });
    Ok(client)
}

/// `host:port/dbname` of a driver config: enough to find the node, no secret.
#[must_use]
pub fn target(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg.get_dbname().or(cfg.get_user()).unwrap_or("?");
    format!("{host}:{port}/{db}")
}
