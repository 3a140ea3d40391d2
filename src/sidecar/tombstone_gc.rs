//! Pruning `pgmesh.tombstones`, which otherwise grows by one row per deleted key forever.
//!
//! A tombstone only matters for a change of the peer that arrives after it and is *older*
//! than the delete (it must lose to the delete). Once every peer direction into this node
//! has applied everything its peer committed up to time H (see
//! [`crate::observe::DirectionState::horizon`]), every change still to come commits after
//! H. So a tombstone dated before H needs no keeping: against a newer change it loses
//! either way (an update of a missing row is applied as an insert; a delete of a missing
//! row writes a new tombstone). `retention` is kept on top as a margin for clock skew
//! between the nodes and for commit times slightly out of WAL order.

use tokio_postgres::Client;

use crate::apply::ledger::ts_text;
use crate::protocol::pgoutput::PgTimestamp;

/// One batch: tombstones dated (decision time, else the delete's commit time, else when
/// the row was written) before `$1 - $2 µs`, at most `$3` of them.
const DELETE_BATCH: &str = "DELETE FROM pgmesh.tombstones WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM pgmesh.tombstones tb
     WHERE coalesce(tb.decided_ts, pg_xact_commit_timestamp(tb.xmin), tb.deleted_at)
           < $1::text::timestamptz - $2::int8 * interval '1 microsecond'
     LIMIT $3::int8))";

const BATCH_ROWS: i64 = 5_000;

/// Deletes, in short batches, the tombstones every peer is past by `retention`. `horizon`
/// is the earliest horizon of all directions into this node. Returns how many went.
pub async fn prune_tombstones(
    client: &Client,
    horizon: PgTimestamp,
    retention: std::time::Duration,
) -> Result<u64, tokio_postgres::Error> {
    let margin = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    let at = ts_text(horizon);
    let mut total = 0;
    loop {
        let n = client
            .execute(DELETE_BATCH, &[&at, &margin, &BATCH_ROWS])
            .await?;
        total += n;
        if n < BATCH_ROWS as u64 {
            return Ok(total);
        }
    }
}
