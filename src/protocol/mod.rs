//! Pure decoding of what a walsender sends: no I/O, no clock, no globals.
//!
//! - [`pgoutput`]: the pgoutput logical replication protocol, versions 1–4.
//! - [`wal2json`]: wal2json `format-version 2` JSON lines.
//! - [`replication`]: the CopyData envelopes of streaming replication (XLogData,
//!   primary keepalive, standby status update).

pub mod pgoutput;
pub mod replication;
pub mod wal2json;
