//! Deciding how to fix one difference (pure): which node's version wins, and what to do
//! on the other node.
//!
//! Without `--prefer`, last writer wins as in the apply path
//! ([`crate::conflict::newer`]): each node's version is dated by the commit that wrote
//! it (a row by its `xmin`'s commit timestamp, a deleted row by its tombstone); the later
//! one wins, equal times go to the greater name of the node that wrote the version, then
//! to the greater node name. A version whose time is unknown (no tombstone for a missing
//! row, a commit timestamp no longer kept) loses to any known one; when neither time is
//! known nothing is decided and `--prefer` must choose.
//!
//! A table without a primary key has no row versions to compare (a row is only its
//! content), so only `--prefer` can say which node's number of copies is right.

use crate::conflict::{newer, RemoteOp, RemoteVersion, Winner};
use crate::pgtime::rfc3339;
use crate::protocol::pgoutput::PgTimestamp;

/// What a node holds for a key, with when and by which node it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// A row, written at `ts` (unknown when the commit timestamp is gone) by `writer`.
    Row {
        ts: Option<PgTimestamp>,
        writer: String,
    },
    /// No row, and a tombstone: deleted at `ts` by `writer`.
    Deleted {
        ts: Option<PgTimestamp>,
        writer: String,
    },
    /// No row and no tombstone: nothing says when or whether it was deleted.
    Absent,
}

impl Version {
    fn time(&self) -> Option<(PgTimestamp, &str)> {
        match self {
            Version::Row {
                ts: Some(ts),
                writer,
            }
            | Version::Deleted {
                ts: Some(ts),
                writer,
            } => Some((*ts, writer)),
            _ => None,
        }
    }

    fn is_row(&self) -> bool {
        matches!(self, Version::Row { .. })
    }

    /// `a's row (written 2026-… by a)` for explanations.
    fn describe(&self, node: &str) -> String {
        match self {
            Version::Row { ts, writer } => match ts {
                Some(ts) => format!("{node}'s row (written {} by {writer})", rfc3339(ts.0)),
                None => format!("{node}'s row (write time unknown)"),
            },
            Version::Deleted { ts, writer } => match ts {
                Some(ts) => format!("{node}'s delete ({} by {writer})", rfc3339(ts.0)),
                None => format!("{node}'s delete (time unknown)"),
            },
            Version::Absent => format!("{node}'s missing row (no tombstone)"),
        }
    }
}

/// What repair does about one difference; node indices are 0 and 1 (name order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `from`'s row on node `to` (insert, or update every column).
    Copy { from: usize, to: usize },
    /// Delete the row on node `on`; node `winner`'s missing row wins.
    Delete { on: usize, winner: usize },
    /// (No key.) Insert `n` more copies of the row on node `on`, as `winner` has them.
    AddCopies { on: usize, winner: usize, n: i64 },
    /// (No key.) Delete `n` copies of the row on node `on`, as `winner` lacks them.
    DeleteCopies { on: usize, winner: usize, n: i64 },
    /// Nothing is changed.
    Skip { reason: String },
}

impl Action {
    /// The node whose version wins, if any.
    #[must_use]
    pub fn winner(&self) -> Option<usize> {
        match self {
            Action::Copy { from, .. } => Some(*from),
            Action::Delete { winner, .. }
            | Action::AddCopies { winner, .. }
            | Action::DeleteCopies { winner, .. } => Some(*winner),
            Action::Skip { .. } => None,
        }
    }

    /// The node the fix writes on, if any.
    #[must_use]
    pub fn target(&self) -> Option<usize> {
        match self {
            Action::Copy { to, .. } => Some(*to),
            Action::Delete { on, .. }
            | Action::AddCopies { on, .. }
            | Action::DeleteCopies { on, .. } => Some(*on),
            Action::Skip { .. } => None,
        }
    }
}

/// Which of two versions wins by last-writer-wins, or why none can be chosen.
fn last_writer(nodes: [&str; 2], v: [&Version; 2]) -> Result<(usize, String), String> {
    let why = |w: usize| {
        format!(
            "{} is newer than {}",
            v[w].describe(nodes[w]),
            v[1 - w].describe(nodes[1 - w])
        )
    };
    match (v[0].time(), v[1].time()) {
        (None, None) => Err(format!(
            "neither version's time is known ({}, {}): choose with --prefer NODE",
            v[0].describe(nodes[0]),
            v[1].describe(nodes[1])
        )),
        (Some(_), None) => Ok((0, why(0))),
        (None, Some(_)) => Ok((1, why(1))),
        (Some((t0, w0)), Some((t1, w1))) => {
            let w = if t0 == t1 && w0 == w1 {
                // The same time and writer yet different data: the greater node name
                // decides, as the apply path breaks its last tie.
                1
            } else {
                let remote = RemoteVersion {
                    op: RemoteOp::Update,
                    commit_ts: t1,
                    node: w1,
                };
                match newer(Some(t0), w0, &remote) {
                    Winner::Local => 0,
                    Winner::Remote => 1,
                }
            };
            Ok((w, why(w)))
        }
    }
}

/// Decides a key that differs: `versions` of node 0 and 1, `prefer` the node whose
/// version wins regardless of time. Returns the action and why.
#[must_use]
pub fn decide_key(
    nodes: [&str; 2],
    versions: [&Version; 2],
    prefer: Option<usize>,
) -> (Action, String) {
    let (winner, why) = match prefer {
        Some(p) => (p, format!("--prefer {}", nodes[p])),
        None => match last_writer(nodes, versions) {
            Ok(w) => w,
            Err(reason) => {
                return (
                    Action::Skip {
                        reason: reason.clone(),
                    },
                    reason,
                );
            }
        },
    };
    let loser = 1 - winner;
    let action = match (versions[winner].is_row(), versions[loser].is_row()) {
        (true, _) => Action::Copy {
            from: winner,
            to: loser,
        },
        (false, true) => Action::Delete { on: loser, winner },
        (false, false) => Action::Skip {
            reason: "no row on either node now".into(),
        },
    };
    (action, why)
}

/// Decides a row of a table without a key that has `counts` copies on nodes 0 and 1.
#[must_use]
pub fn decide_copies(
    nodes: [&str; 2],
    counts: [i64; 2],
    prefer: Option<usize>,
) -> (Action, String) {
    let Some(winner) = prefer else {
        let reason = "the table has no primary key, so there is no row version to compare: \
                      choose the node whose copies are right with --prefer NODE"
            .to_string();
        return (
            Action::Skip {
                reason: reason.clone(),
            },
            reason,
        );
    };
    let on = 1 - winner;
    let why = format!(
        "--prefer {}: {} copies there, {} on {}",
        nodes[winner], counts[winner], counts[on], nodes[on]
    );
    let action = match counts[winner] - counts[on] {
        0 => Action::Skip {
            reason: "same number of copies now".into(),
        },
        n if n > 0 => Action::AddCopies { on, winner, n },
        n => Action::DeleteCopies { on, winner, n: -n },
    };
    (action, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: [&str; 2] = ["a", "b"];

    fn row(ts: i64, writer: &str) -> Version {
        Version::Row {
            ts: Some(PgTimestamp(ts)),
            writer: writer.into(),
        }
    }

    fn deleted(ts: i64, writer: &str) -> Version {
        Version::Deleted {
            ts: Some(PgTimestamp(ts)),
            writer: writer.into(),
        }
    }

    fn act(v0: Version, v1: Version, prefer: Option<usize>) -> Action {
        decide_key(NODES, [&v0, &v1], prefer).0
    }

    #[test]
    fn later_write_wins_and_is_copied() {
        assert_eq!(
            act(row(10, "a"), row(20, "b"), None),
            Action::Copy { from: 1, to: 0 }
        );
        assert_eq!(
            act(row(30, "a"), row(20, "b"), None),
            Action::Copy { from: 0, to: 1 }
        );
        // A row missing without a tombstone has no time: the row is restored.
        assert_eq!(
            act(Version::Absent, row(20, "b"), None),
            Action::Copy { from: 1, to: 0 }
        );
        // A row whose time is gone loses to a known delete.
        let old = Version::Row {
            ts: None,
            writer: "a".into(),
        };
        assert_eq!(
            act(old, deleted(5, "b"), None),
            Action::Delete { on: 0, winner: 1 }
        );
    }

    #[test]
    fn a_later_delete_wins_over_an_older_row() {
        assert_eq!(
            act(row(10, "a"), deleted(20, "b"), None),
            Action::Delete { on: 0, winner: 1 }
        );
        assert_eq!(
            act(row(30, "a"), deleted(20, "b"), None),
            Action::Copy { from: 0, to: 1 }
        );
    }

    #[test]
    fn ties_go_to_the_greater_writer_then_the_greater_node() {
        assert_eq!(
            act(row(10, "a"), row(10, "b"), None),
            Action::Copy { from: 1, to: 0 }
        );
        assert_eq!(
            act(row(10, "b"), row(10, "a"), None),
            Action::Copy { from: 0, to: 1 }
        );
        assert_eq!(
            act(row(10, "a"), row(10, "a"), None),
            Action::Copy { from: 1, to: 0 }
        );
    }

    #[test]
    fn unknown_times_need_prefer() {
        let old = Version::Row {
            ts: None,
            writer: "a".into(),
        };
        let (a, why) = decide_key(NODES, [&old, &Version::Absent], None);
        assert!(matches!(a, Action::Skip { .. }));
        assert!(why.contains("--prefer"), "{why}");
        assert_eq!(
            act(old.clone(), Version::Absent, Some(1)),
            Action::Delete { on: 0, winner: 1 }
        );
        assert_eq!(
            act(old, Version::Absent, Some(0)),
            Action::Copy { from: 0, to: 1 }
        );
    }

    #[test]
    fn prefer_overrides_time() {
        assert_eq!(
            act(row(10, "a"), row(20, "b"), Some(0)),
            Action::Copy { from: 0, to: 1 }
        );
        assert_eq!(
            act(row(10, "a"), deleted(5, "b"), Some(1)),
            Action::Delete { on: 0, winner: 1 }
        );
        let (_, why) = decide_key(NODES, [&row(10, "a"), &row(20, "b")], None);
        assert!(
            why.starts_with("b's row (written 2000-01-01T00:00:00.000020Z by b) is newer"),
            "{why}"
        );
    }

    #[test]
    fn copies_follow_the_preferred_node() {
        assert!(matches!(
            decide_copies(NODES, [2, 1], None).0,
            Action::Skip { .. }
        ));
        assert_eq!(
            decide_copies(NODES, [2, 1], Some(0)).0,
            Action::AddCopies {
                on: 1,
                winner: 0,
                n: 1
            }
        );
        assert_eq!(
            decide_copies(NODES, [2, 1], Some(1)).0,
            Action::DeleteCopies {
                on: 0,
                winner: 1,
                n: 1
            }
        );
        assert_eq!(
            decide_copies(NODES, [0, 3], Some(0)).0,
            Action::DeleteCopies {
                on: 1,
                winner: 0,
                n: 3
            }
        );
    }
}
