//! The sidecar: one task per peer streams that peer's slot and applies into this node.

mod applier;
pub mod link;
mod peer_probe;
mod stream_apply;

pub use link::{BatchLimits, PeerLink, SidecarError};
pub use stream_apply::{run_direction, run_peer};
