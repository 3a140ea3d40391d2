//! Opening a plain (non-replication) session to a node, TLS per the node's dsn.

use super::error::SetupError;
use crate::config::NodeConfig;
use tokio_postgres::Client;

/// Connects to `node`; the connection runs on a background task that ends when the
/// client is dropped.
pub async fn connect(node: &NodeConfig) -> Result<Client, SetupError> {
    let cfg = node.sql_config()?;
    let (client, _task) = crate::sqlconn::connect_sql(&cfg).await?;
    Ok(client)
}
