//! Every conflict path of the apply plan, without PostgreSQL: this node is `a`, the
//! changes come from peer `b`, a third node `c` exists (roident 1 is `b`, 2 is `c`; no
//! roident is a local session). The incoming change committed at 100.

use std::collections::HashMap;

use bytes::Bytes;

use super::*;
use crate::conflict::LedgerKind;
use crate::protocol::pgoutput::PgTimestamp;
use crate::Lsn;

const REMOTE_TS: i64 = 100;

fn origins() -> Origins {
    Origins {
        local_node: "a".into(),
        by_roident: HashMap::from([(1, "b".to_string()), (2, "c".to_string())]),
    }
}

fn sides(origins: &Origins) -> Sides<'_> {
    Sides { origins, peer: "b" }
}

fn map() -> std::sync::Arc<TableMap> {
    crate::txn::testing::table_map(&["id", "v", "doc"], &[0], &[vec![1]])
}

fn key(id: &str) -> Key {
    Key(vec![Bytes::copy_from_slice(id.as_bytes())])
}

fn text(s: &str) -> crate::table::row::Val {
    crate::table::row::Val::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// An incoming change of key `id`; `partial`: its `doc` is unchanged TOAST.
fn change(op: ChangeOp, id: &str, partial: bool, born_in_chunk: bool) -> Pending {
    use crate::table::row::Val;
    let row = (op != ChangeOp::Delete).then(|| {
        Row(vec![
            text(id),
            text("new"),
            if partial { Val::Unchanged } else { text("doc") },
        ])
    });
    Pending {
        op,
        row,
        commit_ts: PgTimestamp(REMOTE_TS),
        lsn: Lsn(0x1000),
        born_in_chunk,
    }
}

/// What this node holds of the key.
#[derive(Clone, Copy, Debug)]
enum Here {
    Nothing,
    /// A row: commit time (`None`: before commit timestamps were tracked), roident.
    Row(Option<i64>, Option<u32>),
    /// A tombstone: commit time, node.
    Gone(i64, &'static str),
}

fn local_row(ts: Option<i64>, roident: Option<u32>) -> LocalRow {
    LocalRow {
        json: r#"{"id": "1", "v": "old", "doc": "old"}"#.into(),
        ts: ts.map(PgTimestamp),
        roident,
    }
}

/// Where the plan put a change.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Put {
    Insert {
        ask_peer: bool,
    },
    Update {
        ask_peer: bool,
    },
    Delete,
    Tombstone,
    Skipped,
    /// Not in the plan at all.
    Nothing,
}

fn plan_one(here: Here, p: &Pending) -> (Put, Vec<ConflictRecord>) {
    let (o, map, k) = (origins(), map(), key("1"));
    let (mut rows, mut tombs) = (LocalRows::new(), Tombstones::new());
    match here {
        Here::Nothing => {}
        Here::Row(ts, roident) => {
            rows.insert(0, local_row(ts, roident));
        }
        Here::Gone(ts, node) => {
            tombs.insert(0, (Some(PgTimestamp(ts)), node.to_string()));
        }
    }
    let plan = plan_table(&map, [(&k, p)], &rows, &tombs, sides(&o));
    let put = match (
        plan.inserts.first(),
        plan.updates.first(),
        plan.deletes.first(),
        plan.tombstones.first(),
    ) {
        (Some(i), None, None, None) => Put::Insert {
            ask_peer: i.ask_peer,
        },
        (None, Some(u), None, None) => Put::Update {
            ask_peer: u.ask_peer,
        },
        // A delete always leaves a tombstone too.
        (None, None, Some(_), Some(_)) => Put::Delete,
        (None, None, None, Some(_)) => Put::Tombstone,
        (None, None, None, None) if plan.skipped == 1 => Put::Skipped,
        (None, None, None, None) if plan.skipped == 0 => Put::Nothing,
        _ => panic!("a change planned twice: {plan:?}"),
    };
    (put, plan.ledger)
}

/// (what, op, partial image, born in chunk, here, planned, ledger)
type Case = (
    &'static str,
    ChangeOp,
    bool,
    bool,
    Here,
    Put,
    Option<(ConflictKind, Winner)>,
);

#[test]
fn every_conflict_path_is_planned_as_last_writer_wins_says() {
    use ChangeOp::{Delete as D, Insert as I, Update as U};
    use ConflictKind as K;
    use Winner::{Local as L, Remote as R};
    let none = None;
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // (what, op, partial image, born in chunk, here, planned, ledger)
        ("insert of a new key", I, false, false, Here::Nothing, Put::Insert { ask_peer: false }, none),
        ("insert over the peer's own newer row: its order counts", I, false, false, Here::Row(Some(200), Some(1)), Put::Update { ask_peer: false }, none),
        ("insert over an older local row", I, false, false, Here::Row(Some(50), None), Put::Update { ask_peer: false }, Some((K::InsertExists, R))),
        ("insert over a newer local row", I, false, false, Here::Row(Some(150), None), Put::Skipped, Some((K::InsertExists, L))),
        ("insert tied with a local row: b > a", I, false, false, Here::Row(Some(REMOTE_TS), None), Put::Update { ask_peer: false }, Some((K::InsertExists, R))),
        ("insert tied with c's row: c > b", I, false, false, Here::Row(Some(REMOTE_TS), Some(2)), Put::Skipped, Some((K::InsertExists, L))),
        ("insert over a row older than commit timestamps", I, false, false, Here::Row(None, None), Put::Update { ask_peer: false }, Some((K::InsertExists, R))),
        ("insert after the peer's own delete: key reuse", I, false, false, Here::Gone(200, "b"), Put::Insert { ask_peer: false }, none),
        ("insert over an older local delete", I, false, false, Here::Gone(50, "a"), Put::Insert { ask_peer: false }, Some((K::InsertDeleted, R))),
        ("insert over a newer local delete", I, false, false, Here::Gone(150, "a"), Put::Skipped, Some((K::InsertDeleted, L))),
        ("update of a missing row", U, false, false, Here::Nothing, Put::Insert { ask_peer: false }, Some((K::UpdateMissing, R))),
        ("update of the peer's own row", U, false, false, Here::Row(Some(50), Some(1)), Put::Update { ask_peer: false }, none),
        ("update over an older local row", U, false, false, Here::Row(Some(50), None), Put::Update { ask_peer: false }, Some((K::UpdateOriginDiffers, R))),
        ("update over a newer row from c", U, false, false, Here::Row(Some(150), Some(2)), Put::Skipped, Some((K::UpdateOriginDiffers, L))),
        ("update over an older local delete", U, false, false, Here::Gone(50, "a"), Put::Insert { ask_peer: false }, Some((K::UpdateDeleted, R))),
        ("update over a newer local delete", U, false, false, Here::Gone(150, "a"), Put::Skipped, Some((K::UpdateDeleted, L))),
        ("delete of the peer's own row", D, false, false, Here::Row(Some(200), Some(1)), Put::Delete, none),
        ("delete of an older local row", D, false, false, Here::Row(Some(50), None), Put::Delete, Some((K::DeleteOriginDiffers, R))),
        ("delete of a newer local row", D, false, false, Here::Row(Some(150), None), Put::Skipped, Some((K::DeleteOriginDiffers, L))),
        ("delete of a missing row", D, false, false, Here::Nothing, Put::Tombstone, Some((K::DeleteMissing, R))),
        ("delete of a row inserted in the chunk, never here", D, false, true, Here::Nothing, Put::Nothing, none),
        ("delete of a row inserted in the chunk over a local row", D, false, true, Here::Row(Some(50), None), Put::Delete, Some((K::DeleteOriginDiffers, R))),
        ("delete over an older delete: the later tombstone", D, false, false, Here::Gone(50, "a"), Put::Tombstone, none),
        ("delete over a newer delete", D, false, false, Here::Gone(150, "a"), Put::Skipped, none),
        ("delete after the peer's own delete", D, false, false, Here::Gone(50, "b"), Put::Skipped, none),
        // Unchanged TOAST: this node's copy is the peer's only where the peer's stream
        // wrote the row last; otherwise the value comes from the peer.
        ("partial update of the peer's own row", U, true, false, Here::Row(Some(50), Some(1)), Put::Update { ask_peer: false }, none),
        ("partial update over a local row", U, true, false, Here::Row(Some(50), None), Put::Update { ask_peer: true }, Some((K::UpdateOriginDiffers, R))),
        ("partial update of a missing row", U, true, false, Here::Nothing, Put::Insert { ask_peer: true }, Some((K::UpdateMissing, R))),
        ("partial update over a local delete", U, true, false, Here::Gone(50, "a"), Put::Insert { ask_peer: true }, Some((K::UpdateDeleted, R))),
    ];
    for &(what, op, partial, born, here, want, conflict) in cases {
        let p = change(op, "1", partial, born);
        let (put, ledger) = plan_one(here, &p);
        assert_eq!(put, want, "{what}");
        let got: Vec<(LedgerKind, Winner)> = ledger.iter().map(|r| (r.kind, r.winner)).collect();
        let want_ledger: Vec<(LedgerKind, Winner)> = conflict
            .map(|(k, w)| (LedgerKind::Conflict(k), w))
            .into_iter()
            .collect();
        assert_eq!(got, want_ledger, "{what}: ledger");
    }
}

#[test]
fn a_ledger_row_names_both_versions() {
    let p = change(ChangeOp::Update, "1", false, false);
    let (_, ledger) = plan_one(Here::Row(Some(50), Some(2)), &p);
    let r = &ledger[0];
    assert_eq!(r.table_name, "public.t");
    assert_eq!(r.key, serde_json::json!({"id": "1"}));
    assert_eq!(r.local_origin.as_deref(), Some("c"));
    assert_eq!(r.remote_origin.as_deref(), Some("b"));
    assert_eq!(
        r.local_row,
        Some(serde_json::json!({"id": "1", "v": "old", "doc": "old"}))
    );
    assert_eq!(
        r.remote_row,
        Some(serde_json::json!({"id": "1", "v": "new", "doc": "doc"}))
    );
    assert!(r.local_commit_ts.is_some() && r.remote_commit_ts.is_some());
    assert_eq!(r.remote_lsn.as_deref(), Some("0/1000"));
    // A tombstone's version: no row image, the deleting node.
    let (_, ledger) = plan_one(Here::Gone(150, "c"), &p);
    assert_eq!(ledger[0].local_row, None);
    assert_eq!(ledger[0].local_origin.as_deref(), Some("c"));
}

#[test]
fn local_versions_are_matched_to_changes_by_position() {
    let (o, map) = (origins(), map());
    let keys = [key("1"), key("2"), key("3")];
    let changes = [
        change(ChangeOp::Insert, "1", false, false),
        change(ChangeOp::Update, "2", false, false),
        change(ChangeOp::Delete, "3", false, false),
    ];
    // Only the second key has a row (newer, local); the third a tombstone of the peer's.
    let rows = LocalRows::from([(1, local_row(Some(150), None))]);
    let tombs = Tombstones::from([(2, (Some(PgTimestamp(50)), "b".to_string()))]);
    let plan = plan_table(&map, keys.iter().zip(&changes), &rows, &tombs, sides(&o));
    let inserted: Vec<&Key> = plan.inserts.iter().map(|p| p.key).collect();
    assert_eq!(inserted, vec![&keys[0]]);
    assert!(plan.updates.is_empty() && plan.deletes.is_empty() && plan.tombstones.is_empty());
    // Key 2 lost to the newer local row, key 3 was deleted by the peer already.
    assert_eq!(plan.skipped, 2);
    assert_eq!(plan.ledger.len(), 1);
    assert_eq!(plan.ledger[0].key, serde_json::json!({"id": "2"}));
}

#[test]
fn an_insert_that_met_a_local_insert_is_decided_again() {
    let (o, map, k) = (origins(), map(), key("1"));
    let p = change(ChangeOp::Insert, "1", false, false);
    let row = p.row.as_ref().unwrap();
    let against =
        |ts, roident| insert_against(&map, (&k, row, &p), &local_row(ts, roident), sides(&o));
    let (update, ledger) = against(Some(50), None);
    assert!(update);
    assert_eq!(
        ledger.map(|r| (r.kind, r.winner)),
        Some((
            LedgerKind::Conflict(ConflictKind::InsertExists),
            Winner::Remote
        ))
    );
    let (update, ledger) = against(Some(150), None);
    assert!(!update);
    assert_eq!(ledger.map(|r| r.winner), Some(Winner::Local));
    // Written by the peer's own stream meanwhile (an earlier chunk): no conflict.
    let (update, ledger) = against(Some(150), Some(1));
    assert!(update);
    assert!(ledger.is_none());
}

#[test]
fn a_unique_value_holder_is_decided_by_last_writer_wins() {
    let (o, map) = (origins(), map());
    let p = change(ChangeOp::Insert, "1", false, false);
    let row = p.row.as_ref().unwrap();
    let hkey = key("9");
    let verdict = |ts, roident, defer| {
        against_holder(
            &map,
            (row, &p),
            (&hkey, &local_row(ts, roident)),
            sides(&o),
            defer,
        )
    };
    match verdict(Some(50), None, true) {
        HolderVerdict::HolderLoses(v, r) => {
            assert_eq!(v, Version::new(Some(PgTimestamp(50)), "a"));
            assert_eq!(r.kind, LedgerKind::Conflict(ConflictKind::UniqueExists));
            assert_eq!(r.winner, Winner::Remote);
            // The ledger row is the holder's: its key, its image.
            assert_eq!(r.key, serde_json::json!({"id": "9"}));
        }
        other => panic!("older holder: {other:?}"),
    }
    match verdict(Some(150), Some(2), true) {
        HolderVerdict::HolderWins(v, r) => {
            assert_eq!(v, Version::new(Some(PgTimestamp(150)), "c"));
            assert_eq!(r.winner, Winner::Local);
        }
        other => panic!("newer holder: {other:?}"),
    }
    // The peer's own row: an ordering artifact while deferring, decided once not.
    assert!(matches!(
        verdict(Some(150), Some(1), true),
        HolderVerdict::SamePeer
    ));
    assert!(matches!(
        verdict(Some(150), Some(1), false),
        HolderVerdict::HolderWins(..)
    ));
}

#[test]
fn unique_values_of_a_row_with_a_null_never_collide() {
    let row = Row(vec![text("1"), crate::table::row::Val::Null, text("x")]);
    assert_eq!(unique_values(&row, &[2, 0]).unwrap(), Some(vec!["x", "1"]));
    assert_eq!(unique_values(&row, &[1, 2]).unwrap(), None);
}
