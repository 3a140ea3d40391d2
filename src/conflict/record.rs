//! The words of a ledger row (`pgmesh.conflicts`): what happened (`kind`) and what was
//! done about it (`resolution`). Enums, so that every writer uses the same names and
//! every reader (`pgmesh conflicts --kind`) knows all of them.

use serde::{Serialize, Serializer};

use super::{ConflictKind, Winner};

/// What a ledger row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LedgerKind {
    /// A decision between two versions of a row.
    Conflict(ConflictKind),
    /// A peer's TRUNCATE removed local rows older than it (newer ones stay).
    Truncate,
    /// `pgmesh repair` made a node's row match the winner's.
    Repair,
}

impl LedgerKind {
    /// Every kind, in the order `pgmesh conflicts` lists them.
    #[must_use]
    pub fn all() -> Vec<LedgerKind> {
        ConflictKind::ALL
            .into_iter()
            .map(LedgerKind::Conflict)
            .chain([LedgerKind::Truncate, LedgerKind::Repair])
            .collect()
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Conflict(k) => k.as_str(),
            LedgerKind::Truncate => "truncate",
            LedgerKind::Repair => "repair",
        }
    }
}

impl Serialize for LedgerKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What was done about a ledger row's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// The local version won; the remote change was not applied.
    Skipped,
    /// The remote change was applied as it came.
    Applied,
    /// A remote insert met a row: written as an update.
    AppliedAsUpdate,
    /// A remote update met no row (or a tombstone): written as an insert.
    AppliedAsInsert,
    /// A remote TRUNCATE: the older local rows were deleted.
    AppliedAsDelete,
    /// A remote delete met no row: its tombstone is kept so an older write arriving later
    /// loses.
    TombstoneRecorded,
    /// A remote row claimed a unique value a local row held; the local row lost and was
    /// deleted.
    LocalRowDeleted,
    /// The peer decided a unique-value conflict; the losing local row was deleted.
    RemovedByPeerDecision,
    /// `pgmesh repair` copied the winner's row.
    RepairedCopy,
    /// `pgmesh repair` deleted a row the winner does not have.
    RepairedDelete,
}

impl Resolution {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Skipped => "skipped",
            Resolution::Applied => "applied",
            Resolution::AppliedAsUpdate => "applied_as_update",
            Resolution::AppliedAsInsert => "applied_as_insert",
            Resolution::AppliedAsDelete => "applied_as_delete",
            Resolution::TombstoneRecorded => "tombstone_recorded",
            Resolution::LocalRowDeleted => "local_row_deleted",
            Resolution::RemovedByPeerDecision => "removed_by_peer_decision",
            Resolution::RepairedCopy => "repaired_copy",
            Resolution::RepairedDelete => "repaired_delete",
        }
    }

    /// What the apply does with a decided conflict.
    #[must_use]
    pub fn of(kind: ConflictKind, winner: Winner) -> Resolution {
        match (kind, winner) {
            (_, Winner::Local) => Resolution::Skipped,
            (ConflictKind::InsertExists, Winner::Remote) => Resolution::AppliedAsUpdate,
            (
                ConflictKind::UpdateMissing
                | ConflictKind::UpdateDeleted
                | ConflictKind::InsertDeleted,
                Winner::Remote,
            ) => Resolution::AppliedAsInsert,
            (ConflictKind::DeleteMissing, Winner::Remote) => Resolution::TombstoneRecorded,
            (ConflictKind::UniqueExists, Winner::Remote) => Resolution::LocalRowDeleted,
            (_, Winner::Remote) => Resolution::Applied,
        }
    }
}

impl Serialize for Resolution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for Winner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_unique_and_serialize_as_their_names() {
        let all = LedgerKind::all();
        let mut names: Vec<&str> = all.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert_eq!(
            serde_json::to_string(&LedgerKind::Truncate).unwrap(),
            "\"truncate\""
        );
        assert_eq!(
            serde_json::to_string(&Resolution::of(ConflictKind::InsertExists, Winner::Remote))
                .unwrap(),
            "\"applied_as_update\""
        );
    }
}
