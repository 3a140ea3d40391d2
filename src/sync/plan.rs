//! Which tables `pgmesh setup` copies, from where to where (pure: facts in, jobs out).
//!
//! A table is *new to replication* while some node does not publish it yet. Only new
//! tables are copied: once a table replicates, its rows differ between nodes only by what
//! is in flight. A new table with rows on one node is copied into the others, which must be
//! empty; rows on several nodes need the operator's word ([`ExistingData`]). A copy that
//! did not finish (recorded in `pgmesh.table_sync` on its target) is resumed whatever else
//! holds.

use crate::config::Config;
use crate::setup::{Finding, NodeFacts};
use std::collections::BTreeSet;

/// What to do with a table new to replication that holds rows on more than one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ExistingData {
    /// Refuse (an error finding; setup changes nothing).
    #[default]
    Refuse,
    /// Copy into each node the rows (by key) it lacks; rows present on several nodes keep
    /// each node's version until `pgmesh repair` reconciles them.
    Merge,
    /// This node's rows replace the other nodes' rows of such tables.
    ReplaceFrom(String),
}

/// How a copy treats rows the target already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// The target was empty when the copy was planned.
    Copy,
    /// The target has rows of its own; they stay.
    Merge,
    /// The target's rows are deleted first.
    Replace,
}

impl CopyMode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMode::Copy => "copy",
            CopyMode::Merge => "merge",
            CopyMode::Replace => "replace",
        }
    }

    /// The mode recorded in `pgmesh.table_sync.mode`; unknown text resumes as a merge,
    /// which never deletes.
    #[must_use]
    pub fn parse(s: &str) -> CopyMode {
        match s {
            "copy" => CopyMode::Copy,
            "replace" => CopyMode::Replace,
            _ => CopyMode::Merge,
        }
    }
}

/// Copy one table's rows from `source` into `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyJob {
    /// Qualified name, as in the ledger.
    pub table: String,
    pub source: String,
    pub target: String,
    pub mode: CopyMode,
    /// An unfinished copy found in `pgmesh.table_sync`: run again as a merge-like pass
    /// (the target's deletes since then must not be undone; nothing is emptied again).
    pub resume: bool,
}

/// The copies setup must run, or the findings that forbid them.
#[must_use]
pub fn plan(
    cfg: &Config,
    facts: &[NodeFacts],
    existing: &ExistingData,
) -> (Vec<CopyJob>, Vec<Finding>) {
    let mut jobs = Vec::new();
    let mut findings = Vec::new();
    if let ExistingData::ReplaceFrom(n) = existing {
        if !cfg.nodes.contains_key(n) {
            findings.push(Finding::error(
                n,
                format!("--replace-existing-from names node '{n}', which is not in the config"),
                format!(
                    "use one of: {}",
                    cfg.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
            return (jobs, findings);
        }
    }
    let tables: BTreeSet<String> = facts
        .iter()
        .flat_map(|f| f.selected_tables(&cfg.replication))
        .map(|t| t.qualified())
        .collect();
    for q in tables {
        // A table missing on some node is reported by the cross-node checks.
        if !facts
            .iter()
            .all(|f| f.tables.iter().any(|t| t.qualified() == q))
        {
            continue;
        }
        let unfinished: Vec<CopyJob> = facts
            .iter()
            .filter_map(|f| {
                f.unfinished_syncs.get(&q).map(|(src, mode)| CopyJob {
                    table: q.clone(),
                    source: src.clone(),
                    target: f.node.clone(),
                    mode: CopyMode::parse(mode),
                    resume: true,
                })
            })
            .collect();
        if !unfinished.is_empty() {
            jobs.extend(unfinished);
            continue;
        }
        if facts.iter().all(|f| f.published.contains(&q)) {
            continue;
        }
        let holders: Vec<(&str, i64)> = facts
            .iter()
            .filter_map(|f| f.row_counts.get(&q).map(|n| (f.node.as_str(), *n)))
            .collect();
        let job = |source: &str, target: &str, mode| CopyJob {
            table: q.clone(),
            source: source.to_string(),
            target: target.to_string(),
            mode,
            resume: false,
        };
        let nodes = facts.iter().map(|f| f.node.as_str());
        match (holders.as_slice(), existing) {
            ([], _) => {}
            ([(src, _)], _) => {
                jobs.extend(
                    nodes
                        .filter(|n| n != src)
                        .map(|n| job(src, n, CopyMode::Copy)),
                );
            }
            (_, ExistingData::Merge) => {
                for (src, _) in &holders {
                    jobs.extend(
                        facts
                            .iter()
                            .map(|f| f.node.as_str())
                            .filter(|n| n != src)
                            .map(|n| job(src, n, CopyMode::Merge)),
                    );
                }
            }
            (_, ExistingData::ReplaceFrom(src)) => {
                jobs.extend(
                    nodes
                        .filter(|n| n != src)
                        .map(|n| job(src, n, CopyMode::Replace)),
                );
            }
            (_, ExistingData::Refuse) => {
                let shown: Vec<String> = holders
                    .iter()
                    .map(|(n, c)| format!("{c}{} rows on {n}", cap_mark(*c)))
                    .collect();
                findings.push(Finding::error(
                    holders[1].0,
                    format!(
                        "table {q} is new to replication and holds rows on more than one node ({}); setup copies rows only into empty tables",
                        shown.join(", ")
                    ),
                    format!(
                        "empty {q} on all nodes but one, or run setup with --merge-existing (each node gets the rows it lacks; then `pgmesh verify` and `pgmesh repair`) or --replace-existing-from <node> (the other nodes' rows of {q} are deleted)"
                    ),
                ));
            }
        }
    }
    (jobs, findings)
}

/// Counts are capped when gathered ([`crate::setup::facts::ROW_COUNT_CAP`]).
fn cap_mark(count: i64) -> &'static str {
    if count >= crate::setup::facts::ROW_COUNT_CAP {
        "+"
    } else {
        ""
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
