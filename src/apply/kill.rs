//! Unique-constraint decisions shared with the peer ("kills").
//!
//! When a row loses to another row holding the same value of a unique constraint, the node
//! that decides removes it, but the peer may never meet the two rows side by side (one of
//! them came and went there before the other arrived), so it cannot reach the same
//! decision by itself. The deciding node therefore tells it: the decision goes into
//! `pgmesh.outbox` in the apply transaction and, right after that commits, into the WAL as
//! a transactional logical message with the prefix [`KILL_PREFIX`], which the peer's
//! sidecar applies in stream order (see migrations/V2).
//!
//! A kill is a delete of the losing row dated by the winning write. The receiver removes
//! its own version of the row when that version is one the decider had seen (written by
//! the decider and not newer than the version it removed) or, written elsewhere, not newer
//! than the winning write (the decider will compare that version with the winner's
//! tombstone and drop it too). Newer versions stay on both nodes.

use serde::{Deserialize, Serialize};

use crate::protocol::pgoutput::PgTimestamp;

/// Prefix of the logical messages that carry kills.
pub const KILL_PREFIX: &str = "pgmesh.kill";

/// A version of a row: commit time (unknown for rows written before commit timestamps
/// were tracked: older than everything) and the node that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Microseconds since 2000-01-01 UTC (PostgreSQL's epoch), as pgoutput sends them.
    pub ts: Option<i64>,
    pub node: String,
}

impl Version {
    #[must_use]
    pub fn new(ts: Option<PgTimestamp>, node: &str) -> Version {
        Version {
            ts: ts.map(|t| t.0),
            node: node.to_string(),
        }
    }

    #[must_use]
    pub fn timestamp(&self) -> Option<PgTimestamp> {
        self.ts.map(PgTimestamp)
    }

    /// Last-writer-wins order: commit time, then node name (the greater name wins a tie),
    /// the same order [`crate::conflict::newer`] decides by.
    #[must_use]
    pub fn not_newer_than(&self, other: &Version) -> bool {
        (self.ts, &self.node) <= (other.ts, &other.node)
    }
}

/// One row removed by a unique-constraint decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    pub schema: String,
    pub table: String,
    /// Key values as text, in key-column order.
    pub key: Vec<String>,
    /// The version of the row the decider removed (or refused).
    pub loser: Version,
    /// The write that holds the value now.
    pub winner: Version,
    /// The node that decided.
    pub decider: String,
}

impl Kill {
    /// Whether this node's version `local` of the row goes.
    #[must_use]
    pub fn removes(&self, local: &Version) -> bool {
        if local.node == self.decider {
            local.not_newer_than(&self.loser)
        } else {
            local.not_newer_than(&self.winner)
        }
    }

    /// Parses a message body.
    pub fn parse(body: &[u8]) -> Result<Kill, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ts: i64, node: &str) -> Version {
        Version {
            ts: Some(ts),
            node: node.into(),
        }
    }

    fn kill() -> Kill {
        Kill {
            schema: "public".into(),
            table: "t".into(),
            key: vec!["1".into()],
            loser: v(10, "b"),
            winner: v(20, "a"),
            decider: "b".into(),
        }
    }

    #[test]
    fn versions_the_decider_saw_go_newer_ones_stay() {
        let k = kill();
        assert!(k.removes(&v(10, "b")));
        assert!(k.removes(&v(5, "b")));
        // Written by the decider after its decision.
        assert!(!k.removes(&v(11, "b")));
    }

    #[test]
    fn versions_from_elsewhere_are_compared_with_the_winner() {
        let k = kill();
        assert!(k.removes(&v(15, "a")));
        assert!(k.removes(&v(20, "a")));
        assert!(!k.removes(&v(21, "a")));
        assert!(k.removes(&Version {
            ts: None,
            node: "a".into()
        }));
    }

    #[test]
    fn ties_follow_node_order() {
        let mut k = kill();
        k.winner = v(20, "b");
        k.decider = "d".into();
        assert!(!k.removes(&v(20, "c")));
        assert!(k.removes(&v(20, "a")));
    }

    #[test]
    fn round_trips_as_json() {
        let k = kill();
        let text = serde_json::to_vec(&k).unwrap();
        assert_eq!(Kill::parse(&text).unwrap(), k);
        assert!(Kill::parse(b"{}").is_err());
    }
}
