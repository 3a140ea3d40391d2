//! Creating pgmesh's objects on one node. Every step looks before it acts, so running
//! setup again changes nothing and reports no [`Change`]; a changed config (tables added
//! or removed) changes exactly the difference.

use super::catalog::{NodeFacts, TableFacts};
use super::error::{query_err, SetupError};
use super::fence_trigger;
use super::migrate::migrate;
use super::tombstone;
use crate::config::{names, Config};
use crate::sync::CopyJob;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::Client;

/// One thing setup or teardown changed on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub node: String,
    pub what: String,
}

/// Serializes concurrent `pgmesh setup`/`teardown` runs against the same database.
pub(crate) const LOCK_SQL: &str = "SELECT pg_advisory_lock(hashtext('pgmesh setup'))";
pub(crate) const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock(hashtext('pgmesh setup'))";

/// Schema, node registry, tombstone and fence triggers, publication and origins on one
/// node.
/// Slots come separately ([`create_slots`]), after every node has its publication.
pub async fn install_node(
    client: &mut Client,
    cfg: &Config,
    facts: &NodeFacts,
    arriving: &[&CopyJob],
    changes: &mut Vec<Change>,
) -> Result<(), SetupError> {
    let node = facts.node.as_str();
    let mut change = |what: String| {
        changes.push(Change {
            node: node.to_string(),
            what,
        })
    };
    client
        .query_one(LOCK_SQL, &[])
        .await
        .map_err(query_err(node, "taking the setup lock"))?;
    for m in migrate(client, node).await? {
        change(format!("applied migration {m}"));
    }
    // V6 inserts the fence's one row; without it the fence could not be set (the guard
    // would read no flag). Only an explicit DELETE removes it.
    let restored = client
        .execute(
            "INSERT INTO pgmesh.fence DEFAULT VALUES ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await
        .map_err(query_err(node, "checking the row of pgmesh.fence"))?;
    if restored > 0 {
        change("restored the missing row of pgmesh.fence (not fenced)".to_string());
    }
    if let Some(what) = align_write_permit(client, node, cfg.control.is_some()).await? {
        change(what);
    }
    // Before the table joins the publication: from here on a crash is resumed.
    for job in arriving {
        crate::sync::copy::announce(client, node, job).await?;
    }
    for n in cfg.nodes.keys() {
        let rows = client
            .execute(
                "INSERT INTO pgmesh.nodes (name, is_local) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET is_local = EXCLUDED.is_local
                 WHERE pgmesh.nodes.is_local IS DISTINCT FROM EXCLUDED.is_local",
                &[n, &(n == node)],
            )
            .await
            .map_err(query_err(node, "registering nodes"))?;
        if rows > 0 {
            change(format!("registered node {n} in pgmesh.nodes"));
        }
    }
    let selected = facts.selected_tables(&cfg.replication);
    for what in install_triggers(client, node, &selected).await? {
        change(what);
    }
    if let Some(what) = sync_publication(client, node, &selected).await? {
        change(what);
    }
    // Each peer's origin, and the one its streamed big transactions are applied under.
    let origins = cfg.peers(node).flat_map(|peer| {
        [
            names::origin_name(&peer.name),
            names::stream_origin_name(&peer.name),
        ]
    });
    for origin in origins {
        let created = client
            .query(
                "SELECT pg_replication_origin_create($1)
                  WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
                &[&origin],
            )
            .await
            .map_err(query_err(node, "creating replication origin"))?;
        if !created.is_empty() {
            change(format!("created replication origin {origin}"));
        }
    }
    client
        .query_one(UNLOCK_SQL, &[])
        .await
        .map_err(query_err(node, "releasing the setup lock"))?;
    Ok(())
}

/// The write permit (migration V6) follows the config: without a control plane it is
/// open for good (nothing would renew it); with one, a permit that is open for good is
/// closed, so the region takes writes only once its agent holds a lease and an endpoint.
/// A finite permit (an agent is at work) and a deliberate fence are left alone.
async fn align_write_permit(
    client: &Client,
    node: &str,
    control: bool,
) -> Result<Option<String>, SetupError> {
    let sql = if control {
        "SELECT pg_catalog.setval('pgmesh.write_permit', 0)
           FROM pgmesh.fence WHERE id
            AND pg_catalog.pg_sequence_last_value('pgmesh.write_permit') = 9223372036854775807"
    } else {
        "SELECT pg_catalog.setval('pgmesh.write_permit', 9223372036854775807)
           FROM pgmesh.fence WHERE id AND NOT fenced
            AND pg_catalog.pg_sequence_last_value('pgmesh.write_permit') IS DISTINCT FROM 9223372036854775807"
    };
    let rows = client
        .query(sql, &[])
        .await
        .map_err(query_err(node, "aligning the write permit with [control]"))?;
    Ok((!rows.is_empty()).then(|| {
        if control {
            "closed the write permit: with [control], writes wait for this region's agent to own an endpoint".to_string()
        } else {
            "opened the write permit for good (no [control] section: no agent renews it)".to_string()
        }
    }))
}

/// Generated tombstone functions and triggers, and the fence trigger, for the selected
/// tables; those of tables no longer selected (or dropped) are removed. One transaction.
async fn install_triggers(
    client: &mut Client,
    node: &str,
    selected: &[&TableFacts],
) -> Result<Vec<String>, SetupError> {
    let q = |what: &'static str| query_err(node, what);
    let tx = client
        .transaction()
        .await
        .map_err(q("starting a transaction"))?;
    let functions: BTreeMap<String, String> = tx
        .query(
            "SELECT p.proname::text, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'pgmesh' AND p.proname LIKE 'tomb\\_%'",
            &[],
        )
        .await
        .map_err(q("listing tombstone functions"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let triggers: Vec<(i64, String, String)> = tx
        .query(
            "SELECT t.tgrelid::int8, t.tgrelid::regclass::text, p.proname::text
               FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
              WHERE t.tgname = $1 AND NOT t.tgisinternal",
            &[&names::TOMBSTONE_TRIGGER],
        )
        .await
        .map_err(q("listing tombstone triggers"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut done = Vec::new();
    let wanted: BTreeSet<String> = selected
        .iter()
        .map(|t| names::tombstone_function(t.oid))
        .collect();
    for (oid, table, func) in &triggers {
        if !selected.iter().any(|t| i64::from(t.oid) == *oid) {
            tx.batch_execute(&tombstone::drop_triggers_sql(table))
                .await
                .map_err(q("dropping a tombstone trigger"))?;
            done.push(format!(
                "dropped tombstone trigger on {table} (no longer replicated; function {func})"
            ));
        }
    }
    for f in functions.keys().filter(|f| !wanted.contains(*f)) {
        tx.batch_execute(&format!("DROP FUNCTION pgmesh.{f}()"))
            .await
            .map_err(q("dropping a tombstone function"))?;
        done.push(format!("dropped unused function pgmesh.{f}()"));
    }
    for t in selected {
        let func = names::tombstone_function(t.oid);
        if functions.get(&func) != Some(&tombstone::function_body(t)) {
            tx.batch_execute(&tombstone::function_sql(t))
                .await
                .map_err(q("creating a tombstone function"))?;
            done.push(format!(
                "created tombstone function pgmesh.{func}() for {}",
                t.qualified()
            ));
        }
        if !triggers.iter().any(|(oid, _, _)| *oid == i64::from(t.oid)) {
            tx.batch_execute(&tombstone::trigger_sql(t))
                .await
                .map_err(q("creating a tombstone trigger"))?;
            done.push(format!("created tombstone trigger on {}", t.qualified()));
        }
    }
    fence_triggers(&tx, node, selected, &mut done).await?;
    tx.commit().await.map_err(q("committing triggers"))?;
    Ok(done)
}

/// The `pgmesh_fence` trigger on every selected table (created, or re-enabled / replaced
/// when someone disabled or changed it), and on no other table.
async fn fence_triggers(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    selected: &[&TableFacts],
    done: &mut Vec<String>,
) -> Result<(), SetupError> {
    let q = |what: &'static str| query_err(node, what);
    let have: Vec<(i64, String, bool, String)> = tx
        .query(&fence_trigger::list_sql(), &[])
        .await
        .map_err(q("listing fence triggers"))?
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get::<_, Option<bool>>(2) == Some(true),
                r.get(3),
            )
        })
        .collect();
    for (oid, table, _, _) in &have {
        if !selected.iter().any(|t| i64::from(t.oid) == *oid) {
            tx.batch_execute(&fence_trigger::drop_sql(table))
                .await
                .map_err(q("dropping a fence trigger"))?;
            done.push(format!(
                "dropped fence trigger on {table} (no longer replicated)"
            ));
        }
    }
    for t in selected {
        let table = t.qualified();
        match have.iter().find(|(oid, ..)| *oid == i64::from(t.oid)) {
            None => {
                tx.batch_execute(&fence_trigger::create_sql(&table))
                    .await
                    .map_err(q("creating a fence trigger"))?;
                done.push(format!("created fence trigger on {table}"));
            }
            Some((_, _, false, _)) => {
                let sql = format!(
                    "{}; {}",
                    fence_trigger::drop_sql(&table),
                    fence_trigger::create_sql(&table)
                );
                tx.batch_execute(&sql)
                    .await
                    .map_err(q("replacing a fence trigger"))?;
                done.push(format!(
                    "replaced fence trigger on {table} (it had another function or events)"
                ));
            }
            Some((_, _, true, enabled)) if enabled != "O" => {
                tx.batch_execute(&fence_trigger::enable_sql(&table))
                    .await
                    .map_err(q("enabling a fence trigger"))?;
                done.push(format!(
                    "enabled fence trigger on {table} (was tgenabled = '{enabled}')"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Creates publication pgmesh for the selected tables, or sets its table list when it
/// differs. Returns what changed.
async fn sync_publication(
    client: &Client,
    node: &str,
    selected: &[&TableFacts],
) -> Result<Option<String>, SetupError> {
    let q = |what: &'static str| query_err(node, what);
    let pub_name = names::PUBLICATION;
    let exists = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&pub_name],
        )
        .await
        .map_err(q("reading the publication"))?;
    let wanted: BTreeSet<String> = selected.iter().map(|t| t.qualified()).collect();
    let list = wanted.iter().cloned().collect::<Vec<_>>().join(", ");
    match exists {
        None => {
            client
                .batch_execute(&format!("CREATE PUBLICATION {pub_name} FOR TABLE {list}"))
                .await
                .map_err(q("creating the publication"))?;
            Ok(Some(format!("created publication {pub_name} for {list}")))
        }
        Some(row) if row.get::<_, bool>(0) => Err(SetupError::Conflict {
            node: node.to_string(),
            message: format!(
                "publication {pub_name} exists FOR ALL TABLES (not made by pgmesh); drop it: DROP PUBLICATION {pub_name};"
            ),
        }),
        Some(_) => {
            let have: BTreeSet<String> = client
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&pub_name],
                )
                .await
                .map_err(q("reading publication tables"))?
                .iter()
                .map(|r| names::qualified_table(r.get(0), r.get(1)))
                .collect();
            if have == wanted {
                return Ok(None);
            }
            client
                .batch_execute(&format!("ALTER PUBLICATION {pub_name} SET TABLE {list}"))
                .await
                .map_err(q("updating the publication's tables"))?;
            Ok(Some(format!("set publication {pub_name} tables to {list}")))
        }
    }
}

/// The logical slot `pgmesh_<peer>` (pgoutput) for every peer, unless it exists. Run on
/// every node before any sidecar starts: a slot only keeps WAL from its creation on, so
/// writes made before it would never reach the peer.
///
/// A pgmesh slot PostgreSQL invalidated (`wal_status = lost`: its WAL passed
/// `max_slot_wal_keep_size`) can never stream again: it is dropped and created anew (by
/// the initial copy when one pins a snapshot with it, see `skip`). What was written here
/// while it was lost reaches the peer only through `pgmesh verify` / `pgmesh repair`.
pub async fn create_slots(
    client: &Client,
    cfg: &Config,
    node: &str,
    skip: &BTreeSet<(String, String)>,
    changes: &mut Vec<Change>,
) -> Result<(), SetupError> {
    for peer in cfg.peers(node) {
        let slot = names::slot_name(&peer.name);
        let lost = drop_lost_slot(client, node, &slot).await?;
        let recovery = |created: &str| {
            lost.as_deref().map(|cause| {
                format!(
                    "dropped slot {slot} (invalidated: {cause}) and {created}; rows written on \
                     {node} while it was lost need `pgmesh verify` / `pgmesh repair` (after \
                     node {peer}'s sidecar is restarted)",
                    peer = peer.name
                )
            })
        };
        if skip.contains(&(node.to_string(), slot.clone())) {
            if let Some(what) = recovery("left it to the initial copy to create again") {
                changes.push(Change {
                    node: node.to_string(),
                    what,
                });
            }
            continue;
        }
        let exists = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(query_err(node, "reading replication slots"))?
            .is_some();
        if !exists {
            client
                .query_one(
                    "SELECT pg_create_logical_replication_slot($1, $2)",
                    &[&slot, &names::OUTPUT_PLUGIN],
                )
                .await
                .map_err(query_err(node, "creating the replication slot"))?;
            crate::guardrail::record::mark_recreated(client, &slot)
                .await
                .map_err(query_err(
                    node,
                    "marking the guardrail's drop of the slot resolved",
                ))?;
            changes.push(Change {
                node: node.to_string(),
                what: recovery("created it again").unwrap_or_else(|| {
                    format!("created logical replication slot {slot} (pgoutput)")
                }),
            });
        }
    }
    Ok(())
}

/// Drops `slot` when it is this database's and PostgreSQL invalidated it
/// (`wal_status = lost`); why it was invalidated, when it dropped it.
async fn drop_lost_slot(
    client: &Client,
    node: &str,
    slot: &str,
) -> Result<Option<String>, SetupError> {
    // invalidation_reason exists from PostgreSQL 17 on: read through jsonb, NULL before.
    let dropped = client
        .query_opt(
            "SELECT to_jsonb(s) ->> 'invalidation_reason', pg_drop_replication_slot(s.slot_name)::text
               FROM pg_replication_slots s
              WHERE s.slot_name = $1 AND s.database = current_database() AND s.wal_status = 'lost'",
            &[&slot],
        )
        .await
        .map_err(query_err(node, "dropping an invalidated replication slot"))?;
    Ok(dropped.map(|r| super::catalog::lost_cause(r.get::<_, Option<String>>(0).as_deref())))
}
