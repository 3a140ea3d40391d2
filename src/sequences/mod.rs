//! `pgmesh sequences`: sequences and identity columns must not hand out the same value on
//! two nodes (two rows inserted on different nodes would then collide on their key).
//!
//! [`facts`] reads (I/O) → [`plan`] judges (pure) → [`apply`] changes (I/O, every node in
//! one transaction each, under the sequences' own locks); [`render`] prints. `pgmesh setup
//! --check` runs the same judgement and warns.

pub mod apply;
pub mod facts;
pub mod plan;
pub mod render;

pub use facts::{gather, SequenceFacts};
pub use plan::{plan, Plan, Verdict};

/// Why reading or changing sequences failed on a node.
#[derive(Debug, thiserror::Error)]
#[error("node {node}: {what}: {message}")]
pub struct SequencesError {
    pub node: String,
    pub what: String,
    pub message: String,
}

impl SequencesError {
    pub(crate) fn query(node: &str, what: &str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let (node, what) = (node.to_string(), what.to_string());
        move |e| SequencesError {
            node,
            what,
            message: crate::sqlconn::pg_message(&e),
        }
    }
}
