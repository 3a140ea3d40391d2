//! `pgmesh ddl`: one schema change on every node, in an order that keeps replication
//! running.
//!
//! Each node gets one transaction holding all the statements, plus what pgmesh keeps per
//! replicated table (the tombstone trigger, whose function names the key columns;
//! publication membership of a new table). The statements run on every node first and
//! commit only when all of them succeeded, so each table's ACCESS EXCLUSIVE lock is held
//! on every node from its ALTER until the commits: neither node writes the table in
//! between, and a table is never changed on one node only because another failed.
//! The commits land a few milliseconds apart; a sidecar that meets the new shape from
//! its peer before its own node has committed waits for that commit (it compares tables
//! under a lock), and changes made before the peer's ALTER that arrive after this node's
//! are recognised as history (see [`crate::apply::shape`]). A statement that waits for a
//! lock longer than `--lock-timeout` rolls everything back and is retried.
//!
//! [`split`] and [`classify`] read the statements (pure); [`node`] runs them on one node;
//! [`run`] drives all nodes.

pub mod classify;
pub mod node;
pub mod run;
pub mod split;

pub use classify::{classify, Refusal, Statement};
pub use run::{prepare, run, DdlOptions, DdlReport};

/// Why `pgmesh ddl` stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DdlError {
    #[error(transparent)]
    Connect(#[from] crate::setup::SetupError),
    /// A statement or a step failed on a node; every node was rolled back.
    #[error("node {node}: {what}: {message}; every node was rolled back, nothing changed")]
    Node {
        node: String,
        what: String,
        message: String,
    },
    /// The change would break replication; every node was rolled back.
    #[error("{0}")]
    Refused(String),
    #[error("could not take the locks on node {node} within the lock timeout in {attempts} attempts (long transactions on the table?); nothing changed: try again, or raise --lock-timeout")]
    Locks { node: String, attempts: u32 },
    /// Some nodes committed and one did not: the nodes now differ.
    #[error("committed on {committed} but the commit failed on {node}: {message}. The table now differs between the nodes: run the same statements on {node} (psql), and the stopped direction resumes by itself")]
    Partial {
        committed: String,
        node: String,
        message: String,
    },
}
