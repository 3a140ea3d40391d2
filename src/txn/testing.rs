//! Builders of decoded messages and table maps for the assembler's tests.

use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::pgoutput::{
    Begin, Column, Commit, Delete, Insert, Message, Oid, OldTuple, PgTimestamp, Relation,
    RelationColumn, ReplicaIdentity, Truncate, Tuple, Update,
};
use crate::table::local::{LocalColumn, LocalTable, TableMap};
use crate::Lsn;

pub fn relation(oid: Oid, columns: &[&str]) -> Relation {
    Relation {
        xid: None,
        oid,
        namespace: "public".into(),
        name: format!("t{oid}"),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|c| RelationColumn {
                flags: 0,
                name: (*c).into(),
                type_oid: 25,
                type_modifier: -1,
            })
            .collect(),
    }
}

/// A map of a local table with the same columns as the peer's; `pk` empty for a
/// key-less table.
pub fn table_map(columns: &[&str], pk: &[usize], uniques: &[Vec<usize>]) -> Arc<TableMap> {
    let local = Arc::new(LocalTable {
        name: "public.t".into(),
        schema: "public".into(),
        relname: "t".into(),
        columns: columns
            .iter()
            .map(|c| LocalColumn {
                name: (*c).into(),
                quoted: (*c).into(),
                type_sql: "text".into(),
            })
            .collect(),
        pk: pk.to_vec(),
        uniques: uniques.to_vec(),
    });
    Arc::new(TableMap::new(local, &relation(0, columns), &[], "b").unwrap())
}

pub fn tuple(values: &[&str]) -> Tuple {
    let cols: Vec<Column<Bytes>> = values
        .iter()
        .map(|v| Column::Text(Bytes::copy_from_slice(v.as_bytes())))
        .collect();
    Tuple::from_columns(&cols).unwrap()
}

pub fn begin(final_lsn: u64, ts: i64) -> Message {
    Message::Begin(Begin {
        final_lsn: Lsn(final_lsn),
        commit_time: PgTimestamp(ts),
        xid: 1,
    })
}

pub fn commit(end_lsn: u64, ts: i64) -> Message {
    Message::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(end_lsn - 8),
        end_lsn: Lsn(end_lsn),
        commit_time: PgTimestamp(ts),
    })
}

pub fn insert(oid: Oid, values: &[&str]) -> Message {
    Message::Insert(Insert {
        xid: None,
        relation_oid: oid,
        new: tuple(values),
    })
}

pub fn update(oid: Oid, old: Option<OldTuple>, values: &[&str]) -> Message {
    Message::Update(Update {
        xid: None,
        relation_oid: oid,
        old,
        new: tuple(values),
    })
}

pub fn delete(oid: Oid, old: OldTuple) -> Message {
    Message::Delete(Delete {
        xid: None,
        relation_oid: oid,
        old,
    })
}

pub fn truncate(oids: &[Oid]) -> Message {
    Message::Truncate(Truncate {
        xid: None,
        options: 0,
        relation_oids: oids.to_vec(),
    })
}
