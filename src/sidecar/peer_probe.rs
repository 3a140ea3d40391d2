//! What a direction asks its peer over plain SQL, beside the stream: the peer's current
//! WAL position (for the lag in bytes, see [`crate::observe::state`]), and, when the slot
//! is missing, whether the peer's WAL guardrail dropped it (then the direction stops for
//! good with the way to recover, instead of retrying forever).

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use super::link::{PeerLink, SidecarError};
use crate::guardrail::human_bytes;
use crate::guardrail::record::last_drop;
use crate::observe::DirectionState;
use crate::source::SourceError;
use crate::sqlconn::{connect_sql, pg_message, SqlConfig};
use crate::Lsn;

/// How often the peer's WAL position is read.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Wait after a failed connection before the next attempt.
const PROBE_RETRY: Duration = Duration::from_secs(5);

/// Stops the probe when the direction ends.
pub struct ProbeGuard(tokio::task::JoinHandle<()>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the peer's WAL position every second into `state` for as long as the guard
/// lives; a peer that cannot be reached leaves the last value (the stream's own retries
/// report the failure).
#[must_use]
pub fn spawn_wal_probe(link: &PeerLink, state: Arc<DirectionState>) -> ProbeGuard {
    let cfg = link.peer_sql.clone();
    ProbeGuard(tokio::spawn(
        probe(cfg, link.slot.clone(), state).in_current_span(),
    ))
}

async fn probe(cfg: SqlConfig, slot: String, state: Arc<DirectionState>) {
    let mut session = None;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if session.is_none() {
            match connect_sql(&cfg.named("pgmesh lag probe")).await {
                Ok(s) => session = Some(AbortOnDrop::new(s)),
                Err(e) => {
                    tracing::debug!(error = %e, "lag probe cannot reach the peer");
                    tokio::time::sleep(PROBE_RETRY).await;
                    continue;
                }
            }
        }
        let Some(s) = session.as_ref() else { continue };
        match s
            .client
            .query_one(
                "SELECT pg_current_wal_lsn()::text, \
                        (SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                          WHERE slot_name = $1 AND database = current_database())",
                &[&slot],
            )
            .await
        {
            Ok(row) => {
                let confirmed = row
                    .get::<_, Option<String>>(1)
                    .and_then(|c| c.parse::<Lsn>().ok());
                if let Ok(lsn) = row.get::<_, String>(0).parse::<Lsn>() {
                    state.peer_wal(lsn, confirmed);
                }
            }
            Err(e) => {
                tracing::debug!(error = %pg_message(&e), "lag probe failed");
                session = None;
            }
        }
    }
}

struct AbortOnDrop {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl AbortOnDrop {
    fn new((client, task): crate::sqlconn::SqlSession) -> AbortOnDrop {
        AbortOnDrop { client, task }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When `e` says the slot is missing on the peer and the peer recorded that its WAL
/// guardrail dropped it, the error to stop with.
pub async fn dropped_by_guardrail(link: &PeerLink, e: &SidecarError) -> Option<SidecarError> {
    if !matches!(e, SidecarError::Source(SourceError::SlotMissing { .. })) {
        return None;
    }
    let s = AbortOnDrop::new(
        connect_sql(&link.peer_sql.named("pgmesh guardrail check"))
            .await
            .ok()?,
    );
    let record = match last_drop(&s.client, &link.slot).await {
        Ok(r) => r?,
        Err(err) => {
            tracing::debug!(error = %pg_message(&err), "cannot read pgmesh.guardrail_drops on the peer");
            return None;
        }
    };
    Some(SidecarError::SlotDroppedByGuardrail {
        local: link.local_node.clone(),
        peer: link.peer.clone(),
        slot: link.slot.clone(),
        dropped_at: record.dropped_at,
        retained: record.retained_bytes.map_or_else(
            || "?".into(),
            |b| human_bytes(u64::try_from(b).unwrap_or(0)),
        ),
        limit: human_bytes(u64::try_from(record.limit_bytes).unwrap_or(0)),
    })
}
