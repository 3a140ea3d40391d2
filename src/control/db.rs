//! The agent's SQL sessions: one to the local primary (probe, fence, switchover checks),
//! one to each peer (our apply lag as its slot sees it). Each is opened lazily, with a
//! short timeout, and dropped on the first error so the next tick reconnects: a dead
//! primary must cost a probe, never block the loop.

use std::time::Duration;

use tokio_postgres::Client;

use crate::sqlconn::{connect_sql, pg_message, SqlConfig};
use crate::Lsn;

/// A session that reconnects on demand.
pub struct Conn {
    cfg: SqlConfig,
    timeout: Duration,
    session: Option<(Client, tokio::task::JoinHandle<()>)>,
    /// Why the last connect failed, for the health detail.
    pub last_error: Option<String>,
}

impl Conn {
    #[must_use]
    pub fn new(cfg: SqlConfig, timeout: Duration) -> Conn {
        let mut cfg = cfg.named("pgmesh agent");
        cfg.pg.connect_timeout(timeout);
        Conn {
            cfg,
            timeout,
            session: None,
            last_error: None,
        }
    }

    /// The client, connecting first when needed; `None` when the node is unreachable.
    pub async fn get(&mut self) -> Option<&Client> {
        if self.session.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.drop_session();
        }
        if self.session.is_none() {
            match tokio::time::timeout(self.timeout, connect_sql(&self.cfg)).await {
                Ok(Ok(s)) => {
                    self.session = Some(s);
                    self.last_error = None;
                }
                Ok(Err(e)) => self.last_error = Some(e.to_string()),
                Err(_) => {
                    self.last_error = Some(format!("no connection within {:?}", self.timeout))
                }
            }
        }
        self.session.as_ref().map(|(c, _)| c)
    }

    /// Forgets the session after an error (the next `get` reconnects).
    pub fn drop_session(&mut self) {
        if let Some((_, task)) = self.session.take() {
            task.abort();
        }
    }
}

/// Endpoints an operator forced onto this region (`pgmesh.forced`), with when (Unix ms).
pub async fn forced(client: &Client) -> Result<Vec<(String, i64)>, String> {
    client
        .query(
            "SELECT endpoint, (extract(epoch FROM at) * 1000)::int8 FROM pgmesh.forced ORDER BY 1",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .map_err(|e| pg_message(&e))
}

/// Removes a forced endpoint once etcd records it as ours.
pub async fn clear_forced(client: &Client, endpoint: &str) -> Result<(), String> {
    client
        .execute(
            "DELETE FROM pgmesh.forced WHERE endpoint = $1",
            &[&endpoint],
        )
        .await
        .map(|_| ())
        .map_err(|e| pg_message(&e))
}

/// The local WAL insert position.
pub async fn wal_lsn(client: &Client) -> Result<Lsn, String> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| pg_message(&e))?;
    let text: String = row.get(0);
    text.parse().map_err(|_| format!("unreadable LSN {text:?}"))
}

/// What `peer`'s sidecar has confirmed on the slot it reads here (`pgmesh_<peer>`).
pub async fn confirmed_by(client: &Client, peer: &str) -> Result<Option<Lsn>, String> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&crate::config::names::slot_name(peer)],
        )
        .await
        .map_err(|e| pg_message(&e))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|t| t.parse().ok()))
}

/// Whether `peer`'s sidecar is streaming from this node now (its slot `pgmesh_<peer>` is
/// active), and what it confirmed.
pub async fn streaming_to(client: &Client, peer: &str) -> Result<(bool, Option<Lsn>), String> {
    let row = client
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&crate::config::names::slot_name(peer)],
        )
        .await
        .map_err(|e| pg_message(&e))?;
    Ok(match row {
        Some(r) => (
            r.get::<_, bool>(0),
            r.get::<_, Option<String>>(1).and_then(|t| t.parse().ok()),
        ),
        None => (false, None),
    })
}

/// How far this node applied `peer`'s WAL (its origin's durable progress).
pub async fn applied_from(client: &Client, peer: &str) -> Result<Option<Lsn>, String> {
    let row = client
        .query_one(
            "SELECT pg_replication_origin_progress($1, true)::text",
            &[&crate::config::names::origin_name(peer)],
        )
        .await
        .map_err(|e| pg_message(&e))?;
    Ok(row.get::<_, Option<String>>(0).and_then(|t| t.parse().ok()))
}
