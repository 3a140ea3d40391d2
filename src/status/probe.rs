//! Reading one node for `pgmesh status`: its slots (with their walsenders), origins, apply
//! sessions, recent conflicts and newest commit, over one SQL session (TLS per the dsn).
//! Only the connection failing makes a node unreachable; a fact that cannot be read
//! (permissions, version) becomes a note and the rest is still reported.

use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::Client;

use super::facts::{
    NodeFacts, NodeProbe, OriginFacts, Pending, SkewFacts, SlotFacts, WalsenderFacts,
};
use super::pending::first_local_commit;
use crate::config::{names, NodeConfig};
use crate::sqlconn::{connect_sql, pg_message};

/// The application name of the sidecar's apply sessions (`apply::session`).
pub const APPLY_SESSION_NAME: &str = "pgmesh apply";

/// Transactions looked at when peeking a slot (on PostgreSQL 15 some may be ones the
/// reader skips, see [`first_local_commit`]).
const PEEK_CHANGES: i32 = 64;

const SLOTS_SQL: &str = "\
SELECT s.slot_name::text, s.active, s.active_pid, s.restart_lsn::text,
       s.confirmed_flush_lsn::text, s.wal_status, s.safe_wal_size,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8 END,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::int8 END,
       r.pid, r.state, r.application_name,
       extract(epoch FROM r.flush_lag)::float8, extract(epoch FROM r.replay_lag)::float8
  FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
 WHERE s.slot_name = ANY($1) AND s.database = current_database()";

const ORIGINS_SQL: &str = "\
SELECT roname::text, pg_replication_origin_progress(roname, false)::text
  FROM pg_replication_origin WHERE roname = ANY($1)";

const LAST_COMMIT_SQL: &str = "\
SELECT to_char(x.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), o.roname::text
  FROM pg_last_committed_xact() x LEFT JOIN pg_replication_origin o ON o.roident = x.roident
 WHERE x.xid IS NOT NULL";

const CLOCK_SKEW_SQL: &str = "\
SELECT peer, skew_us, uncertainty_us, samples,
       extract(epoch FROM now() - measured_at)::float8
  FROM pgmesh.clock_skew";

/// Reads `node`: the given slots and origins, plus node-wide facts. Never fails: a node
/// that cannot be reached comes back with the reason.
pub async fn probe_node(
    node: &NodeConfig,
    slots: &[String],
    origins: &[String],
    peek_timeout: Duration,
) -> NodeProbe {
    let mut cfg = match node.sql_config() {
        Ok(c) => c,
        Err(e) => {
            return NodeProbe {
                name: node.name.clone(),
                target: "?".into(),
                facts: Err(e.to_string()),
            }
        }
    };
    cfg.pg.application_name("pgmesh status");
    let target = cfg.target();
    let facts = match connect_sql(&cfg).await {
        Err(e) => Err(e.to_string()),
        Ok((client, task)) => {
            let facts = read_facts(&client, &node.name, slots, origins, peek_timeout).await;
            drop(client);
            task.abort();
            facts
        }
    };
    NodeProbe {
        name: node.name.clone(),
        target,
        facts,
    }
}

async fn read_facts(
    client: &Client,
    node: &str,
    slots: &[String],
    origins: &[String],
    peek_timeout: Duration,
) -> Result<NodeFacts, String> {
    let q =
        |what: &'static str| move |e: tokio_postgres::Error| format!("{what}: {}", pg_message(&e));
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(q("reading the server version"))?;
    let version_num: i32 = row.get(1);
    let mut f = NodeFacts {
        server_version: row.get(0),
        in_recovery: row.get(2),
        ..NodeFacts::default()
    };
    if f.in_recovery {
        f.notes.push(format!(
            "node {node} is a standby (in recovery): pgmesh nodes must be primaries"
        ));
    }

    for s in slots {
        f.slots.insert(s.clone(), None);
    }
    match client.query(SLOTS_SQL, &[&slots]).await {
        Ok(rows) => {
            for r in rows {
                let walsender = r.get::<_, Option<i32>>(9).map(|pid| WalsenderFacts {
                    pid,
                    state: r.get(10),
                    application_name: r.get(11),
                    flush_lag: r.get(12),
                    replay_lag: r.get(13),
                });
                let slot = SlotFacts {
                    active: r.get(1),
                    active_pid: r.get(2),
                    restart_lsn: r.get(3),
                    confirmed_flush_lsn: r.get(4),
                    wal_status: r.get(5),
                    safe_wal_size: r.get(6),
                    lag_bytes: r.get(7),
                    retained_bytes: r.get(8),
                    walsender,
                    pending: Pending::NotChecked,
                };
                f.slots.insert(r.get(0), Some(slot));
            }
        }
        Err(e) => return Err(q("reading replication slots")(e)),
    }
    for (name, slot) in &mut f.slots {
        if let Some(s) = slot {
            let lost = s.wal_status.as_deref() == Some("lost") || s.restart_lsn.is_none();
            if !s.active && !lost && !f.in_recovery {
                s.pending = peek_pending(client, name, version_num, peek_timeout).await;
                if let Pending::Unknown(why) = &s.pending {
                    f.notes
                        .push(format!("slot {name}: lag in seconds unknown: {why}"));
                }
            }
        }
    }

    for o in origins {
        f.origins.insert(o.clone(), None);
    }
    match client.query(ORIGINS_SQL, &[&origins]).await {
        Ok(rows) => {
            for r in rows {
                f.origins.insert(
                    r.get(0),
                    Some(OriginFacts {
                        remote_lsn: r.get(1),
                    }),
                );
            }
        }
        Err(e) => {
            // Without EXECUTE on pg_replication_origin_progress: existence only.
            f.notes.push(format!(
                "cannot read origin progress on node {node} ({}); grant EXECUTE on pg_replication_origin_progress(text, boolean)",
                pg_message(&e)
            ));
            let rows = client
                .query(
                    "SELECT roname::text FROM pg_replication_origin WHERE roname = ANY($1)",
                    &[&origins],
                )
                .await
                .map_err(q("reading replication origins"))?;
            for r in rows {
                f.origins.insert(r.get(0), Some(OriginFacts::default()));
            }
        }
    }

    f.apply_sessions = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            &[&APPLY_SESSION_NAME],
        )
        .await
        .map_err(q("reading pg_stat_activity"))?
        .get(0);

    match crate::ledger::read::recent_by_origin(client, node, 3_600).await {
        Ok(c) => f.recent_conflicts = c,
        Err(e) => f.notes.push(format!("cannot count recent conflicts: {e}")),
    }
    match client.query(CLOCK_SKEW_SQL, &[]).await {
        Ok(rows) => {
            for r in rows {
                f.clock_skew.insert(
                    r.get(0),
                    SkewFacts {
                        skew_us: r.get(1),
                        uncertainty_us: r.get(2),
                        samples: r.get(3),
                        age_seconds: r.get(4),
                    },
                );
            }
        }
        Err(e) => f.notes.push(format!(
            "clock skew unknown: cannot read pgmesh.clock_skew on node {node} ({}); run `pgmesh setup` to add it (migration V8)",
            pg_message(&e)
        )),
    }
    // Best effort (needs track_commit_timestamp, which pgmesh requires anyway).
    if let Ok(Some(r)) = client.query_opt(LAST_COMMIT_SQL, &[]).await {
        f.last_commit = r.get::<_, Option<String>>(0).map(|ts| (ts, r.get(1)));
    }
    Ok(f)
}

/// Peeks the (idle) slot for its oldest waiting transaction. The slot is held only for
/// the peek, bounded by `timeout`; a sidecar starting meanwhile retries (slot in use is
/// a transient error for it).
async fn peek_pending(client: &Client, slot: &str, version_num: i32, timeout: Duration) -> Pending {
    match try_peek(client, slot, version_num, timeout).await {
        Ok(p) => p,
        Err(e) => Pending::Unknown(format!("peeking slot {slot}: {}", pg_message(&e))),
    }
}

async fn try_peek(
    client: &Client,
    slot: &str,
    version_num: i32,
    timeout: Duration,
) -> Result<Pending, tokio_postgres::Error> {
    let mut options = vec![
        "proto_version".to_string(),
        "1".to_string(),
        "publication_names".to_string(),
        format!("\"{}\"", names::PUBLICATION),
    ];
    if version_num >= 160_000 {
        options.extend(["origin".to_string(), "none".to_string()]);
    }
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL statement_timeout = {}",
            timeout.as_millis().max(1)
        ))
        .await?;
    let result = async {
        let now: i64 = client
            .query_one(
                "SELECT ((extract(epoch FROM now()) - 946684800) * 1000000)::int8",
                &[],
            )
            .await?
            .get(0);
        let rows = client
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1::text::name, NULL, $2, VARIADIC $3::text[])",
                &[&slot, &PEEK_CHANGES, &options],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>((now, rows))
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    let (now, rows) = result?;
    if rows.is_empty() {
        return Ok(Pending::Nothing);
    }
    let messages: Vec<Bytes> = rows
        .iter()
        .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)))
        .collect();
    // Fewer rows than asked for: the peek reached the end of the WAL.
    let complete = rows.len() < usize::try_from(PEEK_CHANGES).unwrap_or(usize::MAX);
    Ok(match first_local_commit(&messages) {
        Some(ts) => Pending::Since {
            commit_time: crate::pgtime::rfc3339(ts.0),
            #[allow(clippy::cast_precision_loss)]
            seconds: (now.saturating_sub(ts.0)) as f64 / 1e6,
        },
        None if complete => Pending::Nothing,
        None => Pending::Unknown(format!(
            "the first {} waiting changes are ones the reader skips",
            rows.len()
        )),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn apply_sessions_are_named_as_the_sidecar_names_them() {
        let session = include_str!("../apply/session.rs");
        assert!(session.contains(&format!(
            "SET application_name = '{}';",
            super::APPLY_SESSION_NAME
        )));
    }
}
