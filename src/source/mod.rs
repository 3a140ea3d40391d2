//! The replication source: a walsender connection to the peer primary and the logical
//! replication stream read from it.
//!
//! - [`config`]: connection options from a DSN (sslmode, sslrootcert, password sources).
//! - [`tls`]: rustls configs per sslmode and the SSLRequest negotiation.
//! - [`connection`]: startup in `replication=database` mode, authentication (trust,
//!   password, md5, SCRAM-SHA-256), simple queries.
//! - [`commands`]: IDENTIFY_SYSTEM, CREATE/DROP_REPLICATION_SLOT, slot lookup.
//! - [`stream`]: START_REPLICATION, CopyBoth, keepalives and standby status updates.
//! - [`clock`]: send times and round trips the stream carries (for the clock skew).
//! - [`reconnect`]: backoff policy and a stream that reconnects from the flushed LSN.
//! - [`error`]: errors with a retry kind (transient / needs operator / bug).
//! - `wire`: backend message framing (internal).
//!
//! ```no_run
//! # async fn demo() -> Result<(), pgmesh::source::SourceError> {
//! use pgmesh::source::*;
//! let cfg = SourceConfig::from_dsn("host=db-a user=rep dbname=app sslmode=verify-full")?;
//! let conn = ReplicationConnection::connect(&cfg).await?;
//! let mut stream = ReplicationStream::start(conn, &StreamConfig::new("pgmesh_b", &["pgmesh"]),
//!     pgmesh::Lsn::ZERO).await?;
//! while let Some(ev) = stream.next_event().await? {
//!     if let ReplicationEvent::XLogData(x) = ev {
//!         // decode x.data (pgoutput), apply, then:
//!         stream.set_flushed(x.wal_start);
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod clock;
pub mod commands;
pub mod config;
pub mod connection;
pub mod error;
pub mod reconnect;
pub mod stream;
pub mod tls;
mod wire;

pub use commands::{
    create_slot, drop_slot, identify_system, slot_exists, slot_info, CreateSlot, CreatedSlot,
    SlotInfo, SnapshotAction, SystemIdentity,
};
pub use config::{Password, SourceConfig, SslMode};
pub use connection::{ReplicationConnection, Row};
pub use error::{DbError, ErrorKind, SourceError};
pub use reconnect::{connect_and_start, Backoff, BackoffPolicy, ReconnectingStream};
pub use stream::{
    pgoutput_options, start_replication_command, OutputPlugin, PgoutputOptions, ReplicationEvent,
    ReplicationStream, StreamConfig, Streaming,
};
