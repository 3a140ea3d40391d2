//! Moving clients' traffic to the region that owns an endpoint: pgbouncer (PAUSE, repoint,
//! RESUME through its admin console), DNS (one RFC 2136 UPDATE with TSIG per endpoint,
//! confirmed on every authoritative server), hooks (a command or an HTTP webhook per event)
//! and Alertmanager (health alerts). HAProxy needs nothing here: it polls the agent's
//! `/owner/ENDPOINT` check (see `examples/haproxy.cfg`).
//!
//! Part of the control plane (`pgmesh agent`); nothing here runs in the sidecar. A failing
//! integration is reported and retried, never allowed to hold up fencing.

pub mod alert;
pub mod dns;
pub mod hook;
pub mod pgbouncer;
