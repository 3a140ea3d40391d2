//! Driving every node through one `pgmesh ddl` run (I/O).

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::classify::{classify, Refusal, Statement};
use super::node::{run_on_node, unstamp, LockTimeout, NodeOutcome};
use super::split::short;
use super::split::statements;
use super::DdlError;
use crate::config::Config;
use crate::setup::facts::table_facts;

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct DdlOptions {
    /// How long one statement may wait for a lock before the run is rolled back and
    /// retried (an ALTER waiting for a lock makes every later writer of the table wait).
    pub lock_timeout: Duration,
    pub attempts: u32,
    /// Run everything, then roll back on every node.
    pub dry_run: bool,
    /// Run on this node only (to bring its table in line with the other nodes').
    pub only: Option<String>,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct DdlReport {
    pub statements: Vec<String>,
    pub dry_run: bool,
    pub attempts: u32,
    /// Nodes that committed (in name order).
    pub committed: Vec<String>,
    /// What pgmesh refreshed beside the statements, per node.
    pub notes: Vec<(String, String)>,
    /// Differences between the nodes' tables found after the commits.
    pub differences: Vec<String>,
}

/// Cuts `sql` into statements and classifies each; a refusal is a usage error.
pub fn prepare(sql: &str) -> Result<Vec<(String, Statement)>, Refusal> {
    let stmts = statements(sql).map_err(|e| Refusal(format!("cannot read the SQL: {e}")))?;
    if stmts.is_empty() {
        return Err(Refusal("no statement given".into()));
    }
    stmts
        .into_iter()
        .map(|s| classify(&s).map(|c| (s, c)))
        .collect()
}

/// Runs `stmts` on every node of `cfg`; `progress` hears about retries.
pub async fn run(
    cfg: &Config,
    stmts: &[(String, Statement)],
    opts: &DdlOptions,
    progress: impl Fn(&str),
) -> Result<DdlReport, DdlError> {
    let mut all = Vec::new();
    for node in cfg.nodes.values() {
        all.push((node.name.clone(), crate::setup::connect(node).await?));
    }
    // The nodes to change; the others are only compared with afterwards.
    let (clients, others): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(n, _)| opts.only.as_ref().is_none_or(|o| o == n));
    let mut report = DdlReport {
        statements: stmts.iter().map(|(s, _)| s.clone()).collect(),
        dry_run: opts.dry_run,
        ..DdlReport::default()
    };
    let mut attempt = 0;
    let outcomes = loop {
        attempt += 1;
        report.attempts = attempt;
        match attempt_once(&clients, cfg, stmts, opts).await {
            Ok(o) => break o,
            Err(e) => {
                rollback_all(&clients).await;
                match e {
                    Ok(node) if attempt < opts.attempts => {
                        let wait = Duration::from_millis(200 * u64::from(attempt))
                            .min(Duration::from_secs(3));
                        progress(&format!(
                            "a lock on node {node} was not granted within {:?} (attempt {attempt} of {}); everything rolled back, retrying in {wait:?}",
                            opts.lock_timeout, opts.attempts
                        ));
                        tokio::time::sleep(wait).await;
                    }
                    Ok(node) => {
                        return Err(DdlError::Locks {
                            node,
                            attempts: attempt,
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };
    if let Err(e) = check_defaults(&outcomes) {
        rollback_all(&clients).await;
        return Err(e);
    }
    for ((node, _), o) in clients.iter().zip(&outcomes) {
        report
            .notes
            .extend(o.notes.iter().map(|n| (node.clone(), n.clone())));
    }
    if opts.dry_run {
        rollback_all(&clients).await;
        return Ok(report);
    }
    for (node, c) in &clients {
        if let Err(e) = c.batch_execute("COMMIT").await {
            let message = crate::sqlconn::pg_message(&e);
            if report.committed.is_empty() {
                rollback_all(&clients).await;
                return Err(DdlError::Node {
                    node: node.clone(),
                    what: "committing".into(),
                    message,
                });
            }
            return Err(DdlError::Partial {
                committed: report.committed.join(", "),
                node: node.clone(),
                message,
            });
        }
        report.committed.push(node.clone());
    }
    for ((_, c), o) in clients.iter().zip(&outcomes) {
        if o.stamped {
            unstamp(c).await;
        }
    }
    let oids: Vec<u32> = outcomes
        .iter()
        .flat_map(|o| o.tables.iter().copied())
        .collect();
    report.differences = compare_tables(&clients, &others, &oids).await;
    Ok(report)
}

/// One try on every node; `Err(Ok(node))` is a lock timeout there.
async fn attempt_once(
    clients: &[(String, Client)],
    cfg: &Config,
    stmts: &[(String, Statement)],
    opts: &DdlOptions,
) -> Result<Vec<NodeOutcome>, Result<String, DdlError>> {
    let mut outcomes = Vec::new();
    for (node, c) in clients {
        let begin = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'",
            opts.lock_timeout.as_millis()
        );
        c.batch_execute(&begin).await.map_err(|e| {
            Err(DdlError::Node {
                node: node.clone(),
                what: "starting a transaction".into(),
                message: crate::sqlconn::pg_message(&e),
            })
        })?;
        match run_on_node(c, node, cfg, stmts).await {
            Ok(o) => outcomes.push(o),
            Err(Ok(LockTimeout)) => return Err(Ok(node.clone())),
            Err(Err(e)) => return Err(Err(e)),
        }
    }
    Ok(outcomes)
}

async fn rollback_all(clients: &[(String, Client)]) {
    for (_, c) in clients {
        let _ = c.batch_execute("ROLLBACK").await;
        // A session bound to the rewrite origin stays bound after a rollback.
        unstamp(c).await;
    }
}

/// A new column's default must give every node's existing rows the same value.
fn check_defaults(outcomes: &[NodeOutcome]) -> Result<(), DdlError> {
    let Some(first) = outcomes.first() else {
        return Ok(());
    };
    for d in &first.defaults {
        let values: Vec<&(Option<String>, Option<String>)> = outcomes
            .iter()
            .filter_map(|o| o.defaults.iter().find(|x| x.column == d.column))
            .map(|x| &x.values)
            .collect();
        let stable = values.iter().all(|(x, y)| x == y && *x == d.values.0);
        if !stable {
            let shown: Vec<String> = values
                .iter()
                .map(|(x, _)| x.clone().unwrap_or_else(|| "NULL".into()))
                .collect();
            return Err(DdlError::Refused(format!(
                "the default of the new column {} ({}) gives different values ({}): each node fills its existing rows itself, so the nodes would differ. Add the column without a default (or with a constant), fill it with an UPDATE on one node (it replicates), then SET DEFAULT; nothing was changed",
                d.column,
                d.expr,
                shown.join(", ")
            )));
        }
    }
    Ok(())
}

/// After the commits: the touched tables (`oids`, as the first changed node knows them)
/// must have the same columns, types and key on every node (a statement can behave
/// differently on two nodes, e.g. IF NOT EXISTS; or `--node` left the others different).
async fn compare_tables(
    changed: &[(String, Client)],
    others: &[(String, Client)],
    oids: &[u32],
) -> Vec<String> {
    let mut out = Vec::new();
    let Some((first_node, first)) = changed.first() else {
        return out;
    };
    let mut seen = std::collections::BTreeSet::new();
    for oid in oids {
        let Ok(Some(reference)) = table_facts(first, *oid).await else {
            continue;
        };
        let q = reference.qualified();
        if !seen.insert(q.clone()) {
            continue;
        }
        for (node, c) in changed[1..].iter().chain(others) {
            let other = match c
                .query_opt("SELECT to_regclass($1)::oid", &[&q])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get::<_, Option<u32>>(0))
            {
                Some(oid) => table_facts(c, oid).await.ok().flatten(),
                None => None,
            };
            match other {
                None => out.push(format!(
                    "table {q} exists on {first_node} but not on {node}"
                )),
                Some(t)
                    if t.columns != reference.columns || t.primary_key != reference.primary_key =>
                {
                    out.push(format!(
                        "table {q} differs: on {first_node} ({}; key {}), on {node} ({}; key {})",
                        describe(&reference.columns),
                        reference.primary_key.join(", "),
                        describe(&t.columns),
                        t.primary_key.join(", ")
                    ));
                }
                Some(_) => {}
            }
        }
    }
    out
}

fn describe(cols: &[(String, String)]) -> String {
    cols.iter()
        .map(|(n, t)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Statements as short lines, for the human report.
#[must_use]
pub fn short_statements(stmts: &[String]) -> Vec<String> {
    stmts.iter().map(|s| short(s)).collect()
}
