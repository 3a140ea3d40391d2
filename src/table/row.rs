//! Row images in local column order, and primary keys.

use bytes::Bytes;

use super::local::{LocalTable, TableMap};
use super::TableError;
use crate::protocol::pgoutput::{Column, Tuple};

/// One column value of a remote row image (text format).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Val {
    Null,
    /// An unchanged TOAST value the peer did not send: keep what the row has.
    Unchanged,
    /// Not sent at all (a local-only column): keep the current value / default.
    Absent,
    Text(Bytes),
}

impl Val {
    /// The value as a text parameter; `None` for SQL NULL. Unchanged/absent values are
    /// never passed as parameters (statements leave those columns out).
    pub fn as_text(&self) -> Result<Option<&str>, TableError> {
        match self {
            Val::Text(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| TableError::Protocol("column value is not valid UTF-8".into())),
            _ => Ok(None),
        }
    }
}

/// A row image with one value per local column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Val>);

/// Primary-key values (text) in key order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub Vec<Bytes>);

impl Row {
    /// Lays a decoded tuple out in local column order.
    pub fn from_tuple(map: &TableMap, tuple: &Tuple) -> Result<Row, TableError> {
        if tuple.len() != map.remote_to_local.len() {
            return Err(TableError::Protocol(format!(
                "tuple of {} columns for table {} whose Relation message has {}",
                tuple.len(),
                map.local.name,
                map.remote_to_local.len()
            )));
        }
        // The values are slices of a copy of the row's own, not of the socket's read
        // buffer: slices of that buffer share its reference count, which the reading
        // thread raised and the writing thread dropped for every value (one cache line
        // between two cores), and they kept each read buffer alive until its last row
        // was applied.
        let tuple = tuple.detached();
        let mut vals = vec![Val::Absent; map.local.columns.len()];
        for (col, &li) in tuple.iter().zip(&map.remote_to_local) {
            // A column both nodes dropped since the change was made: discarded.
            let Some(li) = li else { continue };
            vals[li] = match col {
                Column::Null => Val::Null,
                Column::UnchangedToast => Val::Unchanged,
                Column::Text(b) => Val::Text(b),
                Column::Binary(_) => {
                    return Err(TableError::Protocol(
                        "binary column values: the apply stream must use text format".into(),
                    ))
                }
            };
        }
        Ok(Row(vals))
    }

    /// The primary key of this image; every key column must have a value.
    pub fn key(&self, map: &TableMap) -> Result<Key, TableError> {
        let mut k = Vec::with_capacity(map.local.pk.len());
        for &i in &map.local.pk {
            match &self.0[i] {
                Val::Text(b) => k.push(b.clone()),
                other => {
                    return Err(TableError::Protocol(format!(
                        "primary key column {} of {} is {:?} in a change",
                        map.local.columns[i].name, map.local.name, other
                    )))
                }
            }
        }
        Ok(Key(k))
    }

    /// Whether every column sent by the peer has a value (no unchanged TOAST), so the
    /// image can be inserted as a whole row.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        !self.0.iter().any(|v| matches!(v, Val::Unchanged))
    }

    /// Fills unchanged values from an earlier image of the same row (collapsing several
    /// changes to one key keeps everything the earlier change knew).
    pub fn fill_unchanged_from(&mut self, earlier: &Row) {
        for (v, e) in self.0.iter_mut().zip(&earlier.0) {
            if matches!(v, Val::Unchanged) && !matches!(e, Val::Unchanged | Val::Absent) {
                *v = e.clone();
            }
        }
    }

    /// Approximate bytes held (for batch budgets).
    #[must_use]
    pub fn weight(&self) -> usize {
        self.0
            .iter()
            .map(|v| match v {
                Val::Text(b) => b.len() + 8,
                _ => 8,
            })
            .sum()
    }

    /// The image as a JSON object for the ledger (unchanged/absent columns left out).
    #[must_use]
    pub fn to_json(&self, map: &TableMap) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (v, c) in self.0.iter().zip(&map.local.columns) {
            match v {
                Val::Null => {
                    m.insert(c.name.clone(), serde_json::Value::Null);
                }
                Val::Text(b) => {
                    m.insert(
                        c.name.clone(),
                        serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
                    );
                }
                Val::Unchanged | Val::Absent => {}
            }
        }
        serde_json::Value::Object(m)
    }
}

impl Key {
    /// `{"col": "value"}` for the ledger.
    #[must_use]
    pub fn to_json(&self, map: &TableMap) -> serde_json::Value {
        self.to_json_in(&map.local)
    }

    /// `{"col": "value"}` with the names of `table`'s key columns.
    #[must_use]
    pub fn to_json_in(&self, table: &LocalTable) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (b, &i) in self.0.iter().zip(&table.pk) {
            m.insert(
                table.columns[i].name.clone(),
                serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
            );
        }
        serde_json::Value::Object(m)
    }
}
