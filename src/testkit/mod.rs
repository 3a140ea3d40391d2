//! Throwaway PostgreSQL clusters for tests, benchmarks and the local lab.
//!
//! A [`Cluster`] is initdb'd into a fresh directory under the system temp dir as the
//! `postgres` OS user (the server refuses to run as root), listens on 127.0.0.1 on a free
//! port with the settings logical replication needs, and is stopped and removed when
//! dropped — also when a test panics. Clusters are independent, so tests can run in
//! parallel.
//!
//! The control plane's tests use the same idea for its other real programs: an
//! [`EtcdCluster`] of n etcd members on free loopback ports, whose members tests can crash,
//! freeze and restart, and a [`Prometheus`] that scrapes given targets every second. Both
//! are killed and their directories removed on drop (`scripts/install-control.sh` installs
//! the programs). The traffic layers the agents drive run the same way: [`Pgbouncer`],
//! [`Haproxy`], [`KnotDns`] (RFC 2136 with TSIG) and [`Alertmanager`].

mod alertmanager;
mod binaries;
mod cluster;
mod daemon;
mod etcd;
pub mod faketime;
mod haproxy;
mod knot;
mod loopback;
mod own_runtime;
mod pgbouncer;
mod prometheus;
mod writer;

pub use alertmanager::{ActiveAlert, Alertmanager, Received};
pub use binaries::{bin_dir, versions_under_test, SUPPORTED_MAJORS};
pub use cluster::{running_as_root, Cluster, ClusterBuilder, TestkitError};
pub use daemon::Daemon;
pub use etcd::EtcdCluster;
pub use haproxy::{haproxy_config, haproxy_config_with, Haproxy, HaproxyServer, HealthChecks};
pub use knot::{KnotDns, KNOT_KEY_NAME};
pub use loopback::{http_get_at, HttpReply};
pub use own_runtime::spawn_with_runtime;
pub use pgbouncer::{Pgbouncer, PgbouncerPaths, PGBOUNCER_ADMIN};
pub use prometheus::{PromSample, Prometheus};
pub use writer::{AckWriter, Router, WriterReport};
