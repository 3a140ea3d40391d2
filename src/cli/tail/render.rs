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
}

/// One output line in the making, whatever the plugin: the changes rendered as they come
/// (into a spill buffer, so a transaction of any size stays within a memory budget), the
/// header once the transaction commits.
pub struct TxnLine {
    buf: SpillBuffer,
    header: Vec<u8>,
    changes: u64,
}

impl TxnLine {
    #[must_use]
    pub fn new(max_txn_memory: usize, spill_dir: PathBuf) -> Self {
        TxnLine {
            buf: SpillBuffer::new(max_txn_memory, spill_dir),
            header: Vec::new(),
            changes: 0,
        }
    }

    /// Starts a new line, forgetting what was not written.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.header.clear();
        self.changes = 0;
    }

    /// Adds one change.
    pub fn push(&mut self, change: &Value) -> Result<(), RenderError> {
        if self.changes > 0 {
            self.buf.write_all(b",")?;
        }
        self.changes += 1;
        serde_json::to_writer(&mut self.buf, change).map_err(io::Error::from)?;
        Ok(())
    }

    /// Closes the transaction with its `header` (an object): the line is
    /// `{…header…,"changes":[…]}`. Returns its number of changes.
    pub fn close(&mut self, header: &Value) -> Result<u64, RenderError> {
        self.header.clear();
        serde_json::to_writer(&mut self.header, header).map_err(io::Error::from)?;
        self.header.pop(); // the closing brace
        self.header.extend_from_slice(b",\"changes\":[");
        Ok(self.changes)
    }

    /// Makes `v` the whole line (a message outside any transaction).
    pub fn single(&mut self, v: &Value) -> Result<(), RenderError> {
        self.clear();
        serde_json::to_writer(&mut self.buf, v).map_err(io::Error::from)?;
        Ok(())
    }

    /// Nothing to write: the transaction was left out.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.header.is_empty() && self.buf.is_empty()
    }

    /// Writes the line finished by [`TxnLine::close`] or [`TxnLine::single`].
    pub fn write(&mut self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.header)?;
        self.buf.copy_to(out)?;
        if !self.header.is_empty() {
            out.write_all(b"]}")?;
        }
        out.write_all(b"\n")?;
        self.clear();
        Ok(())
    }
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
    line: TxnLine,
    open: Option<OpenTxn>,
}

impl Renderer {
    #[must_use]
    pub fn new(max_txn_memory: usize, spill_dir: PathBuf) -> Self {
        Renderer {
            relations: HashMap::new(),
            line: TxnLine::new(max_txn_memory, spill_dir),
            open: None,
        }
    }

    /// Forgets the open transaction (after a disconnect the server resends it whole) and
    /// the relation cache (a new walsender sends Relation messages again).
    pub fn reset(&mut self) {
        self.open = None;
        self.line.clear();
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
                self.line.clear();
                self.open = Some(OpenTxn {
                    xid: b.xid,
                    final_lsn: b.final_lsn,
                    commit_time: b.commit_time.0,
                    origin: None,
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
                    self.line.single(&json!({ "message": change }))?;
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
                let changes = self.line.close(&header)?;
                return Ok(Some(Finished {
                    end_lsn: c.end_lsn,
                    changes,
                }));
            }
            other => return Err(RenderError::Unexpected(other.kind().name())),
        }
        Ok(None)
    }

    /// Writes the transaction just finished by [`Renderer::feed`] as one line.
    pub fn write_finished(&mut self, out: &mut impl Write) -> io::Result<()> {
        self.line.write(out)
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
        if self.open.is_none() {
            return Err(RenderError::OutsideTransaction("change"));
        }
        self.line.push(change)
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
