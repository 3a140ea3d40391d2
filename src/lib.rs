//! pgmesh: active-active replication between stock PostgreSQL 15–18 primaries.
//!
//! The modules mirror the data path of one direction (see README "Architecture"):
//! `source` (replication connection) → `protocol` (pure pgoutput / wal2json decoding)
//! → `filter` (origin filter) → `txn` (transaction assembly) → later `batch`, `apply`,
//! `conflict`. `testkit` starts throwaway PostgreSQL clusters for tests, benchmarks and
//! the local lab; `cli` holds the commands of the `pgmesh` binary.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod filter;
pub mod lsn;
pub mod protocol;
pub mod setup;
pub mod source;
pub mod testkit;
pub mod txn;

pub use lsn::Lsn;
