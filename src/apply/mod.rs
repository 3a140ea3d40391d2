//! Apply: writing a chunk of remote changes into the local primary, deciding every
//! conflict by last-writer-wins and recording it in the ledger, in one transaction bound
//! to the peer's replication origin (so progress moves atomically with the data).

pub mod copy;
mod db;
mod error;
mod keyless;
pub mod keyless_sql;
pub mod kill;
mod kill_apply;
pub mod ledger;
mod lookup;
mod one_message;
mod origins;
mod params;
mod peer_read;
mod pipelined;
mod plan;
mod resolve;
pub mod session;
pub mod shape;
pub mod shape_io;
pub mod sql;
mod stats;
pub mod streamed;
mod uncontested;
pub mod uncontested_sql;
mod write;

pub use crate::sqlconn::{db_error_is_transient, describe_db_error};
pub use error::ApplyError;
pub use origins::Origins;
pub use session::ApplySession;
pub use stats::ApplyStats;
