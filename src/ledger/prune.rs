//! Keeping the ledger bounded: records older than `[ledger].retention` go, then the
//! oldest beyond `[ledger].max_rows`.
//!
//! Deletes run in batches of [`PRUNE_BATCH_ROWS`], each its own short transaction (row
//! locks on the deleted records only; writers of new records never wait), so pruning a
//! large backlog never holds a long lock or a long transaction. The deletes are not
//! replicated: `pgmesh.conflicts` is not in the publication. One pruner per node at a
//! time (an advisory lock): a second one finds it taken and skips the pass.

use serde::Serialize;
use tokio_postgres::Client;

use super::{ensure_ledger, query_err, LedgerError};
use crate::config::LedgerConfig;

/// Records deleted per statement.
pub const PRUNE_BATCH_ROWS: i64 = 5_000;

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('pgmesh ledger prune'))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('pgmesh ledger prune'))";

/// Deletes one batch older than `$1` microseconds, oldest first (index on detected_at).
const DELETE_OLD: &str = "DELETE FROM pgmesh.conflicts WHERE id IN (
    SELECT id FROM pgmesh.conflicts
     WHERE detected_at < now() - $1::int8 * interval '1 microsecond'
     ORDER BY detected_at LIMIT $2::int8)";

/// Deletes one batch with ids up to `$1`, lowest first.
const DELETE_UPTO: &str = "DELETE FROM pgmesh.conflicts WHERE id IN (
    SELECT id FROM pgmesh.conflicts WHERE id <= $1::int8 ORDER BY id LIMIT $2::int8)";

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneOutcome {
    /// Older than the retention.
    pub by_age: u64,
    /// Beyond max_rows, oldest first.
    pub by_count: u64,
    /// Another pruner held the lock; nothing was done.
    pub skipped_busy: bool,
}

impl PruneOutcome {
    #[must_use]
    pub fn total(&self) -> u64 {
        self.by_age + self.by_count
    }
}

/// One pruning pass on `client`'s node with `cfg`'s limits, `batch` records per delete.
pub async fn prune(
    client: &Client,
    node: &str,
    cfg: &LedgerConfig,
    batch: i64,
) -> Result<PruneOutcome, LedgerError> {
    ensure_ledger(client, node).await?;
    let locked: bool = client
        .query_one(TRY_LOCK, &[])
        .await
        .map_err(query_err(node, "taking the prune lock"))?
        .get(0);
    if !locked {
        return Ok(PruneOutcome {
            skipped_busy: true,
            ..PruneOutcome::default()
        });
    }
    let result = prune_locked(client, node, cfg, batch.max(1)).await;
    let unlocked = client.query_one(UNLOCK, &[]).await;
    // After a failure the first error is the one to report (the caller drops the
    // session, which releases the lock anyway).
    let outcome = result?;
    unlocked.map_err(query_err(node, "releasing the prune lock"))?;
    Ok(outcome)
}

async fn prune_locked(
    client: &Client,
    node: &str,
    cfg: &LedgerConfig,
    batch: i64,
) -> Result<PruneOutcome, LedgerError> {
    let mut out = PruneOutcome::default();
    let age = i64::try_from(cfg.retention.as_micros()).unwrap_or(i64::MAX);
    loop {
        let n = client
            .execute(DELETE_OLD, &[&age, &batch])
            .await
            .map_err(query_err(node, "deleting records older than the retention"))?;
        out.by_age += n;
        if n < batch.unsigned_abs() {
            break;
        }
        tokio::task::yield_now().await;
    }
    // ids only grow, so max - min + 1 bounds the count from above: no scan when it fits.
    let max_rows = i64::try_from(cfg.max_rows).unwrap_or(i64::MAX);
    let (lo, hi): (Option<i64>, Option<i64>) = {
        let r = client
            .query_one("SELECT min(id), max(id) FROM pgmesh.conflicts", &[])
            .await
            .map_err(query_err(node, "reading the ledger's id range"))?;
        (r.get(0), r.get(1))
    };
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(out);
    };
    if hi.saturating_sub(lo).saturating_add(1) <= max_rows {
        return Ok(out);
    }
    let cutoff: Option<i64> = client
        .query_opt(
            "SELECT id FROM pgmesh.conflicts ORDER BY id DESC OFFSET $1::int8 LIMIT 1",
            &[&max_rows],
        )
        .await
        .map_err(query_err(node, "finding the oldest record to keep"))?
        .map(|r| r.get(0));
    let Some(cutoff) = cutoff else {
        return Ok(out);
    };
    loop {
        let n = client
            .execute(DELETE_UPTO, &[&cutoff, &batch])
            .await
            .map_err(query_err(node, "deleting records beyond max_rows"))?;
        out.by_count += n;
        if n < batch.unsigned_abs() {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(out)
}
