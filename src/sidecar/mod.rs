//! The sidecar: one task per peer streams that peer's slot and applies into this node;
//! a maintenance task keeps the local ledger bounded.

mod ack;
mod applier;
mod clock;
mod direction;
pub mod link;
mod maintenance;
mod peer_probe;
pub mod scheduling;
mod schema_stop;
mod stall;
mod stream_apply;
pub mod tombstone_gc;

pub use link::{BatchLimits, PeerLink, SidecarError};
pub use maintenance::run_maintenance;
pub use stream_apply::{run_direction, run_peer};
