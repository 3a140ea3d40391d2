//! Throwaway PostgreSQL clusters for tests, benchmarks and the local lab.
//!
//! A [`Cluster`] is initdb'd into a fresh directory under the system temp dir as the
//! `postgres` OS user (the server refuses to run as root), listens on 127.0.0.1 on a free
//! port with the settings logical replication needs, and is stopped and removed when
//! dropped — also when a test panics. Clusters are independent, so tests can run in
//! parallel.

mod binaries;
mod cluster;

pub use binaries::{bin_dir, versions_under_test, SUPPORTED_MAJORS};
pub use cluster::{Cluster, ClusterBuilder, TestkitError};
