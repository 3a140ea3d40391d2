//! `pgmesh tail --plugin wal2json`: wal2json format-2 lines ([`crate::protocol::wal2json`])
//! turned into the same one-JSON-line-per-transaction output as pgoutput's
//! ([`super::render`]), so a reader does not care which plugin the slot uses. What
//! wal2json cannot say is left out: an update's unchanged TOAST columns are simply
//! missing from `new` (wal2json has no marker for them), and the origin is its numeric
//! id on the decoding server (`{"id": 2}`), not its name.

use std::io::{self, Write};
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::render::{Finished, RenderError, TxnLine};
use super::value::text_value;
use crate::pgtime::rfc3339;
use crate::protocol::wal2json::{Column, RowChange, TxnBoundary, Wal2JsonMessage};
use crate::Lsn;

struct OpenTxn {
    begin: TxnBoundary,
    /// Dropped by `--origin none` (a transaction with a nonzero origin).
    dropped: bool,
}

/// Renders wal2json lines into transaction lines.
pub struct Wal2jsonRenderer {
    line: TxnLine,
    open: Option<OpenTxn>,
    drop_origins: bool,
}

impl Wal2jsonRenderer {
    /// `drop_origins`: leave out transactions that carry a replication origin.
    #[must_use]
    pub fn new(max_txn_memory: usize, spill_dir: PathBuf, drop_origins: bool) -> Self {
        Wal2jsonRenderer {
            line: TxnLine::new(max_txn_memory, spill_dir),
            open: None,
            drop_origins,
        }
    }

    #[must_use]
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Takes one line; returns the finished transaction at its Commit (`changes == 0`
    /// and nothing to write when it was dropped: see [`Wal2jsonRenderer::dropped`]).
    pub fn feed(&mut self, msg: &Wal2JsonMessage) -> Result<Option<Finished>, RenderError> {
        match msg {
            Wal2JsonMessage::Begin(b) => {
                self.line.clear();
                self.open = Some(OpenTxn {
                    begin: b.clone(),
                    dropped: self.drop_origins && b.origin.is_some_and(|o| o != 0),
                });
            }
            Wal2JsonMessage::Insert(r) => {
                let change =
                    json!({ "op": "insert", "table": table(r), "new": columns(&r.columns) });
                self.push_change(&change)?;
            }
            Wal2JsonMessage::Update(r) => {
                let mut change = Map::new();
                change.insert("op".into(), json!("update"));
                change.insert("table".into(), json!(table(r)));
                if !r.identity.is_empty() {
                    change.insert("old_key".into(), columns(&r.identity));
                }
                change.insert("new".into(), columns(&r.columns));
                self.push_change(&Value::Object(change))?;
            }
            Wal2JsonMessage::Delete(r) => {
                let change =
                    json!({ "op": "delete", "table": table(r), "key": columns(&r.identity) });
                self.push_change(&change)?;
            }
            Wal2JsonMessage::Truncate(t) => {
                let name = match &t.schema {
                    Some(s) => format!("{s}.{}", t.table),
                    None => t.table.clone(),
                };
                self.push_change(&json!({ "op": "truncate", "tables": [name] }))?;
            }
            Wal2JsonMessage::Message(m) => {
                let change = json!({
                    "op": "message",
                    "transactional": m.transactional,
                    "prefix": m.prefix,
                    "content": m.content,
                    "lsn": m.meta.lsn,
                });
                if m.transactional {
                    self.push_change(&change)?;
                } else {
                    self.line.single(&json!({ "message": change }))?;
                    return Ok(Some(Finished {
                        end_lsn: m.meta.lsn.unwrap_or(Lsn::ZERO),
                        changes: 1,
                    }));
                }
            }
            Wal2JsonMessage::Commit(c) => {
                let open = self
                    .open
                    .take()
                    .ok_or(RenderError::OutsideTransaction("Commit"))?;
                let end_lsn = c.next_lsn.or(c.lsn).unwrap_or(Lsn::ZERO);
                if open.dropped {
                    self.line.clear();
                    return Ok(Some(Finished {
                        end_lsn,
                        changes: 0,
                    }));
                }
                let b = &open.begin;
                let commit_time = b.timestamp.as_ref().map(|t| {
                    t.unix_micros
                        .map_or_else(|| t.text.clone(), rfc3339_of_unix)
                });
                let header = json!({
                    "xid": b.xid,
                    "lsn": b.lsn,
                    "end_lsn": end_lsn,
                    "commit_time": commit_time,
                    "origin": b.origin.filter(|&o| o != 0).map(|o| json!({ "id": o })),
                });
                let changes = self.line.close(&header)?;
                return Ok(Some(Finished { end_lsn, changes }));
            }
        }
        Ok(None)
    }

    /// Whether the transaction just finished was left out (`--origin none`).
    #[must_use]
    pub fn dropped(&self) -> bool {
        self.line.is_empty()
    }

    /// Writes the transaction just finished by [`Wal2jsonRenderer::feed`] as one line.
    pub fn write_finished(&mut self, out: &mut impl Write) -> io::Result<()> {
        self.line.write(out)
    }

    fn push_change(&mut self, change: &Value) -> Result<(), RenderError> {
        match &self.open {
            None => Err(RenderError::OutsideTransaction("a change")),
            Some(open) if open.dropped => Ok(()),
            Some(_) => self.line.push(change),
        }
    }
}

fn rfc3339_of_unix(micros: i64) -> String {
    // PgTimestamp counts from 2000-01-01; wal2json's parsed time from 1970-01-01.
    rfc3339(micros - crate::pgtime::PG_EPOCH_UNIX_MICROS)
}

fn table(r: &RowChange) -> String {
    match &r.schema {
        Some(s) => format!("{s}.{}", r.table),
        None => r.table.clone(),
    }
}

/// Values as tail prints pgoutput's: typed by the column's type OID from their text form.
fn columns(cols: &[Column]) -> Value {
    let mut m = Map::new();
    for c in cols {
        let v = match (&c.value, c.pg_text()) {
            // wal2json prints booleans as JSON (pgoutput's text form is t/f).
            (Value::Bool(b), _) => Value::Bool(*b),
            (_, None) => Value::Null,
            (_, Some(text)) => text_value(c.type_oid.unwrap_or(0), text.as_bytes()),
        };
        m.insert(c.name.clone(), v);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wal2json::decode_line;

    fn feed(r: &mut Wal2jsonRenderer, line: &str) -> Option<Finished> {
        r.feed(&decode_line(line).unwrap()).unwrap()
    }

    #[test]
    fn a_transaction_becomes_one_line_like_pgoutput_gives() {
        let mut r = Wal2jsonRenderer::new(1 << 20, std::env::temp_dir(), false);
        assert!(feed(&mut r, r#"{"action":"B","xid":750,"timestamp":"2026-11-25 20:23:40.310851+00","origin":0,"lsn":"0/1A2B3C4","nextlsn":null}"#).is_none());
        assert!(feed(&mut r, r#"{"action":"I","xid":750,"timestamp":"2026-11-25 20:23:40.310851+00","origin":0,"lsn":"0/1A2B300","schema":"public","table":"items","columns":[{"name":"id","type":"integer","typeoid":23,"value":1},{"name":"v","type":"text","typeoid":25,"value":"one"}],"pk":[{"name":"id","type":"integer","typeoid":23}]}"#).is_none());
        let done = feed(&mut r, r#"{"action":"C","xid":750,"timestamp":"2026-11-25 20:23:40.310851+00","origin":0,"lsn":"0/1A2B3C4","nextlsn":"0/1A2B3F0"}"#).unwrap();
        assert_eq!(
            (done.end_lsn, done.changes),
            ("0/1A2B3F0".parse().unwrap(), 1)
        );
        let mut out = Vec::new();
        r.write_finished(&mut out).unwrap();
        let line: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["xid"], 750);
        assert_eq!(line["commit_time"], "2026-11-25T20:23:40.310851Z");
        assert_eq!(line["origin"], Value::Null);
        assert_eq!(
            line["changes"],
            json!([{"op": "insert", "table": "public.items", "new": {"id": 1, "v": "one"}}])
        );
    }

    #[test]
    fn transactions_with_an_origin_are_dropped_on_request() {
        let mut r = Wal2jsonRenderer::new(1 << 20, std::env::temp_dir(), true);
        feed(
            &mut r,
            r#"{"action":"B","xid":7,"timestamp":null,"origin":3,"lsn":"0/10","nextlsn":null}"#,
        );
        feed(
            &mut r,
            r#"{"action":"D","xid":7,"timestamp":null,"origin":3,"lsn":"0/11","schema":"public","table":"items","identity":[{"name":"id","type":"integer","typeoid":23,"value":1}],"pk":[{"name":"id","type":"integer","typeoid":23}]}"#,
        );
        let done = feed(
            &mut r,
            r#"{"action":"C","xid":7,"timestamp":null,"origin":3,"lsn":"0/10","nextlsn":"0/20"}"#,
        )
        .unwrap();
        assert_eq!(done.changes, 0);
        assert!(r.dropped());
    }
}
