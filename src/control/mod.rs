//! The control plane (`pgmesh agent`, one per region): which region owns which endpoint,
//! held in etcd under leases; fencing of a region that may not write; health; switchover,
//! failover and rejoin. A process apart from the sidecar: replication goes on when the
//! agent or etcd is down, and the other way round. See README "Control plane".
//!
//! Deciding is apart from doing: [`decide`] is a pure function of what the agent observed
//! (lease, etcd view, health, fence flag) and returns actions with reasons; the agent
//! loop carries them out against etcd and PostgreSQL.

pub mod agent;
pub mod db;
pub mod decide;
pub mod event;
mod execute;
pub mod fence;
pub mod health;
pub mod http;
pub mod keys;
pub mod lease;
pub mod lease_keeper;
pub mod lease_stream;
pub mod placement;
pub mod probe;
pub mod store;
pub mod traffic;
pub mod watchdog;
