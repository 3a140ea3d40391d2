//! Per-key collapse of row changes (tables with a primary key), and changes kept in
//! order (tables without one).

use std::sync::Arc;

use indexmap::map::Entry;
use indexmap::IndexMap;

use crate::protocol::pgoutput::PgTimestamp;
use crate::table::local::TableMap;
use crate::table::row::{Key, Row};
use crate::Lsn;

/// Net effect of the changes to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Insert,
    Update,
    Delete,
}

/// One key's pending change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub op: ChangeOp,
    /// The new image for inserts and updates.
    pub row: Option<Row>,
    /// Commit time of the last upstream transaction that changed the key.
    pub commit_ts: PgTimestamp,
    /// Commit LSN of that transaction (for the ledger).
    pub lsn: Lsn,
    /// The row was inserted within this chunk: a delete of it then needs no tombstone
    /// conflict if the row never reached this node.
    pub born_in_chunk: bool,
}

/// One change to a table without a primary key (REPLICA IDENTITY FULL). A row of such a
/// table has no identity but its content, so its changes cannot collapse per key: they
/// are kept as they came and applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessChange {
    pub op: ChangeOp,
    /// The full old image (updates and deletes).
    pub old: Option<Row>,
    /// The new image (inserts and updates).
    pub new: Option<Row>,
    pub commit_ts: PgTimestamp,
    pub lsn: Lsn,
}

/// Hashing of keys in a chunk: foldhash, randomly seeded per process. SipHash (the
/// standard library's) was 7–8 % of the sidecar's CPU in bulk; a chunk holds at most
/// `batch_max_rows` keys, which bounds what colliding keys could cost.
pub type KeyHasher = foldhash::fast::RandomState;

/// Pending changes of one table: per key in first-touch order, or (for a table without a
/// primary key) in stream order in `keyless`.
#[derive(Debug, Clone)]
pub struct TableChunk {
    pub map: Arc<TableMap>,
    /// One net change per key, in the order the keys were first touched.
    pub changes: IndexMap<Key, Pending, KeyHasher>,
    pub keyless: Vec<KeylessChange>,
}

/// Everything pending for the open downstream transaction, by table.
#[derive(Debug, Default)]
pub struct Chunk {
    pub tables: Vec<TableChunk>,
    rows: usize,
    bytes: usize,
}

impl Chunk {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Changes pushed (before collapsing).
    #[must_use]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate bytes held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the contents, leaving an empty chunk.
    pub fn take(&mut self) -> Chunk {
        std::mem::take(self)
    }

    /// Adds one change, collapsing it with an earlier change to the same key.
    pub fn push(
        &mut self,
        map: &Arc<TableMap>,
        op: ChangeOp,
        key: Key,
        row: Option<Row>,
        commit_ts: PgTimestamp,
        lsn: Lsn,
    ) {
        let incoming = Pending {
            op,
            row,
            commit_ts,
            lsn,
            born_in_chunk: op == ChangeOp::Insert,
        };
        self.push_pending(map, key, incoming);
    }

    /// Adds a change already collapsed elsewhere (a streamed transaction's changes left
    /// for its commit), collapsing it with an earlier one to the same key.
    pub fn push_pending(&mut self, map: &Arc<TableMap>, key: Key, incoming: Pending) {
        self.rows += 1;
        self.bytes += incoming.row.as_ref().map_or(0, Row::weight) + 64;
        let table = self.table_mut(map);
        match table.changes.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(incoming);
            }
            Entry::Occupied(mut slot) => {
                let existing = slot.get_mut();
                *existing = collapse(existing, incoming);
            }
        }
    }

    /// Adds one change to a table without a primary key, after the ones before it.
    pub fn push_keyless(&mut self, map: &Arc<TableMap>, change: KeylessChange) {
        self.rows += 1;
        self.bytes += [&change.old, &change.new]
            .iter()
            .map(|r| r.as_ref().map_or(0, Row::weight))
            .sum::<usize>()
            + 64;
        self.table_mut(map).keyless.push(change);
    }

    /// Whether a change to `key` of the table `map` is held here.
    #[must_use]
    pub fn holds(&self, map: &TableMap, key: &Key) -> bool {
        self.tables.iter().any(|t| {
            (std::ptr::eq(&*t.map, map) || t.map.local == map.local) && t.changes.contains_key(key)
        })
    }

    /// Dates every change with its transaction's commit (a streamed transaction's are
    /// known only at its Stream Commit).
    pub fn stamp(&mut self, commit_ts: PgTimestamp, lsn: Lsn) {
        for t in &mut self.tables {
            for p in t.changes.values_mut() {
                (p.commit_ts, p.lsn) = (commit_ts, lsn);
            }
            for c in &mut t.keyless {
                (c.commit_ts, c.lsn) = (commit_ts, lsn);
            }
        }
    }

    fn table_mut(&mut self, map: &Arc<TableMap>) -> &mut TableChunk {
        match self
            .tables
            .iter()
            // Rows are laid out in the local table's column order: a table whose local
            // definition changed (a schema change here) gets a group of its own.
            .position(|t| Arc::ptr_eq(&t.map, map) || t.map.local == map.local)
        {
            Some(i) => &mut self.tables[i],
            None => {
                self.tables.push(TableChunk {
                    map: Arc::clone(map),
                    changes: IndexMap::default(),
                    keyless: Vec::new(),
                });
                let last = self.tables.len() - 1;
                &mut self.tables[last]
            }
        }
    }
}

/// The net effect of `earlier` followed by `later` on the same key.
fn collapse(earlier: &Pending, mut later: Pending) -> Pending {
    use ChangeOp::{Delete, Insert, Update};
    later.born_in_chunk = earlier.born_in_chunk && later.op != Insert || later.op == Insert;
    match (earlier.op, later.op) {
        // An update of a row inserted (or updated) earlier in the chunk: the earlier image
        // fills the columns the update left unchanged; an insert stays an insert.
        (Insert | Update, Update) => {
            if let (Some(new), Some(old)) = (later.row.as_mut(), earlier.row.as_ref()) {
                new.fill_unchanged_from(old);
            }
            if earlier.op == Insert {
                later.op = Insert;
            }
            later
        }
        (_, Delete) => {
            later.row = None;
            later
        }
        // Re-inserted after a delete (key reuse), or an update after a delete (cannot come
        // from one ordered source, but the later image is what it says).
        (Delete, Insert | Update) | (Insert | Update, Insert) => later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::row::Val;
    use bytes::Bytes;

    fn p(op: ChangeOp, vals: Option<Vec<Val>>, ts: i64) -> Pending {
        Pending {
            op,
            row: vals.map(Row),
            commit_ts: PgTimestamp(ts),
            lsn: Lsn(ts as u64),
            born_in_chunk: op == ChangeOp::Insert,
        }
    }

    fn t(s: &str) -> Val {
        Val::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn insert_then_update_stays_an_insert_with_filled_toast() {
        let ins = p(ChangeOp::Insert, Some(vec![t("1"), t("big"), t("x")]), 1);
        let upd = p(
            ChangeOp::Update,
            Some(vec![t("1"), Val::Unchanged, t("y")]),
            2,
        );
        let c = collapse(&ins, upd);
        assert_eq!(c.op, ChangeOp::Insert);
        assert_eq!(c.row.unwrap().0, vec![t("1"), t("big"), t("y")]);
        assert_eq!(c.commit_ts, PgTimestamp(2));
        assert!(c.born_in_chunk);
    }

    #[test]
    fn delete_wins_and_remembers_birth() {
        let ins = p(ChangeOp::Insert, Some(vec![t("1")]), 1);
        let del = p(ChangeOp::Delete, None, 3);
        let c = collapse(&ins, del);
        assert_eq!(
            (c.op, c.row.is_none(), c.born_in_chunk),
            (ChangeOp::Delete, true, true)
        );
        let upd = p(ChangeOp::Update, Some(vec![t("1")]), 1);
        let c = collapse(&upd, p(ChangeOp::Delete, None, 3));
        assert!(!c.born_in_chunk);
    }

    #[test]
    fn keyless_changes_stay_in_order_and_never_collapse() {
        use crate::table::local::{LocalColumn, LocalTable};
        let local = Arc::new(LocalTable {
            name: "public.log".into(),
            schema: "public".into(),
            relname: "log".into(),
            columns: vec![LocalColumn {
                name: "a".into(),
                quoted: "a".into(),
                type_sql: "integer".into(),
            }],
            pk: vec![],
            uniques: vec![],
        });
        let map = Arc::new(TableMap {
            local,
            remote_to_local: vec![Some(0)],
            local_only: vec![],
        });
        let ch = |op, old: Option<&str>, new: Option<&str>| KeylessChange {
            op,
            old: old.map(|v| Row(vec![t(v)])),
            new: new.map(|v| Row(vec![t(v)])),
            commit_ts: PgTimestamp(1),
            lsn: Lsn(1),
        };
        let mut c = Chunk::default();
        // The same row twice, then one copy updated and one deleted: four changes, none
        // merged (a per-key collapse would see one empty key and keep only the last).
        c.push_keyless(&map, ch(ChangeOp::Insert, None, Some("1")));
        c.push_keyless(&map, ch(ChangeOp::Insert, None, Some("1")));
        c.push_keyless(&map, ch(ChangeOp::Update, Some("1"), Some("2")));
        c.push_keyless(&map, ch(ChangeOp::Delete, Some("1"), None));
        assert_eq!(c.rows(), 4);
        assert_eq!(c.tables.len(), 1);
        let ops: Vec<ChangeOp> = c.tables[0].keyless.iter().map(|k| k.op).collect();
        assert_eq!(
            ops,
            [
                ChangeOp::Insert,
                ChangeOp::Insert,
                ChangeOp::Update,
                ChangeOp::Delete
            ]
        );
        assert!(c.tables[0].changes.is_empty());
    }

    #[test]
    fn update_after_update_keeps_unchanged_from_earlier() {
        let a = p(
            ChangeOp::Update,
            Some(vec![t("1"), t("v1"), Val::Unchanged]),
            1,
        );
        let b = p(
            ChangeOp::Update,
            Some(vec![t("1"), Val::Unchanged, Val::Unchanged]),
            2,
        );
        let c = collapse(&a, b);
        assert_eq!(c.op, ChangeOp::Update);
        assert_eq!(c.row.unwrap().0, vec![t("1"), t("v1"), Val::Unchanged]);
    }
}
