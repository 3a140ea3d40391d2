//! Conflict decisions: pure functions of the local and remote versions of one row.
//!
//! Last writer wins on each row's own commit timestamp; equal timestamps are broken by
//! node name (the greater name wins), so every node reaches the same decision from the
//! same two versions. A row last written by applying changes from the same peer the new
//! change comes from is not in conflict: one origin's order is authoritative.
//!
//! For the timestamps to respect what happened first, a change is applied only once
//! this node's clock has passed its commit time ([`causality`]).

pub mod causality;
mod decide;
pub mod record;

pub use decide::{
    decide, newer, Action, ConflictKind, Decision, LocalVersion, RemoteOp, RemoteVersion, Winner,
};
pub use record::{LedgerKind, Resolution};
