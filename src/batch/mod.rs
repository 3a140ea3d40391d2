//! Batching: many upstream changes collapse into one set of per-table, per-key changes
//! that the apply step writes with one statement per table and kind.
//!
//! Several changes to one key inside a chunk collapse to their net effect, carrying the
//! last change's own commit time (each row keeps its own remote timestamp, so
//! last-writer-wins stays exact however many upstream transactions a chunk spans).

mod collapse;

pub use collapse::{ChangeOp, Chunk, Pending, TableChunk};
