//! Reading and pruning the conflict ledger, `pgmesh.conflicts` (migrations/V1). The apply
//! side writes it (`apply::ledger`, in the transaction that resolves each conflict); this
//! module is the operator side: `pgmesh conflicts` lists and summarizes it with filters
//! ([`filter`], [`read`]), and [`prune`] keeps it bounded by age and row count, run by the
//! sidecar's maintenance task and by `pgmesh conflicts --prune`.
//!
//! The ledger is node-local: `pgmesh.conflicts` is never in publication `pgmesh` (setup
//! selects tables outside schema pgmesh only), so neither its rows nor their pruning
//! travel to the peer.

pub mod filter;
pub mod prune;
pub mod read;
pub mod render;

pub use filter::{ConflictFilter, TableMatch, TimeBound};
pub use prune::{prune, PruneOutcome, PRUNE_BATCH_ROWS};
pub use read::{ConflictRow, SummaryRow};

use crate::conflict::LedgerKind;
use crate::sqlconn::{pg_message, SqlConnectError};

/// Every kind name the ledger holds ([`LedgerKind`]).
#[must_use]
pub fn known_kinds() -> Vec<&'static str> {
    LedgerKind::all()
        .into_iter()
        .map(LedgerKind::as_str)
        .collect()
}

/// Why the ledger could not be read or pruned on a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error(transparent)]
    Connect(#[from] SqlConnectError),
    #[error(
        "node {node} has no table pgmesh.conflicts (schema pgmesh is not installed): run `pgmesh setup -c <config>` first"
    )]
    NotSetUp { node: String },
    /// A statement failed; `what` says which step.
    #[error("node {node}: {what}: {message}")]
    Query {
        node: String,
        what: String,
        message: String,
    },
}

/// Wraps a driver error of step `what` on `node`.
pub(crate) fn query_err(
    node: &str,
    what: &str,
) -> impl FnOnce(tokio_postgres::Error) -> LedgerError {
    let node = node.to_string();
    let what = what.to_string();
    move |e| LedgerError::Query {
        node,
        what,
        message: pg_message(&e),
    }
}

/// Fails with [`LedgerError::NotSetUp`] when the node has no ledger table.
pub async fn ensure_ledger(client: &tokio_postgres::Client, node: &str) -> Result<(), LedgerError> {
    let present: bool = client
        .query_one("SELECT to_regclass('pgmesh.conflicts') IS NOT NULL", &[])
        .await
        .map_err(query_err(node, "looking for pgmesh.conflicts"))?
        .get(0);
    if present {
        Ok(())
    } else {
        Err(LedgerError::NotSetUp {
            node: node.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_known_once() {
        let kinds = known_kinds();
        assert_eq!(kinds.len(), 10);
        let unique: std::collections::BTreeSet<_> = kinds.iter().collect();
        assert_eq!(unique.len(), kinds.len());
        for k in ["insert_exists", "truncate", "repair"] {
            assert!(kinds.contains(&k), "{k}");
        }
    }
}
