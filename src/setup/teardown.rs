//! Removing everything setup created on one node, leaving user tables and rows alone
//! (also the fence: a torn-down node takes writes from everyone).
//!
//! Slots go first: a forgotten slot retains WAL forever and is the classic way logical
//! replication fills a primary's disk. Slots and origins are found by name
//! (`pgmesh_<node name>`) in this database, not only from the config's current peers, so
//! leftovers of an older config are removed too.

use super::error::{query_err, SetupError};
use super::install::{Change, LOCK_SQL, UNLOCK_SQL};
use crate::config::names;
use tokio_postgres::Client;

/// Names pgmesh gives its slots and origins.
const OWN_NAME_RE: &str = "^pgmesh_(_copy_|_repair_|_stream_)?[a-z][a-z0-9_]{0,30}$";

/// Drops slots, origins, publication, tombstone and fence triggers, functions and schema
/// pgmesh (with the fence flag) on one node.
/// Refuses (changing nothing further) if a pgmesh slot is in use by a running sidecar.
pub async fn teardown_node(
    client: &Client,
    node: &str,
    changes: &mut Vec<Change>,
) -> Result<(), SetupError> {
    let q = |what: &'static str| query_err(node, what);
    let mut change = |what: String| {
        changes.push(Change {
            node: node.to_string(),
            what,
        })
    };
    client
        .query_one(LOCK_SQL, &[])
        .await
        .map_err(q("taking the setup lock"))?;
    let slots = client
        .query(
            "SELECT slot_name::text, active_pid FROM pg_replication_slots
              WHERE database = current_database() AND slot_name ~ $1 ORDER BY 1",
            &[&OWN_NAME_RE],
        )
        .await
        .map_err(q("listing slots"))?;
    if let Some(active) = slots.iter().find(|r| r.get::<_, Option<i32>>(1).is_some()) {
        let (slot, pid): (String, Option<i32>) = (active.get(0), active.get(1));
        return Err(SetupError::Conflict {
            node: node.to_string(),
            message: format!(
                "slot {slot} is in use by process {} (a running sidecar); stop `pgmesh run` on its peer first",
                pid.unwrap_or_default()
            ),
        });
    }
    for r in &slots {
        let slot: String = r.get(0);
        client
            .query_one("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(q("dropping a slot"))?;
        change(format!("dropped replication slot {slot}"));
    }
    let origins = client
        .query(
            "SELECT roname FROM pg_replication_origin WHERE roname ~ $1 OR roname = $2 ORDER BY 1",
            &[&OWN_NAME_RE, &crate::ddl::node::REWRITE_ORIGIN],
        )
        .await
        .map_err(q("listing replication origins"))?;
    for r in &origins {
        let origin: String = r.get(0);
        client
            .query_one("SELECT pg_replication_origin_drop($1)", &[&origin])
            .await
            .map_err(q("dropping a replication origin"))?;
        change(format!("dropped replication origin {origin}"));
    }
    let dropped_pub = client
        .execute(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&names::PUBLICATION],
        )
        .await
        .map_err(q("reading the publication"))?;
    if dropped_pub > 0 {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", names::PUBLICATION))
            .await
            .map_err(q("dropping the publication"))?;
        change(format!("dropped publication {}", names::PUBLICATION));
    }
    let triggers = client
        .query(
            "SELECT t.tgrelid::regclass::text FROM pg_trigger t
               JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE t.tgname = $1 AND n.nspname = $2 ORDER BY 1",
            &[&names::TOMBSTONE_TRIGGER, &names::SCHEMA],
        )
        .await
        .map_err(q("listing tombstone triggers"))?;
    for r in &triggers {
        let table: String = r.get(0);
        client
            .batch_execute(&super::tombstone::drop_triggers_sql(&table))
            .await
            .map_err(q("dropping a tombstone trigger"))?;
        change(format!("dropped tombstone trigger on {table}"));
    }
    // The schema's CASCADE would take them too (they depend on pgmesh.fence_guard()),
    // silently; dropped one by one they are reported.
    let fences = client
        .query(&super::fence_trigger::list_sql(), &[])
        .await
        .map_err(q("listing fence triggers"))?;
    for r in &fences {
        let table: String = r.get(1);
        client
            .batch_execute(&super::fence_trigger::drop_sql(&table))
            .await
            .map_err(q("dropping a fence trigger"))?;
        change(format!("dropped fence trigger on {table}"));
    }
    let schema = client
        .execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&names::SCHEMA],
        )
        .await
        .map_err(q("reading schemas"))?;
    if schema > 0 {
        // CASCADE takes the generated functions, the ledger, tombstones and history.
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", names::SCHEMA))
            .await
            .map_err(q("dropping schema pgmesh"))?;
        change(format!(
            "dropped schema {} (ledger, tombstones, functions)",
            names::SCHEMA
        ));
    }
    client
        .query_one(UNLOCK_SQL, &[])
        .await
        .map_err(q("releasing the setup lock"))?;
    Ok(())
}
