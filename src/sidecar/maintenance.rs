//! Upkeep of the local node while the sidecar runs, beside the peer directions: pruning
//! the conflict ledger to `[ledger]` (retention and max_rows) and the tombstones every
//! peer is past ([`super::tombstone_gc`]), once at start and then every `prune_interval`.
//!
//! Each pass opens its own short session (application_name `pgmesh maintenance`), so it
//! never shares a connection or a transaction with the apply path, and a failure (node
//! down, schema not set up yet) is logged and retried at the next pass without touching
//! replication.

use tokio::sync::watch;

use std::sync::Arc;

use crate::config::LedgerConfig;
use crate::ledger::{prune, PRUNE_BATCH_ROWS};
use crate::observe::DirectionState;
use crate::sqlconn::{connect_sql, SqlConfig};

/// Session settings of a pass: a delete waiting on a lock gives up rather than queue
/// behind (and in front of) other work; the next pass tries again.
const SESSION_SETUP: &str =
    "SET application_name = 'pgmesh maintenance'; SET lock_timeout = '5s'; SET statement_timeout = '5min'";

/// Runs the passes until `stop` flips.
pub async fn run_maintenance(
    node: String,
    local: SqlConfig,
    ledger: LedgerConfig,
    directions: Vec<Arc<DirectionState>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = async {
                prune_pass(&node, &local, &ledger).await;
                tombstone_pass(&node, &local, &ledger, &directions).await;
            } => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(ledger.prune_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One pruning pass; logs what it deleted or why it could not.
async fn prune_pass(node: &str, local: &SqlConfig, ledger: &LedgerConfig) {
    let started = std::time::Instant::now();
    let (client, task) = match connect_sql(local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%node, error = %e, "ledger pruning skipped: cannot connect to the local node; retrying at the next pass");
            return;
        }
    };
    let result = match client.batch_execute(SESSION_SETUP).await {
        Ok(()) => prune(&client, node, ledger, PRUNE_BATCH_ROWS).await,
        Err(e) => Err(crate::ledger::LedgerError::Query {
            node: node.to_string(),
            what: "setting up the maintenance session".into(),
            message: crate::sqlconn::pg_message(&e),
        }),
    };
    drop(client);
    task.abort();
    match result {
        Ok(o) if o.skipped_busy => {
            tracing::debug!(%node, "ledger pruning skipped: another pruner holds the lock");
        }
        Ok(o) if o.total() > 0 => tracing::info!(
            %node,
            by_age = o.by_age,
            by_count = o.by_count,
            retention = %crate::config::format_duration(ledger.retention),
            max_rows = ledger.max_rows,
            took = ?started.elapsed(),
            "pruned the conflict ledger"
        ),
        Ok(_) => {
            tracing::debug!(%node, took = ?started.elapsed(), "conflict ledger within its limits")
        }
        Err(e) => {
            tracing::warn!(%node, error = %e, "ledger pruning failed; retrying at the next pass")
        }
    }
}

/// One tombstone pass, when every direction into this node knows how far its peer is
/// applied (none before the first batch or idle keepalive; none for a direction that is
/// down, as its horizon stays where it was).
async fn tombstone_pass(
    node: &str,
    local: &SqlConfig,
    ledger: &LedgerConfig,
    directions: &[Arc<DirectionState>],
) {
    let horizons: Option<Vec<_>> = directions.iter().map(|d| d.horizon()).collect();
    let Some(horizon) = horizons.and_then(|h| h.into_iter().min()) else {
        tracing::debug!(%node, "tombstone pruning waits: not every peer direction has applied a batch yet");
        return;
    };
    let (client, task) = match connect_sql(local).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%node, error = %e, "tombstone pruning skipped: cannot connect to the local node");
            return;
        }
    };
    let result = match client.batch_execute(SESSION_SETUP).await {
        Ok(()) => {
            super::tombstone_gc::prune_tombstones(&client, horizon, ledger.tombstone_retention)
                .await
        }
        Err(e) => Err(e),
    };
    drop(client);
    task.abort();
    match result {
        Ok(0) => tracing::debug!(%node, "no tombstone to prune"),
        Ok(n) => {
            tracing::info!(%node, pruned = n, horizon = %crate::apply::ledger::ts_text(horizon), "pruned tombstones every peer is past")
        }
        Err(e) => {
            tracing::warn!(%node, error = %crate::sqlconn::pg_message(&e), "tombstone pruning failed; retrying at the next pass")
        }
    }
}
