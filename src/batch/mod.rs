//! Batching: many upstream changes collapse into one set of per-table, per-key changes
//! that the apply step writes with one statement per table and kind.
//!
//! Several changes to one key inside a chunk collapse to their net effect, carrying the
//! last change's own commit time (each row keeps its own remote timestamp, so
//! last-writer-wins stays exact however many upstream transactions a chunk spans).
//! Tables without a primary key have no key to collapse on: their changes stay in stream
//! order ([`KeylessChange`]).

mod collapse;
mod limits;

pub use collapse::{ChangeOp, Chunk, KeylessChange, Pending, TableChunk};
pub use limits::BatchLimits;
