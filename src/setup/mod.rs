//! `pgmesh setup` and `pgmesh teardown`: preflight checks, the `pgmesh` schema, the
//! publication, tombstone triggers, replication origins and slots on every node.
//!
//! Layout: [`facts`] gathers (I/O) → [`checks`] judges (pure) → [`install`] creates
//! (I/O, idempotent) ; [`teardown`] removes. [`migrate`] holds the schema migrations and
//! [`tombstone`] the generated trigger functions.

pub mod catalog;
pub mod checks;
mod connect;
mod error;
pub mod facts;
pub mod finding;
pub mod migrate;
pub mod tombstone;

pub use catalog::NodeFacts;
pub use checks::{check_all, OutputPlugin};
pub use connect::{connect, target};
pub use error::{pg_message, SetupError};
pub use finding::{error_count, Finding, Severity};
