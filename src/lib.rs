//! pgmesh: active-active replication between stock PostgreSQL 15–18 primaries.
//!
//! The modules mirror the data path of one direction (see README "Architecture"):
//! `source` (replication connection; `sqlconn` opens the plain SQL sessions with the same
//! TLS rules) → `protocol` (pure pgoutput / wal2json decoding)
//! → `filter` (origin filter) → `batch` (per-key collapse into chunks) → `apply`
//! (set-based writes, ledger, origin progress) with `conflict` (pure last-writer-wins
//! decisions); `sidecar` runs that path per peer. `config` and `setup` are the
//! operator side (TOML config, preflight, schema, slots, origins, triggers). `testkit` starts throwaway PostgreSQL
//! clusters for tests, benchmarks and the local lab; `cli` holds the binary's commands; `observe` (HTTP health and metrics) and `guardrail`
//! (slot WAL limits) are the sidecar's operations side.
#![deny(unsafe_code)]

pub mod apply;
pub mod batch;
pub mod cli;
pub mod config;
pub mod conflict;
pub mod control;
pub mod ddl;
pub mod error_kind;
pub mod failpoint;
pub mod filter;
pub mod guardrail;
pub mod lab;
pub mod ledger;
pub mod lsn;
pub mod observe;
pub mod pgtime;
pub mod protocol;
pub mod sequences;
pub mod setup;
pub mod sidecar;
pub mod source;
pub mod sqlconn;
pub mod sqlquote;
pub mod status;
pub mod sync;
pub mod table;
pub mod testkit;
pub mod text_table;
pub mod traffic;
pub mod txn;
pub mod verify;

pub use error_kind::ErrorKind;
pub use lsn::Lsn;
