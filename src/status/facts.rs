//! What `pgmesh status` reads on a node, as plain data (filled by [`super::probe`],
//! judged by [`super::assess`]).

use std::collections::BTreeMap;

/// A node's answers, or why it gave none.
#[derive(Clone, Debug)]
pub struct NodeProbe {
    pub name: String,
    /// `host:port/dbname`, never the DSN (it may hold a password).
    pub target: String,
    pub facts: Result<NodeFacts, String>,
}

#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    /// e.g. `15.20`.
    pub server_version: String,
    pub in_recovery: bool,
    /// Requested slots (one per peer that reads this node): `None` when missing.
    pub slots: BTreeMap<String, Option<SlotFacts>>,
    /// Requested origins (one per peer applied into this node): `None` when missing.
    pub origins: BTreeMap<String, Option<OriginFacts>>,
    /// Sessions named `pgmesh apply` in this database (the sidecar's writers, one per
    /// peer; with two nodes that is the one direction into this node — with more, the
    /// name alone cannot tell which peer a session serves).
    pub apply_sessions: i64,
    /// Ledger records of the last hour by `remote_origin`; `None` without a ledger.
    pub recent_conflicts: Option<Vec<(Option<String>, i64)>>,
    /// The node's newest commit: (time, name of its replication origin if any).
    pub last_commit: Option<(String, Option<String>)>,
    /// The sidecar's clock skew estimates by peer (`pgmesh.clock_skew`); empty when none
    /// was recorded or the table is missing (then a note says so).
    pub clock_skew: BTreeMap<String, SkewFacts>,
    /// Things that could not be read (permissions, versions); reported, not fatal.
    pub notes: Vec<String>,
}

/// One logical slot, from `pg_replication_slots` and its walsender.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlotFacts {
    pub active: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL the slot keeps on disk.
    pub retained_bytes: Option<i64>,
    /// The walsender streaming the slot (`pg_stat_replication`), when there is one.
    pub walsender: Option<WalsenderFacts>,
    pub pending: Pending,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct WalsenderFacts {
    pub pid: i32,
    /// `None` when the role may not see walsender details (needs pg_read_all_stats).
    pub state: Option<String>,
    pub application_name: Option<String>,
    /// Seconds; `None` when PostgreSQL has no measurement (caught up, or just started).
    pub flush_lag: Option<f64>,
    pub replay_lag: Option<f64>,
}

/// The oldest change the slot holds for its reader (checked only while nobody streams it).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Pending {
    #[default]
    NotChecked,
    /// No transaction waits.
    Nothing,
    /// The oldest waiting transaction committed at `commit_time`, `seconds` ago.
    Since { commit_time: String, seconds: f64 },
    /// The peek failed or found only transactions the reader would skip.
    Unknown(String),
}

/// One row of `pgmesh.clock_skew`: this node's clock minus the peer's, as its sidecar
/// last estimated it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SkewFacts {
    pub skew_us: i64,
    pub uncertainty_us: i64,
    pub samples: i32,
    /// How long ago it was written, by this node's clock.
    pub age_seconds: f64,
}

/// A replication origin's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginFacts {
    /// Source LSN of the end of the last transaction applied; `None` before the first.
    pub remote_lsn: Option<String>,
}
