//! The decision table for one incoming row change.

use crate::protocol::pgoutput::PgTimestamp;

/// What the remote change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteOp {
    Insert,
    /// An update; its image may lack unchanged-TOAST columns, which the apply step then
    /// takes from the peer when the row must be written whole.
    Update,
    Delete,
}

/// The remote version: when and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVersion<'a> {
    pub op: RemoteOp,
    pub commit_ts: PgTimestamp,
    /// Node that wrote it (the peer this stream comes from).
    pub node: &'a str,
}

/// What this node holds for the row's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalVersion<'a> {
    /// A row exists. `commit_ts` is `None` when its commit timestamp is no longer known
    /// (frozen or truncated away): it then counts as older than any remote change.
    Row {
        commit_ts: Option<PgTimestamp>,
        node: &'a str,
    },
    /// The row was deleted here (a tombstone); same convention for `commit_ts`.
    Deleted {
        commit_ts: Option<PgTimestamp>,
        node: &'a str,
    },
    /// Never seen, or tombstone expired.
    Absent,
}

/// The conflict names recorded in `pgmesh.conflicts.kind` (PostgreSQL 18's names where
/// it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConflictKind {
    InsertExists,
    InsertDeleted,
    UpdateOriginDiffers,
    UpdateMissing,
    UpdateDeleted,
    DeleteOriginDiffers,
    DeleteMissing,
    /// A row with another primary key holds a value of one of the table's other unique
    /// constraints.
    UniqueExists,
}

impl ConflictKind {
    /// Every kind, for readers of the ledger that validate a kind name.
    pub const ALL: [ConflictKind; 8] = [
        ConflictKind::InsertExists,
        ConflictKind::InsertDeleted,
        ConflictKind::UpdateOriginDiffers,
        ConflictKind::UpdateMissing,
        ConflictKind::UpdateDeleted,
        ConflictKind::DeleteOriginDiffers,
        ConflictKind::DeleteMissing,
        ConflictKind::UniqueExists,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::InsertExists => "insert_exists",
            ConflictKind::InsertDeleted => "insert_deleted",
            ConflictKind::UpdateOriginDiffers => "update_origin_differs",
            ConflictKind::UpdateMissing => "update_missing",
            ConflictKind::UpdateDeleted => "update_deleted",
            ConflictKind::DeleteOriginDiffers => "delete_origin_differs",
            ConflictKind::DeleteMissing => "delete_missing",
            ConflictKind::UniqueExists => "unique_exists",
        }
    }
}

/// What to do with the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the remote image as a new row.
    Insert,
    /// Overwrite the existing row with the remote image (absent columns kept).
    Update,
    /// Delete the existing row and record a tombstone.
    Delete,
    /// Only record a tombstone (the row is already gone here).
    Tombstone,
    /// Leave the row as it is.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Local,
    Remote,
}

impl Winner {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Winner::Local => "local",
            Winner::Remote => "remote",
        }
    }
}

/// The decision: an action, and the conflict to record if there was one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub conflict: Option<(ConflictKind, Winner)>,
}

impl Decision {
    fn clean(action: Action) -> Decision {
        Decision {
            action,
            conflict: None,
        }
    }

    fn conflict(kind: ConflictKind, winner: Winner, if_remote: Action) -> Decision {
        Decision {
            action: match winner {
                Winner::Remote => if_remote,
                Winner::Local => Action::Skip,
            },
            conflict: Some((kind, winner)),
        }
    }
}

/// Who wins between a local version and the remote one: later commit timestamp, then the
/// greater node name. An unknown local timestamp loses.
#[must_use]
pub fn newer(
    local_ts: Option<PgTimestamp>,
    local_node: &str,
    remote: &RemoteVersion<'_>,
) -> Winner {
    match local_ts {
        None => Winner::Remote,
        Some(l) if remote.commit_ts > l => Winner::Remote,
        Some(l) if remote.commit_ts < l => Winner::Local,
        Some(_) if remote.node > local_node => Winner::Remote,
        Some(_) => Winner::Local,
    }
}

/// Decides what to do with `remote` given what this node holds.
#[must_use]
pub fn decide(local: &LocalVersion<'_>, remote: &RemoteVersion<'_>) -> Decision {
    use Action as A;
    use ConflictKind as K;
    match (local, remote.op) {
        // The row was last written by this same peer's stream: its order is authoritative.
        (LocalVersion::Row { node, .. }, op) if *node == remote.node => match op {
            RemoteOp::Insert | RemoteOp::Update => Decision::clean(A::Update),
            RemoteOp::Delete => Decision::clean(A::Delete),
        },
        (LocalVersion::Row { commit_ts, node }, op) => {
            let w = newer(*commit_ts, node, remote);
            match op {
                RemoteOp::Insert => Decision::conflict(K::InsertExists, w, A::Update),
                RemoteOp::Update => Decision::conflict(K::UpdateOriginDiffers, w, A::Update),
                RemoteOp::Delete => Decision::conflict(K::DeleteOriginDiffers, w, A::Delete),
            }
        }
        // Deleted by this peer's own stream earlier: a later insert or update of the same
        // key from it is the authoritative order (key reuse), a repeated delete is a no-op.
        (LocalVersion::Deleted { node, .. }, op) if *node == remote.node => match op {
            RemoteOp::Insert | RemoteOp::Update => Decision::clean(A::Insert),
            RemoteOp::Delete => Decision::clean(A::Skip),
        },
        (LocalVersion::Deleted { commit_ts, node }, op) => {
            let w = newer(*commit_ts, node, remote);
            match op {
                RemoteOp::Insert => Decision::conflict(K::InsertDeleted, w, A::Insert),
                RemoteOp::Update => Decision::conflict(K::UpdateDeleted, w, A::Insert),
                // Deleted on both sides: nothing is discarded, the later tombstone stays.
                RemoteOp::Delete => Decision::clean(match w {
                    Winner::Remote => A::Tombstone,
                    Winner::Local => A::Skip,
                }),
            }
        }
        (LocalVersion::Absent, RemoteOp::Insert) => Decision::clean(A::Insert),
        (LocalVersion::Absent, RemoteOp::Update) => Decision {
            action: A::Insert,
            conflict: Some((K::UpdateMissing, Winner::Remote)),
        },
        (LocalVersion::Absent, RemoteOp::Delete) => Decision {
            action: A::Tombstone,
            conflict: Some((K::DeleteMissing, Winner::Remote)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn remote(op: RemoteOp, ts: i64, node: &str) -> RemoteVersion<'_> {
        RemoteVersion {
            op,
            commit_ts: PgTimestamp(ts),
            node,
        }
    }

    const UPD: RemoteOp = RemoteOp::Update;

    type Case<'a> = (
        LocalVersion<'a>,
        RemoteVersion<'a>,
        Action,
        Option<(ConflictKind, Winner)>,
    );

    #[test]
    fn decision_table() {
        let row = |ts, node| LocalVersion::Row {
            commit_ts: Some(PgTimestamp(ts)),
            node,
        };
        let del = |ts, node| LocalVersion::Deleted {
            commit_ts: Some(PgTimestamp(ts)),
            node,
        };
        let cases: Vec<Case<'_>> = vec![
            (
                LocalVersion::Absent,
                remote(RemoteOp::Insert, 5, "a"),
                Action::Insert,
                None,
            ),
            (row(9, "a"), remote(UPD, 5, "a"), Action::Update, None),
            (
                row(9, "a"),
                remote(RemoteOp::Delete, 5, "a"),
                Action::Delete,
                None,
            ),
            (
                row(4, "b"),
                remote(RemoteOp::Insert, 5, "a"),
                Action::Update,
                Some((ConflictKind::InsertExists, Winner::Remote)),
            ),
            (
                row(6, "b"),
                remote(RemoteOp::Insert, 5, "a"),
                Action::Skip,
                Some((ConflictKind::InsertExists, Winner::Local)),
            ),
            (
                row(5, "b"),
                remote(UPD, 5, "a"),
                Action::Skip,
                Some((ConflictKind::UpdateOriginDiffers, Winner::Local)),
            ),
            (
                row(5, "a"),
                remote(UPD, 5, "b"),
                Action::Update,
                Some((ConflictKind::UpdateOriginDiffers, Winner::Remote)),
            ),
            (
                row(5, "c"),
                remote(UPD, 5, "b"),
                Action::Skip,
                Some((ConflictKind::UpdateOriginDiffers, Winner::Local)),
            ),
            (
                row(4, "b"),
                remote(RemoteOp::Delete, 5, "a"),
                Action::Delete,
                Some((ConflictKind::DeleteOriginDiffers, Winner::Remote)),
            ),
            (
                LocalVersion::Absent,
                remote(UPD, 5, "a"),
                Action::Insert,
                Some((ConflictKind::UpdateMissing, Winner::Remote)),
            ),
            (
                LocalVersion::Absent,
                remote(RemoteOp::Delete, 5, "a"),
                Action::Tombstone,
                Some((ConflictKind::DeleteMissing, Winner::Remote)),
            ),
            (
                del(4, "b"),
                remote(UPD, 5, "a"),
                Action::Insert,
                Some((ConflictKind::UpdateDeleted, Winner::Remote)),
            ),
            (
                del(6, "b"),
                remote(UPD, 5, "a"),
                Action::Skip,
                Some((ConflictKind::UpdateDeleted, Winner::Local)),
            ),
            (
                del(6, "b"),
                remote(RemoteOp::Insert, 5, "a"),
                Action::Skip,
                Some((ConflictKind::InsertDeleted, Winner::Local)),
            ),
            (
                del(6, "b"),
                remote(RemoteOp::Delete, 5, "a"),
                Action::Skip,
                None,
            ),
            (
                del(6, "a"),
                remote(RemoteOp::Insert, 7, "a"),
                Action::Insert,
                None,
            ),
            (
                LocalVersion::Row {
                    commit_ts: None,
                    node: "b",
                },
                remote(UPD, 5, "a"),
                Action::Update,
                Some((ConflictKind::UpdateOriginDiffers, Winner::Remote)),
            ),
        ];
        for (local, rem, action, conflict) in cases {
            let d = decide(&local, &rem);
            assert_eq!(
                (d.action, d.conflict),
                (action, conflict),
                "{local:?} vs {rem:?}"
            );
        }
    }

    proptest! {
        /// Two nodes holding each other's version reach the same winner: on node `l` the
        /// local version is l's and the remote is r's; on node `r` the reverse.
        #[test]
        fn both_nodes_pick_the_same_winner(lt in -5i64..5, rt in -5i64..5, swap in any::<bool>()) {
            let (l, r) = if swap { ("b", "a") } else { ("a", "b") };
            let on_l = newer(Some(PgTimestamp(lt)), l, &remote(UPD, rt, r));
            let on_r = newer(Some(PgTimestamp(rt)), r, &remote(UPD, lt, l));
            // On l, "Remote" means r's version; on r, "Local" means r's version.
            prop_assert_eq!(on_l == Winner::Remote, on_r == Winner::Local);
        }
    }
}
