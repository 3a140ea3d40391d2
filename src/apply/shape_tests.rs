use super::*;
use crate::protocol::pgoutput::{RelationColumn, ReplicaIdentity, COLUMN_FLAG_KEY};
use std::collections::HashMap;

const INT4: Oid = 23;
const INT8: Oid = 20;
const TEXT: Oid = 25;
const VARCHAR: Oid = 1043;

fn builtin(oid: Oid, typmod: i32) -> ColumnType {
    let display = match oid {
        INT4 => "integer".to_string(),
        INT8 => "bigint".to_string(),
        TEXT => "text".to_string(),
        VARCHAR => format!("character varying({})", typmod - 4),
        _ => format!("type {oid}"),
    };
    ColumnType::from_catalog(oid, "pg_catalog", "x", typmod, &display)
}

fn col(name: &str, ty: ColumnType) -> ShapeColumn {
    ShapeColumn {
        name: name.into(),
        ty,
        not_null: false,
        has_default: false,
    }
}

/// `(name, type, key)` columns as a stream would send them.
fn remote(cols: &[(&str, ColumnType, bool)]) -> RemoteShape {
    RemoteShape {
        columns: cols
            .iter()
            .map(|(n, t, k)| RemoteColumn {
                name: (*n).into(),
                ty: t.clone(),
                key: *k,
            })
            .collect(),
    }
}

fn table(cols: Vec<ShapeColumn>, pk: &[&str]) -> Shape {
    Shape {
        columns: cols,
        primary_key: pk.iter().map(|s| (*s).to_string()).collect(),
    }
}

fn items() -> Shape {
    table(
        vec![col("id", builtin(INT4, -1)), col("v", builtin(TEXT, -1))],
        &["id"],
    )
}

#[test]
fn same_table_fits() {
    let r = remote(&[
        ("id", builtin(INT4, -1), true),
        ("v", builtin(TEXT, -1), false),
    ]);
    let c = compare(&r, &items(), None, &[]);
    assert!(c.fits(), "{c:?}");
    assert!(c.discard.is_empty() && c.history.is_empty());
}

#[test]
fn a_column_only_the_peer_has_stops() {
    let r = remote(&[
        ("id", builtin(INT4, -1), true),
        ("v", builtin(TEXT, -1), false),
        ("extra", builtin(TEXT, -1), false),
    ]);
    let c = compare(&r, &items(), None, &[]);
    assert_eq!(
        c.differences,
        [Difference::MissingHere {
            column: "extra".into(),
            peer_type: "text".into()
        }]
    );
    // The peer has it now as well: still missing here, still a stop.
    let mut peer = items();
    peer.columns.push(col("extra", builtin(TEXT, -1)));
    assert!(!compare(&r, &items(), Some(&peer), &[]).fits());
}

#[test]
fn a_nullable_or_defaulted_column_only_here_is_fine() {
    let r = remote(&[
        ("id", builtin(INT4, -1), true),
        ("v", builtin(TEXT, -1), false),
    ]);
    let mut local = items();
    local.columns.push(col("note", builtin(TEXT, -1)));
    local.columns.push(ShapeColumn {
        not_null: true,
        has_default: true,
        ..col("n", builtin(INT4, -1))
    });
    assert!(compare(&r, &local, None, &[]).fits());
    local.columns.push(ShapeColumn {
        not_null: true,
        ..col("must", builtin(INT4, -1))
    });
    assert_eq!(
        compare(&r, &local, None, &[]).differences,
        [Difference::NotNullHere {
            column: "must".into(),
            local_type: "integer".into()
        }]
    );
}

#[test]
fn types_compare_by_oid_and_modifier_and_user_types_by_name() {
    let r = remote(&[
        ("id", builtin(INT8, -1), true),
        ("v", builtin(VARCHAR, 14), false),
    ]);
    let local = table(
        vec![col("id", builtin(INT4, -1)), col("v", builtin(VARCHAR, 24))],
        &["id"],
    );
    let c = compare(&r, &local, None, &[]);
    assert_eq!(c.differences.len(), 2, "{c:?}");
    assert_eq!(
        c.differences[0],
        Difference::TypeDiffers {
            column: "id".into(),
            peer_type: "bigint".into(),
            local_type: "integer".into()
        }
    );
    // User types: OIDs differ between nodes, names decide.
    let mood_here = ColumnType::from_catalog(16500, "public", "mood", -1, "mood");
    let mood_there = ColumnType::from_catalog(17000, "public", "mood", -1, "mood");
    let r = remote(&[("id", builtin(INT4, -1), true), ("v", mood_there, false)]);
    let local = table(
        vec![col("id", builtin(INT4, -1)), col("v", mood_here)],
        &["id"],
    );
    assert!(compare(&r, &local, None, &[]).fits());
    let other = ColumnType::from_catalog(16501, "app", "mood", -1, "app.mood");
    let local2 = table(vec![col("id", builtin(INT4, -1)), col("v", other)], &["id"]);
    assert!(!compare(&r, &local2, None, &[]).fits());
}

#[test]
fn unnamed_user_types_never_match_until_the_peer_confirms() {
    let unknown = ColumnType {
        id: TypeId::Unknown(17000),
        typmod: -1,
        display: "type 17000 of the peer".into(),
    };
    let mood = ColumnType::from_catalog(16500, "public", "mood", -1, "mood");
    let r = remote(&[("id", builtin(INT4, -1), true), ("v", unknown, false)]);
    let local = table(
        vec![col("id", builtin(INT4, -1)), col("v", mood.clone())],
        &["id"],
    );
    assert!(!compare(&r, &local, None, &[]).fits());
    let peer = table(vec![col("id", builtin(INT4, -1)), col("v", mood)], &["id"]);
    assert!(compare(&r, &local, Some(&peer), &[]).fits());
}

#[test]
fn changes_made_on_both_nodes_are_history() {
    // The stream still has the old shape: v text, old int; both nodes since dropped
    // `old` and retyped `id` to bigint.
    let r = remote(&[
        ("id", builtin(INT4, -1), true),
        ("v", builtin(TEXT, -1), false),
        ("old", builtin(INT4, -1), false),
    ]);
    let now = table(
        vec![col("id", builtin(INT8, -1)), col("v", builtin(TEXT, -1))],
        &["id"],
    );
    let first = compare(&r, &now, None, &[]);
    assert_eq!(first.differences.len(), 2, "{first:?}");
    let c = compare(&r, &now, Some(&now.clone()), &[]);
    assert!(c.fits(), "{c:?}");
    assert_eq!(c.discard, ["old"]);
    assert_eq!(c.history.len(), 2);
    // Only this node changed: the peer still has `old` and int: both stop.
    let peer_old = table(
        vec![
            col("id", builtin(INT4, -1)),
            col("v", builtin(TEXT, -1)),
            col("old", builtin(INT4, -1)),
        ],
        &["id"],
    );
    assert_eq!(compare(&r, &now, Some(&peer_old), &[]).differences.len(), 2);
}

#[test]
fn a_drop_with_an_add_on_both_nodes_looks_like_a_rename_and_stops() {
    let r = remote(&[
        ("id", builtin(INT4, -1), true),
        ("v", builtin(TEXT, -1), false),
    ]);
    let now = table(
        vec![col("id", builtin(INT4, -1)), col("w", builtin(TEXT, -1))],
        &["id"],
    );
    let c = compare(&r, &now, Some(&now.clone()), &[]);
    assert_eq!(
        c.differences,
        [Difference::PossibleRename {
            gone: vec!["v".into()],
            new: vec!["w".into()]
        }]
    );
    assert!(c.discard.is_empty());
    // pgmesh ddl recorded the drop of v on this node: not a rename.
    let c = compare(&r, &now, Some(&now.clone()), &["v".to_string()]);
    assert!(c.fits(), "{c:?}");
    assert_eq!(c.discard, ["v"]);
}

#[test]
fn primary_key_columns_must_be_in_the_peers_identity() {
    let r = remote(&[
        ("id", builtin(INT4, -1), true),
        ("region", builtin(TEXT, -1), false),
    ]);
    let local = table(
        vec![
            col("id", builtin(INT4, -1)),
            col("region", builtin(TEXT, -1)),
        ],
        &["id", "region"],
    );
    assert_eq!(
        compare(&r, &local, None, &[]).differences,
        [Difference::KeyNotSent {
            column: "region".into()
        }]
    );
    // Both nodes have the wider key now: changes from before are history.
    assert!(compare(&r, &local, Some(&local.clone()), &[]).fits());
    // A wider identity on the peer (its key, or REPLICA IDENTITY FULL) is fine.
    let full = remote(&[
        ("id", builtin(INT4, -1), true),
        ("region", builtin(TEXT, -1), true),
    ]);
    assert!(compare(&full, &items_with_region(), None, &[]).fits());
}

fn items_with_region() -> Shape {
    table(
        vec![
            col("id", builtin(INT4, -1)),
            col("region", builtin(TEXT, -1)),
        ],
        &["id"],
    )
}

#[test]
fn from_relation_names_user_types_from_type_messages() {
    let rel = Relation {
        xid: None,
        oid: 16400,
        namespace: "public".into(),
        name: "items".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            RelationColumn {
                flags: COLUMN_FLAG_KEY,
                name: "id".into(),
                type_oid: INT4,
                type_modifier: -1,
            },
            RelationColumn {
                flags: 0,
                name: "m".into(),
                type_oid: 17000,
                type_modifier: -1,
            },
            RelationColumn {
                flags: 0,
                name: "n".into(),
                type_oid: 17001,
                type_modifier: -1,
            },
        ],
    };
    let mut types = HashMap::new();
    types.insert(
        17000,
        Type {
            xid: None,
            oid: 17000,
            namespace: "public".into(),
            name: "mood".into(),
        },
    );
    let r = RemoteShape::from_relation(&rel, &types);
    assert!(r.columns[0].key && !r.columns[1].key);
    assert_eq!(r.columns[0].ty.id, TypeId::Builtin(INT4));
    assert_eq!(
        r.columns[1].ty.id,
        TypeId::Named {
            schema: "public".into(),
            name: "mood".into()
        }
    );
    assert_eq!(r.columns[2].ty.id, TypeId::Unknown(17001));
    assert_eq!(r.builtin_types(), [(0, INT4, -1)]);
}

#[test]
fn the_message_says_what_differs_and_how_to_continue() {
    let m = SchemaMismatch {
        table: "public.items".into(),
        schema: "public".into(),
        relname: "items".into(),
        node: "b".into(),
        peer: "a".into(),
        differences: vec![
            Difference::MissingHere {
                column: "extra".into(),
                peer_type: "text".into(),
            },
            Difference::TypeDiffers {
                column: "qty".into(),
                peer_type: "bigint".into(),
                local_type: "integer".into(),
            },
        ],
        remote: RemoteShape { columns: vec![] },
    };
    let s = m.to_string();
    for want in [
        "table public.items differs between a and b",
        "column extra (text) exists on a but not on b",
        "column qty is bigint on a but integer on b",
        "position kept",
        "ALTER TABLE public.items ADD COLUMN extra text;",
        "ALTER TABLE public.items ALTER COLUMN qty TYPE bigint;",
        "pgmesh ddl -c <config> --node b \"ALTER TABLE public.items ADD COLUMN extra text; ALTER TABLE public.items ALTER COLUMN qty TYPE bigint\"",
        "resumes by itself",
    ] {
        assert!(s.contains(want), "missing {want:?} in {s}");
    }
}
