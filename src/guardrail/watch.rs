//! The guardrail's loop in the sidecar: check the slots on this node every
//! `check_interval`, report, and act by policy (see the module doc of [`super`]).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_postgres::Client;

use super::record::{drop_slot, is_missing_table, read_slots};
use super::{assess, describe, human_bytes, Action, GuardrailStatus, Level, SlotReport};
use crate::config::names::slot_name;
use crate::config::GuardrailConfig;
use crate::observe::metrics;
use crate::sqlconn::{connect_sql, pg_message, SqlConfig, SqlConnectError};

/// Why one check did not complete (logged; the next check tries again).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardrailError {
    #[error(transparent)]
    Connect(#[from] SqlConnectError),
    #[error("reading pg_replication_slots on node {node}: {message}")]
    Read { node: String, message: String },
    #[error("dropping slot {slot} on node {node}: {message}")]
    Drop {
        node: String,
        slot: String,
        message: String,
    },
}

/// The slots of one node to watch.
pub struct Guardrail {
    pub node: String,
    /// The nodes that read a slot here (`pgmesh_<peer>`).
    pub peers: Vec<String>,
    pub local: SqlConfig,
    pub cfg: GuardrailConfig,
    pub status: Arc<GuardrailStatus>,
}

struct Session {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks until `stop` flips.
pub async fn run(g: Guardrail, mut stop: watch::Receiver<bool>) {
    for p in &g.peers {
        metrics::register_slot(p);
    }
    let mut session: Option<Session> = None;
    let mut memory = Memory::default();
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(g.cfg.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match check(&g, &mut session, &mut memory).await {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!(node = %g.node, "WAL guardrail checks work again");
                }
            }
            Err(e) => {
                session = None;
                let msg = e.to_string();
                // Once per distinct failure, not every few seconds.
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(node = %g.node, error = %msg, "WAL guardrail check failed; retrying at the next interval");
                }
                g.status.set_error(Some(msg.clone()));
                last_error = Some(msg);
            }
        }
    }
}

/// What the loop keeps between checks, by peer.
#[derive(Default)]
struct Memory {
    /// Level of the last check: changes are logged, not every check.
    levels: HashMap<String, Level>,
    /// The message of a drop this process made, shown while the slot stays missing.
    dropped: HashMap<String, String>,
}

async fn check(
    g: &Guardrail,
    session: &mut Option<Session>,
    memory: &mut Memory,
) -> Result<(), GuardrailError> {
    if session.is_none() {
        let (client, task) = connect_sql(&g.local.named("pgmesh guardrail")).await?;
        *session = Some(Session { client, task });
    }
    let Some(Session { client, .. }) = session.as_ref() else {
        return Ok(());
    };
    let slots: Vec<String> = g.peers.iter().map(|p| slot_name(p)).collect();
    let facts = read_slots(client, &slots)
        .await
        .map_err(|e| GuardrailError::Read {
            node: g.node.clone(),
            message: pg_message(&e),
        })?;
    let mut reports = Vec::with_capacity(g.peers.len());
    for (peer, slot) in g.peers.iter().zip(&slots) {
        let mut f = facts.iter().find(|f| &f.slot == slot).cloned();
        let (mut level, action) = assess(f.as_ref(), &g.cfg);
        let mut message = describe(&g.node, peer, f.as_ref(), level, &g.cfg);
        if f.is_some() {
            memory.dropped.remove(peer);
        } else if let Some(m) = memory.dropped.get(peer) {
            message = Some(m.clone());
        }
        if action == Action::DropSlot {
            if let Some(facts) = f.as_ref() {
                match drop_slot(client, facts, peer, g.cfg.limit_retained.0).await {
                    Ok(true) => {
                        metrics::slot_dropped(peer);
                        let m = format!(
                            "dropped slot {slot} on node {node}: it retained {} of WAL, above limit_retained {} (policy drop_slot); node {peer} misses every change of node {node} from now on until the direction is re-synced: run `pgmesh setup`, restart node {peer}'s sidecar, then `pgmesh verify` and `pgmesh repair`",
                            human_bytes(facts.retained.unwrap_or(0)),
                            human_bytes(g.cfg.limit_retained.0),
                            node = g.node,
                        );
                        tracing::error!(node = %g.node, %peer, %slot, "{m}");
                        level = Level::Missing;
                        memory.dropped.insert(peer.clone(), m.clone());
                        message = Some(m);
                        f = None;
                        // Logged above with its own message.
                        memory.levels.insert(peer.clone(), level);
                    }
                    // It became active meanwhile: kept; the next check looks again.
                    Ok(false) => {}
                    Err(e) if is_missing_table(&e) => {
                        let m = format!(
                            "slot {slot} on node {node} is above limit_retained but was NOT dropped: table pgmesh.guardrail_drops is missing on node {node}, so the drop could not be recorded; run `pgmesh setup` to update the pgmesh schema",
                            node = g.node
                        );
                        tracing::error!(node = %g.node, %peer, %slot, "{m}");
                        message = Some(m);
                    }
                    Err(e) => {
                        return Err(GuardrailError::Drop {
                            node: g.node.clone(),
                            slot: slot.clone(),
                            message: pg_message(&e),
                        })
                    }
                }
            }
        }
        let before = memory.levels.insert(peer.clone(), level);
        if before != Some(level) {
            log_change(&g.node, peer, before, level, message.as_deref());
        }
        metrics::slot_checked(
            peer,
            f.as_ref().and_then(|f| f.retained),
            f.as_ref().and_then(|f| f.wal_status.as_deref()),
            f.as_ref().is_some_and(|f| f.active),
            level.metric(),
        );
        reports.push(SlotReport {
            peer: peer.clone(),
            slot: slot.clone(),
            level,
            retained_bytes: f.as_ref().and_then(|f| f.retained),
            wal_status: f.as_ref().and_then(|f| f.wal_status.clone()),
            active: f.as_ref().is_some_and(|f| f.active),
            message,
        });
    }
    g.status.set(reports);
    Ok(())
}

fn log_change(node: &str, peer: &str, before: Option<Level>, now: Level, message: Option<&str>) {
    let m = message.unwrap_or("");
    match now {
        Level::Ok if before.is_some() => {
            tracing::info!(%node, %peer, "WAL guardrail: slot {} back under warn_retained", slot_name(peer));
        }
        Level::Ok => {}
        Level::Warn | Level::Missing => tracing::warn!(%node, %peer, "WAL guardrail: {m}"),
        Level::OverLimit => tracing::error!(%node, %peer, "WAL guardrail: {m}"),
    }
}
