//! `pgmesh sequences --apply`: every sequence of every fixable group gets its node's
//! increment and restart value, on every node in one transaction each.
//!
//! Order: first `ALTER SEQUENCE … INCREMENT BY` on every node, which takes the sequence's
//! lock until commit (so `nextval` there waits: no value is handed out meanwhile); then the
//! sequences and columns are read again under those locks and judged again, so the
//! restart values lie above everything used up to that moment (values handed out before
//! the lock but not yet committed are below the sequence's last value, which is counted);
//! then `RESTART WITH`, and commit on every node. Any failure before the commits rolls
//! every node back. Running it again changes nothing.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::facts::gather;
use super::plan::{plan, Plan, Verdict};
use super::SequencesError;
use crate::config::ReplicationConfig;

/// One statement run on one node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    pub node: String,
    pub sql: String,
}

/// How long to wait for a sequence's lock (sessions inside `nextval`, another ALTER).
const LOCK_TIMEOUT: &str = "10s";

/// Applies the changes `before` plans. `clients` are every node's sessions, in name order.
pub async fn apply(
    clients: &[(String, Client)],
    repl: &ReplicationConfig,
    before: &Plan,
) -> Result<Vec<Applied>, SequencesError> {
    let targets: BTreeSet<(String, String)> = before
        .groups
        .iter()
        .filter(|g| g.verdict() == Verdict::Fixable)
        .flat_map(|g| g.entries.iter())
        .map(|e| (e.node.clone(), e.sequence.clone()))
        .collect();
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    for (node, c) in clients {
        c.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .await
            .map_err(SequencesError::query(node, "starting a transaction"))?;
    }
    let result = change_locked(clients, repl, before, &targets).await;
    match result {
        Ok(done) => {
            let mut committed = Vec::new();
            for (node, c) in clients {
                if let Err(e) = c.batch_execute("COMMIT").await {
                    let mut err = SequencesError::query(node, "committing")(e);
                    if !committed.is_empty() {
                        err.message.push_str(&format!(
                            " (already committed on {}: run `pgmesh sequences --apply` again to finish)",
                            committed.join(", ")
                        ));
                    }
                    return Err(err);
                }
                committed.push(node.clone());
            }
            Ok(done)
        }
        Err(e) => {
            for (_, c) in clients {
                let _ = c.batch_execute("ROLLBACK").await;
            }
            Err(e)
        }
    }
}

async fn change_locked(
    clients: &[(String, Client)],
    repl: &ReplicationConfig,
    before: &Plan,
    targets: &BTreeSet<(String, String)>,
) -> Result<Vec<Applied>, SequencesError> {
    // Lock (and set the increment of) every sequence to change.
    for g in before
        .groups
        .iter()
        .filter(|g| g.verdict() == Verdict::Fixable)
    {
        for e in &g.entries {
            let Some(change) = &e.change else { continue };
            let Some((node, c)) = clients.iter().find(|(n, _)| *n == e.node) else {
                continue;
            };
            c.batch_execute(&format!(
                "ALTER SEQUENCE {} INCREMENT BY {}",
                e.sequence, change.increment
            ))
            .await
            .map_err(SequencesError::query(node, "locking a sequence"))?;
        }
    }
    // Judge again with what is used now.
    let mut facts = Vec::new();
    for (node, c) in clients {
        let f = gather(c, repl, Some(clients.len()))
            .await
            .map_err(SequencesError::query(node, "reading sequences"))?;
        facts.push((node.clone(), f));
    }
    let now = plan(repl, &facts);
    let mut done = Vec::new();
    for g in &now.groups {
        let mine = g
            .entries
            .iter()
            .filter(|e| targets.contains(&(e.node.clone(), e.sequence.clone())))
            .count();
        if mine == 0 {
            continue;
        }
        if mine != g.entries.len() || g.verdict() == Verdict::Refused {
            return Err(SequencesError {
                node: g.entries[0].node.clone(),
                what: format!("sequences of {}", g.columns.join(", ")),
                message: "they changed while being planned; nothing was changed: run `pgmesh sequences --apply` again".into(),
            });
        }
        for e in &g.entries {
            let Some(change) = &e.change else { continue };
            let Some((node, c)) = clients.iter().find(|(n, _)| *n == e.node) else {
                continue;
            };
            c.batch_execute(&change.sql)
                .await
                .map_err(SequencesError::query(node, "changing a sequence"))?;
            done.push(Applied {
                node: node.clone(),
                sql: change.sql.clone(),
            });
        }
    }
    Ok(done)
}
