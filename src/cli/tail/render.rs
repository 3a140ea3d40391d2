//! Turns pgoutput messages into one JSON line per committed transaction.
//!
//! Changes are rendered as they arrive into a [`SpillBuffer`], so a transaction of any size
//! is held within a fixed memory budget; the line is written out only at Commit, so a
//! transaction cut short by a disconnect is never half printed.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::value::{binary_value, text_value};
use crate::pgtime::rfc3339;
use crate::protocol::pgoutput::{Column, Message, Oid, OldTuple, Relation, Tuple};
use crate::txn::SpillBuffer;
use crate::Lsn;

/// Why a message could not be rendered: the stream does not follow the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error("change for relation OID {0} before its Relation message (protocol violation)")]
    UnknownRelation(Oid),
    #[error("{0} outside a transaction (protocol violation)")]
    OutsideTransaction(&'static str),
    #[error("unexpected {0} message: tail does not ask for streaming or two-phase")]
    Unexpected(&'static str),
    #[error("writing the transaction buffer: {0}")]
    Io(#[from] io::Error),
}

struct OpenTxn {
    xid: u32,
    final_lsn: Lsn,
    commit_time: i64,
    origin: Option<(String, Lsn)>,
    changes: u64,
}

/// A transaction ready to be written: its header and its buffered changes.
#[derive(Debug)]
pub struct Finished {
    pub end_lsn: Lsn,
    pub changes: u64,
}

/// Renders a stream of messages; keeps the relation cache between transactions.
pub struct Renderer {
    relations: HashMap<Oid, Relation>,
    buf: SpillBuffer,
    open: Option<OpenTxn>,
    header: Vec<u8>,
}

impl Renderer {
    #[must_use]
    pub fn new(max_txn_memory: usize, spill_dir: PathBuf) -> Self {
        Renderer {
            relations: HashMap::new(),
            buf: SpillBuffer::new(max_txn_memory, spill_dir),
            open: None,
            header: Vec::new(),
        }
    }

    /// Forgets the open transaction (after a disconnect the server resends it whole) and
    /// the relation cache (a new walsender sends Relation messages again).
    pub fn reset(&mut self) {
        self.open = None;
        self.buf.clear();
        self.relations.clear();
    }

    /// Whether a transaction is open (between Begin and Commit).
    #[must_use]
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds one message. Returns the finished transaction at Commit; write it with
    /// [`Renderer::write_finished`].
    pub fn feed(&mut self, msg: &Message) -> Result<Option<Finished>, RenderError> {
        match msg {
            Message::Begin(b) => {
                self.buf.clear();
                self.open = Some(OpenTxn {
                    xid: b.xid,
                    final_lsn: b.final_lsn,
                    commit_time: b.commit_time.0,
                    origin: None,
                    changes: 0,
                });
            }
            Message::Origin(o) => {
                self.txn("Origin")?.origin = Some((o.name.clone(), o.lsn));
            }
            Message::Relation(r) => {
                self.relations.insert(r.oid, r.clone());
            }
            Message::Type(_) => {}
            Message::Insert(i) => {
                let rel = self.relation(i.relation_oid)?;
                let change = json!({
                    "op": "insert",
                    "table": table_name(rel),
                    "new": row(rel, &i.new),
                });
                self.push_change(&change)?;
            }
            Message::Update(u) => {
                let rel = self.relation(u.relation_oid)?;
                let mut change = Map::new();
                change.insert("op".into(), json!("update"));
                change.insert("table".into(), json!(table_name(rel)));
                match &u.old {
                    Some(OldTuple::Key(k)) => {
                        change.insert("old_key".into(), key_row(rel, k));
                    }
                    Some(OldTuple::Full(o)) => {
                        change.insert("old".into(), row(rel, o));
                    }
                    None => {}
                }
                change.insert("new".into(), row(rel, &u.new));
                let unchanged = unchanged_toast(rel, &u.new);
                if !unchanged.is_empty() {
                    change.insert("unchanged_toast".into(), json!(unchanged));
                }
                self.push_change(&Value::Object(change))?;
            }
            Message::Delete(d) => {
                let rel = self.relation(d.relation_oid)?;
                let (field, image) = match &d.old {
                    OldTuple::Key(k) => ("key", key_row(rel, k)),
                    OldTuple::Full(o) => ("old", row(rel, o)),
                };
                let change = json!({ "op": "delete", "table": table_name(rel), field: image });
                self.push_change(&change)?;
            }
            Message::Truncate(t) => {
                let mut tables = Vec::with_capacity(t.relation_oids.len());
                for oid in &t.relation_oids {
                    tables.push(table_name(self.relation(*oid)?));
                }
                let change = json!({
                    "op": "truncate",
                    "tables": tables,
                    "cascade": t.cascade(),
                    "restart_identity": t.restart_identity(),
                });
                self.push_change(&change)?;
            }
            Message::Message(m) => {
                let change = json!({
                    "op": "message",
                    "transactional": m.transactional(),
                    "prefix": m.prefix,
                    "content": String::from_utf8_lossy(&m.content),
                    "lsn": m.lsn,
                });
                if self.open.is_some() {
                    self.push_change(&change)?;
                } else {
                    // A non-transactional message outside any transaction: its own line.
                    self.buf.clear();
                    serde_json::to_writer(&mut self.buf, &json!({ "message": change }))
                        .map_err(io::Error::from)?;
                    self.header.clear();
                    return Ok(Some(Finished {
                        end_lsn: m.lsn,
                        changes: 1,
                    }));
                }
            }
            Message::Commit(c) => {
                let open = self
                    .open
                    .take()
                    .ok_or(RenderError::OutsideTransaction("Commit"))?;
                let origin = open
                    .origin
                    .map(|(name, lsn)| json!({ "name": name, "lsn": lsn }));
                let header = json!({
                    "xid": open.xid,
                    "lsn": open.final_lsn,
                    "end_lsn": c.end_lsn,
                    "commit_time": rfc3339(open.commit_time),
                    "origin": origin,
                });
                // `{"xid":…,"origin":…` + `,"changes":[` + buffer + `]}`.
                self.header.clear();
                serde_json::to_writer(&mut self.header, &header).map_err(io::Error::from)?;
                self.header.pop(); // the closing brace
                self.header.extend_from_slice(b",\"changes\":[");
                return Ok(Some(Finished {
                    end_lsn: c.end_lsn,
                    changes: open.changes,
                }));
            }
            other => return Err(RenderError::Unexpected(other.kind().name())),
        }
        Ok(None)
    }

    /// Writes the transaction just finished by [`Renderer::feed`] as one line.
    pub fn write_finished(&mut self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.header)?;
        self.buf.copy_to(out)?;
        if !self.header.is_empty() {
            out.write_all(b"]}")?;
        }
        out.write_all(b"\n")?;
        self.buf.clear();
        Ok(())
    }

    fn txn(&mut self, what: &'static str) -> Result<&mut OpenTxn, RenderError> {
        self.open
            .as_mut()
            .ok_or(RenderError::OutsideTransaction(what))
    }

    fn relation(&self, oid: Oid) -> Result<&Relation, RenderError> {
        self.relations
            .get(&oid)
            .ok_or(RenderError::UnknownRelation(oid))
    }

    fn push_change(&mut self, change: &Value) -> Result<(), RenderError> {
        let open = self
            .open
            .as_mut()
            .ok_or(RenderError::OutsideTransaction("change"))?;
        if open.changes > 0 {
            self.buf.write_all(b",")?;
        }
        open.changes += 1;
        serde_json::to_writer(&mut self.buf, change).map_err(io::Error::from)?;
        Ok(())
    }
}

fn table_name(rel: &Relation) -> String {
    format!("{}.{}", rel.schema(), rel.name)
}

fn column_value(type_oid: Oid, col: &Column<&[u8]>) -> Option<Value> {
    match col {
        Column::Null => Some(Value::Null),
        Column::UnchangedToast => None,
        Column::Text(v) => Some(text_value(type_oid, v)),
        Column::Binary(v) => Some(binary_value(v)),
    }
}

/// All columns with values (unchanged-TOAST ones are listed apart, not here).
fn row(rel: &Relation, tuple: &Tuple) -> Value {
    let mut m = Map::new();
    for (def, col) in rel.columns.iter().zip(tuple.iter_borrowed()) {
        if let Some(v) = column_value(def.type_oid, &col) {
            m.insert(def.name.clone(), v);
        }
    }
    Value::Object(m)
}

/// An old-key image: pgoutput sends every column, with the non-key ones as NULL;
/// only the replica-identity columns mean anything.
fn key_row(rel: &Relation, tuple: &Tuple) -> Value {
    let mut m = Map::new();
    for (def, col) in rel.columns.iter().zip(tuple.iter_borrowed()) {
        if def.is_key() {
            if let Some(v) = column_value(def.type_oid, &col) {
                m.insert(def.name.clone(), v);
            }
        }
    }
    Value::Object(m)
}

fn unchanged_toast(rel: &Relation, tuple: &Tuple) -> Vec<String> {
    rel.columns
        .iter()
        .zip(tuple.iter_borrowed())
        .filter(|(_, c)| c.is_unchanged_toast())
        .map(|(d, _)| d.name.clone())
        .collect()
}
