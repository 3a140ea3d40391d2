//! The etcd key layout under `/pgmesh/<cluster>/` and the JSON values stored there.
//!
//! | key | bound to | value |
//! |---|---|---|
//! | `owner/<endpoint>` | owner's lease | [`OwnerValue`]; the key's mod revision is the epoch |
//! | `member/<node>` | node's lease | [`MemberValue`]: alive while the key exists |
//! | `status/<node>` | nothing | [`MemberValue`]: last known, survives the node (RPO) |
//! | `maintenance/<node>` | nothing | [`MaintenanceValue`]: `pgmesh fence` |
//! | `switchover/<endpoint>` | nothing | [`SwitchoverValue`]: a planned move in progress |
//! | `events/<ms>-<node>-<n>` | nothing | [`super::event::Event`]: history for `status` |
//!
//! The epoch of an ownership is the owner key's mod revision: etcd's revision is global
//! and only grows, and every change of owner is a write, so a later owner always has a
//! larger epoch — also across expiry and re-creation of the key.

use serde::{Deserialize, Serialize};

/// Key builder for one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    #[must_use]
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("/pgmesh/{cluster}/"),
        }
    }

    /// Everything of this cluster (one range read gives the whole view).
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    #[must_use]
    pub fn owner(&self, endpoint: &str) -> String {
        format!("{}owner/{endpoint}", self.prefix)
    }

    #[must_use]
    pub fn member(&self, node: &str) -> String {
        format!("{}member/{node}", self.prefix)
    }

    #[must_use]
    pub fn status(&self, node: &str) -> String {
        format!("{}status/{node}", self.prefix)
    }

    #[must_use]
    pub fn maintenance(&self, node: &str) -> String {
        format!("{}maintenance/{node}", self.prefix)
    }

    #[must_use]
    pub fn switchover(&self, endpoint: &str) -> String {
        format!("{}switchover/{endpoint}", self.prefix)
    }

    #[must_use]
    pub fn events(&self) -> String {
        format!("{}events/", self.prefix)
    }

    /// What a key under the prefix is: `(kind, name)`, e.g. `("owner", "app-eu")`.
    #[must_use]
    pub fn classify<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        key.strip_prefix(self.prefix.as_str())?.split_once('/')
    }
}

/// `owner/<endpoint>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerValue {
    pub node: String,
    /// Unix milliseconds when this ownership began.
    pub since_ms: i64,
    /// Why it began (home, failover, switchover, forced).
    pub reason: String,
}

/// `member/<node>` and `status/<node>`: what an agent publishes every probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberValue {
    pub node: String,
    pub lease: i64,
    /// healthy | degraded | failed
    pub health: String,
    pub score: f64,
    /// Whether the local primary is fenced (as last read from it).
    pub fenced: Option<bool>,
    pub writable: bool,
    /// The local primary's WAL insert position (pg_current_wal_lsn), when known.
    pub wal_lsn: Option<String>,
    /// How far this region's apply of each peer is behind, in bytes, when known.
    #[serde(default)]
    pub apply_lag_bytes: Option<u64>,
    /// What the traffic layers this agent drives show: one line each (`pgbouncer bouncer-a:
    /// app-eu -> a (10.0.1.5:5432) serving`, `dns app-eu: confirmed on 2/2 servers ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<String>,
    pub at_ms: i64,
}

/// `maintenance/<node>`: an operator fence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceValue {
    pub reason: String,
    pub at_ms: i64,
}

/// `switchover/<endpoint>`: written by `pgmesh switchover` (or an automatic failback),
/// carried out by the old owner's agent, finished when the owner key names `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverValue {
    pub to: String,
    pub from: String,
    /// The epoch of the ownership being moved: a switchover never moves a newer one.
    pub epoch: i64,
    pub requested_at_ms: i64,
    /// Unix ms after which the old owner gives up and takes writes again.
    pub deadline_ms: i64,
    pub requested_by: String,
    /// requested | draining | moved | aborted
    pub state: String,
    /// The old owner's WAL position when its writes stopped.
    #[serde(default)]
    pub stop_lsn: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// Unix milliseconds now (for values people read; decisions use the monotonic clock).
#[must_use]
pub fn now_ms() -> i64 {
    crate::pgtime::unix_micros_now() / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_cluster_prefix_and_classify_back() {
        let k = Keys::new("prod");
        assert_eq!(k.owner("app-eu"), "/pgmesh/prod/owner/app-eu");
        assert_eq!(k.classify(&k.owner("app-eu")), Some(("owner", "app-eu")));
        assert_eq!(k.classify(&k.member("a")), Some(("member", "a")));
        assert_eq!(k.classify("/pgmesh/other/owner/x"), None);
        assert!(k.events().starts_with(k.prefix()));
    }
}
