//! The SQL of the guardrail: reading the slots, dropping one with its record in
//! `pgmesh.guardrail_drops` (migrations/V3), and finding that record from the peer.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::SlotFacts;

/// The slots named in `slots` of this database, as the guardrail sees them.
pub async fn read_slots(
    client: &Client,
    slots: &[String],
) -> Result<Vec<SlotFacts>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT slot_name::text, active, wal_status, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots \
             WHERE slot_name = ANY($1) AND database = current_database()",
            &[&slots],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SlotFacts {
            slot: r.get(0),
            active: r.get(1),
            wal_status: r.get(2),
            retained: r
                .get::<_, Option<i64>>(3)
                .map(|n| u64::try_from(n).unwrap_or(0)),
        })
        .collect())
}

/// Drops `facts.slot` if no walsender uses it, recording the drop in the same
/// transaction; `Ok(false)` when it became active meanwhile (nothing dropped or kept).
///
/// Dropping a slot is not transactional: should the COMMIT itself fail after the drop,
/// the slot is gone without its row, and the peer's sidecar reports a plain missing slot
/// (whose message also says to run `pgmesh setup`).
pub async fn drop_slot(
    client: &Client,
    facts: &SlotFacts,
    peer: &str,
    limit: u64,
) -> Result<bool, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let result = async {
        client
            .execute(
                "INSERT INTO pgmesh.guardrail_drops \
                   (slot_name, peer, retained_bytes, limit_bytes, wal_status) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &facts.slot,
                    &peer,
                    &facts.retained.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                    &facts.wal_status,
                ],
            )
            .await?;
        // Only while inactive: a sidecar that connected meanwhile keeps its slot (the
        // drop would fail on it anyway).
        let dropped = client
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND NOT active AND database = current_database()",
                &[&facts.slot],
            )
            .await?;
        Ok::<bool, tokio_postgres::Error>(!dropped.is_empty())
    }
    .await;
    match result {
        Ok(true) => {
            client.batch_execute("COMMIT").await?;
            Ok(true)
        }
        Ok(false) => {
            client.batch_execute("ROLLBACK").await?;
            Ok(false)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// The guardrail's last drop of `slot` on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropRecord {
    pub dropped_at: String,
    pub retained_bytes: Option<i64>,
    pub limit_bytes: i64,
}

/// The latest drop of `slot` recorded on the node `client` is connected to and not yet
/// followed by setup creating the slot again; `None` when there is none, or the node's
/// schema predates the guardrail.
pub async fn last_drop(
    client: &Client,
    slot: &str,
) -> Result<Option<DropRecord>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT dropped_at::text, retained_bytes, limit_bytes FROM pgmesh.guardrail_drops \
             WHERE slot_name = $1 AND resolved_at IS NULL ORDER BY dropped_at DESC LIMIT 1",
            &[&slot],
        )
        .await;
    match row {
        Ok(row) => Ok(row.map(|r| DropRecord {
            dropped_at: r.get(0),
            retained_bytes: r.get(1),
            limit_bytes: r.get(2),
        })),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether an error means the guardrail's table is missing (setup not re-run).
#[must_use]
pub fn is_missing_table(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_TABLE)
}

/// Marks the drops of `slot` resolved: setup just created it again. A node whose schema
/// predates the guardrail has nothing to mark.
pub async fn mark_recreated(client: &Client, slot: &str) -> Result<(), tokio_postgres::Error> {
    match client
        .execute(
            "UPDATE pgmesh.guardrail_drops SET resolved_at = now() \
             WHERE slot_name = $1 AND resolved_at IS NULL",
            &[&slot],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_missing_table(&e) => Ok(()),
        Err(e) => Err(e),
    }
}
