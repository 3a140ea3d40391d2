//! Per-key collapse of row changes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::apply::row::{Key, Row};
use crate::apply::table::TableMap;
use crate::protocol::pgoutput::PgTimestamp;
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

/// Pending changes of one table, in first-touch order.
#[derive(Debug, Clone)]
pub struct TableChunk {
    pub map: Arc<TableMap>,
    pub order: Vec<Key>,
    pub changes: HashMap<Key, Pending>,
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
        self.rows += 1;
        self.bytes += row.as_ref().map_or(0, Row::weight) + 64;
        let table = match self
            .tables
            .iter_mut()
            .position(|t| Arc::ptr_eq(&t.map, map) || t.map.local.name == map.local.name)
        {
            Some(i) => &mut self.tables[i],
            None => {
                self.tables.push(TableChunk {
                    map: Arc::clone(map),
                    order: Vec::new(),
                    changes: HashMap::new(),
                });
                let last = self.tables.len() - 1;
                &mut self.tables[last]
            }
        };
        let incoming = Pending {
            op,
            row,
            commit_ts,
            lsn,
            born_in_chunk: op == ChangeOp::Insert,
        };
        match table.changes.get_mut(&key) {
            None => {
                table.order.push(key.clone());
                table.changes.insert(key, incoming);
            }
            Some(existing) => *existing = collapse(existing, incoming),
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
    use crate::apply::row::Val;
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
