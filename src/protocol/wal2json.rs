//! Pure decoder for wal2json `format-version 2` output, and the options pgmesh asks it for.
//!
//! wal2json is pgmesh's second input format: on PostgreSQL 15, pgoutput has no `origin`
//! option, and wal2json's `filter-origins` lets the *server* drop transactions that pgmesh
//! itself applied (loop prevention without shipping them). Format version 2 prints one JSON
//! object per change (one line per `pg_logical_slot_*_changes` row or per XLogData message),
//! which is what [`decode_line`] takes. Nothing here does I/O, and no input can make it panic.
//!
//! Facts about wal2json 2.5 (Debian's `postgresql-15-wal2json`) that shape this module, read
//! from `wal2json.c` and verified against the captures in `tests/golden/wal2json/pg15/`:
//!
//! - `"origin"` is the numeric `RepOriginId` (`pg_replication_origin.roident` *on the server
//!   that decodes*), not the origin's name; `0` means "no origin" (a local write).
//! - `filter-origins` takes a comma-separated list of those numeric ids and parses each with
//!   `atoi()`: a name such as `pgmesh_a` silently becomes `0` and filters nothing; there is no
//!   `*` wildcard. See [`Wal2JsonOptions::filter_origin_ids`].
//! - Column values: `int2/int4/int8/oid/float4/float8/numeric` are bare JSON numbers (digits
//!   exactly as PostgreSQL printed them, so a `numeric` may exceed `f64`: see
//!   [`Column::number_text`]); `NaN` and `±Infinity` are printed as `null`, i.e. they are
//!   indistinguishable from SQL NULL; `bool` is `true`/`false`; `bytea` is its hex text
//!   *without* the `\x` prefix; everything else (json, jsonb, arrays, timestamps, …) is a JSON
//!   string holding the type's text output.
//! - An unchanged TOASTed column of an UPDATE is left out of `"columns"` entirely (there is
//!   no "unchanged" marker as in pgoutput): a column missing from an update keeps its value.
//! - `"identity"` is the old key (or the whole old row with REPLICA IDENTITY FULL); for an
//!   UPDATE that did not change the key wal2json rebuilds it from the new tuple. An UPDATE of
//!   a table without a usable identity has no `"identity"` at all, and such DELETEs are not
//!   emitted (only a server WARNING).
//! - Transactional messages carry the transaction's xid/timestamp/origin; non-transactional
//!   ones print `null` for all three. Message content is cut at the first NUL byte.
//! - `"timestamp"` is `timestamptz_to_str()` of the commit time: ISO style in the decoding
//!   session's `TimeZone`, e.g. `2026-11-25 20:23:40.310851+00` or `…+05:30`.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::Lsn;

/// One decoded wal2json v2 line.
#[derive(Debug, Clone, PartialEq)]
pub enum Wal2JsonMessage {
    /// `"action":"B"`.
    Begin(TxnBoundary),
    /// `"action":"C"`.
    Commit(TxnBoundary),
    /// `"action":"I"`: `columns` is the new row, `identity` is empty.
    Insert(RowChange),
    /// `"action":"U"`: `columns` is the new row minus unchanged TOAST columns, `identity` the
    /// old key (empty if the table has no usable replica identity).
    Update(RowChange),
    /// `"action":"D"`: `columns` is empty, `identity` the old key / old row.
    Delete(RowChange),
    /// `"action":"T"`: one line per truncated table.
    Truncate(Truncate),
    /// `"action":"M"`: a `pg_logical_emit_message()` message.
    Message(LogicalMessage),
}

/// Fields shared by every line of a transaction. Each is `None` when the matching
/// `include-*` option was off (or, for non-transactional messages, printed as `null`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnMeta {
    /// `include-xids`.
    pub xid: Option<u32>,
    /// `include-timestamp`: the transaction's commit time.
    pub timestamp: Option<Timestamp>,
    /// `include-origin`: the numeric replication origin id, `Some(0)` for local writes.
    pub origin: Option<u16>,
    /// `include-lsn`: for B/C the commit record's LSN, for changes/messages/truncates the
    /// change's own LSN.
    pub lsn: Option<Lsn>,
}

/// A Begin or Commit line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnBoundary {
    pub xid: Option<u32>,
    pub timestamp: Option<Timestamp>,
    pub origin: Option<u16>,
    /// The commit record's LSN (same value on B and C: wal2json prints `final_lsn`).
    pub lsn: Option<Lsn>,
    /// `"nextlsn"`: the end of the commit record; the position to confirm as flushed once
    /// this transaction is durably applied.
    pub next_lsn: Option<Lsn>,
}

/// A commit timestamp as wal2json printed it, plus its value when the text is in the ISO
/// form PostgreSQL uses (kept as text too, so nothing is lost for odd inputs such as BC years).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    /// Exactly as printed, e.g. `2026-11-25 20:23:40.310851+00`.
    pub text: String,
    /// Microseconds since 1970-01-01 00:00:00 UTC, `None` if `text` is not
    /// `YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM[:SS]]`.
    pub unix_micros: Option<i64>,
}

impl Timestamp {
    /// Keeps `text` and parses it if it has PostgreSQL's ISO output form.
    #[must_use]
    pub fn new(text: &str) -> Self {
        Timestamp {
            text: text.to_string(),
            unix_micros: parse_pg_timestamptz(text),
        }
    }
}

/// An Insert, Update or Delete line.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub meta: TxnMeta,
    /// `None` only with `include-schemas 0`.
    pub schema: Option<String>,
    pub table: String,
    /// New row (Insert/Update); empty for Delete.
    pub columns: Vec<Column>,
    /// Old key or old row (Update/Delete); empty when wal2json printed none.
    pub identity: Vec<Column>,
    /// `include-pk`: the primary key's columns (names and types, no values); `Some(vec![])`
    /// for a table without a primary key, `None` when the option was off.
    pub pk: Option<Vec<KeyColumn>>,
}

/// One column of `"columns"` or `"identity"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// `"type"` (with typmod, e.g. `character varying(10)`); `None` with `include-types 0`.
    pub type_name: Option<String>,
    /// `"typeoid"` (`include-type-oids`).
    pub type_oid: Option<u32>,
    /// The value as JSON: `Null`, `Bool`, `Number` or `String` (see the module docs).
    pub value: Value,
    /// For a `Number` value, its digits exactly as PostgreSQL printed them. `serde_json`
    /// keeps numbers as `i64`/`u64`/`f64`, which cannot hold e.g.
    /// `12345678901234567890.123456789`; applying the `f64` would silently change the data.
    pub number_text: Option<String>,
    /// `"optional"` (`include-not-null`): `false` for NOT NULL columns.
    pub optional: Option<bool>,
    /// `"position"` (`include-column-positions`): the attribute number.
    pub position: Option<i32>,
}

impl Column {
    /// The value in PostgreSQL's text input form (what a text-format bind parameter needs),
    /// `None` for NULL. Numbers use [`Column::number_text`]; `bytea` gets its `\x` back.
    #[must_use]
    pub fn pg_text(&self) -> Option<Cow<'_, str>> {
        match &self.value {
            Value::Null => None,
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Number(n) => Some(match &self.number_text {
                Some(t) => Cow::Borrowed(t.as_str()),
                None => Cow::Owned(n.to_string()),
            }),
            Value::String(s) if self.is_bytea() => Some(Cow::Owned(format!("\\x{s}"))),
            Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            other => Some(Cow::Owned(other.to_string())),
        }
    }

    fn is_bytea(&self) -> bool {
        self.type_oid == Some(BYTEA_OID)
            || (self.type_oid.is_none() && self.type_name.as_deref() == Some("bytea"))
    }
}

const BYTEA_OID: u32 = 17;

/// One column of `"pk"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    pub type_name: Option<String>,
    pub type_oid: Option<u32>,
}

/// A Truncate line (wal2json prints one per table of a `TRUNCATE a, b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub meta: TxnMeta,
    pub schema: Option<String>,
    pub table: String,
}

/// A logical decoding message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// All `None` except `lsn` for a non-transactional message.
    pub meta: TxnMeta,
    pub transactional: bool,
    pub prefix: String,
    /// Text content (wal2json cuts binary content at the first NUL byte).
    pub content: String,
}

/// Why a line is not a wal2json v2 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Wal2JsonError {
    #[error("wal2json line is not valid UTF-8 at byte {0}")]
    InvalidUtf8(usize),
    #[error("wal2json line is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("wal2json line is not a JSON object (format-version 1 output?)")]
    NotAnObject,
    #[error("wal2json line has no \"action\" field")]
    MissingAction,
    #[error("wal2json line has unknown action {0:?} (expected B, C, I, U, D, T or M)")]
    UnknownAction(String),
    #[error("wal2json {action:?} line: missing field {field:?}")]
    MissingField { action: char, field: &'static str },
    #[error("wal2json {action:?} line: field {field:?}: {reason}")]
    InvalidField {
        action: char,
        field: &'static str,
        reason: String,
    },
}

/// Decodes one wal2json `format-version 2` line (surrounding whitespace and a trailing
/// newline are allowed). Unknown fields are ignored, so options pgmesh does not use
/// (`include-default`, newer wal2json fields) do not break decoding.
pub fn decode_line(line: impl AsRef<[u8]>) -> Result<Wal2JsonMessage, Wal2JsonError> {
    let bytes = line.as_ref();
    let text =
        std::str::from_utf8(bytes).map_err(|e| Wal2JsonError::InvalidUtf8(e.valid_up_to()))?;
    let doc: Value =
        serde_json::from_str(text).map_err(|e| Wal2JsonError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = doc else {
        return Err(Wal2JsonError::NotAnObject);
    };
    let action = match obj.get("action") {
        None => return Err(Wal2JsonError::MissingAction),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(Wal2JsonError::UnknownAction(other.to_string())),
    };
    let code = match action {
        "B" | "C" | "I" | "U" | "D" | "T" | "M" => action.as_bytes()[0] as char,
        other => return Err(Wal2JsonError::UnknownAction(other.to_string())),
    };
    let f = Fields {
        obj: &obj,
        action: code,
    };
    Ok(match code {
        'B' => Wal2JsonMessage::Begin(f.boundary()?),
        'C' => Wal2JsonMessage::Commit(f.boundary()?),
        'I' | 'U' | 'D' => {
            let mut change = f.row_change()?;
            attach_number_texts(text, &mut change);
            match code {
                'I' => Wal2JsonMessage::Insert(change),
                'U' => Wal2JsonMessage::Update(change),
                _ => Wal2JsonMessage::Delete(change),
            }
        }
        'T' => Wal2JsonMessage::Truncate(Truncate {
            meta: f.meta()?,
            schema: f.opt_string("schema")?,
            table: f.string("table")?,
        }),
        _ => Wal2JsonMessage::Message(LogicalMessage {
            meta: f.meta()?,
            transactional: f.bool("transactional")?,
            prefix: f.string("prefix")?,
            content: f.string("content")?,
        }),
    })
}

/// Typed access to the fields of one line, with errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    action: char,
}

impl Fields<'_> {
    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> Wal2JsonError {
        Wal2JsonError::InvalidField {
            action: self.action,
            field,
            reason: reason.into(),
        }
    }

    fn missing(&self, field: &'static str) -> Wal2JsonError {
        Wal2JsonError::MissingField {
            action: self.action,
            field,
        }
    }

    /// The field, with JSON `null` treated as absent.
    fn get(&self, field: &'static str) -> Option<&Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn opt_string(&self, field: &'static str) -> Result<Option<String>, Wal2JsonError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.invalid(field, format!("expected a string, got {v}"))),
        }
    }

    fn string(&self, field: &'static str) -> Result<String, Wal2JsonError> {
        self.opt_string(field)?.ok_or_else(|| self.missing(field))
    }

    fn bool(&self, field: &'static str) -> Result<bool, Wal2JsonError> {
        match self.get(field) {
            None => Err(self.missing(field)),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.invalid(field, format!("expected true or false, got {v}"))),
        }
    }

    fn opt_uint<T: TryFrom<u64>>(&self, field: &'static str) -> Result<Option<T>, Wal2JsonError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| T::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    let bits = std::mem::size_of::<T>() * 8;
                    self.invalid(
                        field,
                        format!("expected an unsigned {bits}-bit integer, got {v}"),
                    )
                }),
        }
    }

    fn opt_lsn(&self, field: &'static str) -> Result<Option<Lsn>, Wal2JsonError> {
        match self.opt_string(field)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| self.invalid(field, format!("{e}"))),
        }
    }

    fn meta(&self) -> Result<TxnMeta, Wal2JsonError> {
        Ok(TxnMeta {
            xid: self.opt_uint("xid")?,
            timestamp: self.opt_string("timestamp")?.map(|t| Timestamp::new(&t)),
            origin: self.opt_uint("origin")?,
            lsn: self.opt_lsn("lsn")?,
        })
    }

    fn boundary(&self) -> Result<TxnBoundary, Wal2JsonError> {
        let meta = self.meta()?;
        Ok(TxnBoundary {
            xid: meta.xid,
            timestamp: meta.timestamp,
            origin: meta.origin,
            lsn: meta.lsn,
            next_lsn: self.opt_lsn("nextlsn")?,
        })
    }

    fn row_change(&self) -> Result<RowChange, Wal2JsonError> {
        let pk = match self.get("pk") {
            None => None,
            Some(v) => Some(
                self.array("pk", v)?
                    .iter()
                    .map(|c| {
                        let c = self.column_object("pk", c)?;
                        Ok(KeyColumn {
                            name: c.string("name")?,
                            type_name: c.opt_string("type")?,
                            type_oid: c.opt_uint("typeoid")?,
                        })
                    })
                    .collect::<Result<Vec<_>, Wal2JsonError>>()?,
            ),
        };
        Ok(RowChange {
            meta: self.meta()?,
            schema: self.opt_string("schema")?,
            table: self.string("table")?,
            columns: self.columns("columns")?,
            identity: self.columns("identity")?,
            pk,
        })
    }

    fn array<'v>(
        &self,
        field: &'static str,
        v: &'v Value,
    ) -> Result<&'v Vec<Value>, Wal2JsonError> {
        v.as_array()
            .ok_or_else(|| self.invalid(field, format!("expected an array, got {v}")))
    }

    /// Fields of one element of a column array; errors still name the array.
    fn column_object<'v>(
        &self,
        field: &'static str,
        v: &'v Value,
    ) -> Result<Fields<'v>, Wal2JsonError> {
        match v {
            Value::Object(obj) => Ok(Fields {
                obj,
                action: self.action,
            }),
            other => Err(self.invalid(field, format!("expected column objects, got {other}"))),
        }
        .map_err(|e| e.in_array(field))
    }

    fn columns(&self, field: &'static str) -> Result<Vec<Column>, Wal2JsonError> {
        let Some(v) = self.get(field) else {
            return Ok(Vec::new());
        };
        self.array(field, v)?
            .iter()
            .map(|c| {
                let c = self.column_object(field, c)?;
                let parse = || -> Result<Column, Wal2JsonError> {
                    Ok(Column {
                        name: c.string("name")?,
                        type_name: c.opt_string("type")?,
                        type_oid: c.opt_uint("typeoid")?,
                        value: c
                            .obj
                            .get("value")
                            .cloned()
                            .ok_or_else(|| c.missing("value"))?,
                        number_text: None,
                        optional: match c.get("optional") {
                            None => None,
                            Some(_) => Some(c.bool("optional")?),
                        },
                        position: match c.get("position") {
                            None => None,
                            Some(v) => {
                                Some(v.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(
                                    || {
                                        c.invalid(
                                            "position",
                                            format!("expected an integer, got {v}"),
                                        )
                                    },
                                )?)
                            }
                        },
                    })
                };
                parse().map_err(|e| e.in_array(field))
            })
            .collect()
    }
}

impl Wal2JsonError {
    /// Qualifies a column-level field name with the array it is in (`columns[].value`).
    fn in_array(self, array: &'static str) -> Self {
        let qualify = |field: &'static str| -> &'static str {
            match (array, field) {
                (_, f) if f == array => f,
                ("columns", "name") => "columns[].name",
                ("columns", "type") => "columns[].type",
                ("columns", "typeoid") => "columns[].typeoid",
                ("columns", "value") => "columns[].value",
                ("columns", "optional") => "columns[].optional",
                ("columns", "position") => "columns[].position",
                ("identity", "name") => "identity[].name",
                ("identity", "type") => "identity[].type",
                ("identity", "typeoid") => "identity[].typeoid",
                ("identity", "value") => "identity[].value",
                ("identity", "optional") => "identity[].optional",
                ("identity", "position") => "identity[].position",
                ("pk", "name") => "pk[].name",
                ("pk", "type") => "pk[].type",
                ("pk", "typeoid") => "pk[].typeoid",
                (_, f) => f,
            }
        };
        match self {
            Wal2JsonError::MissingField { action, field } => Wal2JsonError::MissingField {
                action,
                field: qualify(field),
            },
            Wal2JsonError::InvalidField {
                action,
                field,
                reason,
            } => Wal2JsonError::InvalidField {
                action,
                field: qualify(field),
                reason,
            },
            other => other,
        }
    }
}

/// Fills [`Column::number_text`] from the raw line. wal2json prints `"columns"` before
/// `"identity"`, each column's `"value"` once, so the bare numbers that follow a `"value":` key
/// appear in the same order as the `Number` values of `columns` then `identity`. Every match
/// is checked (same `f64`); on any disagreement the remaining texts are left `None` and
/// [`Column::pg_text`] falls back to `serde_json`'s number.
fn attach_number_texts(line: &str, change: &mut RowChange) {
    let has_numbers = change
        .columns
        .iter()
        .chain(&change.identity)
        .any(|c| c.value.is_number());
    if !has_numbers {
        return;
    }
    let mut texts = value_number_texts(line).into_iter();
    for col in change.columns.iter_mut().chain(change.identity.iter_mut()) {
        let Value::Number(n) = &col.value else {
            continue;
        };
        let Some(text) = texts.next() else { return };
        let same = match (text.parse::<f64>(), n.as_f64()) {
            (Ok(a), Some(b)) => a == b,
            _ => false,
        };
        if !same {
            return;
        }
        col.number_text = Some(text.to_string());
    }
}

/// The bare numbers that are values of a `"value"` key, in document order, found by a scan
/// that knows just enough JSON to skip strings (so `"value":1` inside a string never counts).
fn value_number_texts(line: &str) -> Vec<&str> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut after_value_key = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let s = &b[start..i.min(b.len())];
                i += 1;
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                after_value_key = s == b"value" && b.get(j) == Some(&b':');
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                if after_value_key {
                    // Only ASCII bytes were consumed, so these are char boundaries.
                    out.push(&line[start..i]);
                }
                after_value_key = false;
            }
            b':' | b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => {
                after_value_key = false;
                i += 1;
            }
        }
    }
    out
}

/// Parses PostgreSQL's ISO `timestamptz` output (`2026-11-25 20:23:40.310851+05:30`) into
/// microseconds since the Unix epoch. Returns `None` for anything else (BC, infinity, years
/// beyond 4 digits, other DateStyles) rather than guessing.
fn parse_pg_timestamptz(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 6 {
            return None;
        }
        micros = num(start..i)? * 10i64.pow(6 - digits as u32);
    }
    let sign = match b.get(i) {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return None,
    };
    i += 1;
    let mut offset = num(i..i + 2)? * 3600;
    i += 2;
    for unit in [60, 1] {
        if b.get(i) == Some(&b':') {
            offset += num(i + 1..i + 3)? * unit;
            i += 3;
        }
    }
    if i != b.len() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let local = ((days * 24 + hour) * 60 + minute) * 60 + second;
    Some((local - sign * offset) * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What pgmesh asks wal2json for, beyond the fixed options every stream gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wal2JsonOptions {
    /// Replication origin ids (`pg_replication_origin.roident` **on the server being
    /// streamed from**) whose transactions wal2json drops before they leave the server:
    /// the origins under which pgmesh applied the peers' changes there. wal2json accepts only
    /// numeric ids (a name is read as 0 and filters nothing) and has no "all origins"
    /// wildcard; look ids up with
    /// `SELECT roident FROM pg_replication_origin WHERE roname = 'pgmesh_<peer>'`.
    /// Empty: no server-side filtering (the `"origin"` field still allows it client-side).
    pub filter_origin_ids: Vec<u16>,
    /// The publication's tables as (schema, table); only their changes and truncates are
    /// sent. `None` streams every table; `Some(vec![])` streams no table at all.
    pub add_tables: Option<Vec<(String, String)>>,
}

/// The output-plugin options for wal2json, in order, as (name, value) pairs. Fixed part:
/// format 2 (one line per change), the transaction and change metadata pgmesh relies on
/// (xid, commit timestamp for last-writer-wins, LSNs for progress, origin for loop
/// prevention), key and type information, and all four DML actions spelled out so a
/// wal2json default change cannot drop truncates.
#[must_use]
pub fn wal2json_options(opts: &Wal2JsonOptions) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = [
        ("format-version", "2"),
        ("include-xids", "1"),
        ("include-timestamp", "1"),
        ("include-lsn", "1"),
        ("include-origin", "1"),
        ("include-pk", "1"),
        ("include-type-oids", "1"),
        ("include-not-null", "1"),
        ("actions", "insert,update,delete,truncate"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect();
    if !opts.filter_origin_ids.is_empty() {
        let ids: Vec<String> = opts.filter_origin_ids.iter().map(u16::to_string).collect();
        out.push(("filter-origins", ids.join(",")));
    }
    if let Some(tables) = &opts.add_tables {
        let list: Vec<String> = tables
            .iter()
            .map(|(s, t)| {
                format!(
                    "{}.{}",
                    escape_add_tables_part(s),
                    escape_add_tables_part(t)
                )
            })
            .collect();
        out.push(("add-tables", list.join(",")));
    }
    out
}

/// Escapes a schema or table name for `add-tables`: wal2json splits on `,` and whitespace,
/// splits schema from table at the first `.`, treats a leading `*` as a wildcard and drops
/// each `\` while keeping the character after it. Names are matched exactly (no case folding,
/// no SQL quoting).
#[must_use]
pub fn escape_add_tables_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, ch) in name.chars().enumerate() {
        if matches!(ch, '\\' | ',' | '.') || ch.is_ascii_whitespace() || (i == 0 && ch == '*') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// `("format-version" '2', "include-xids" '1', …)`: the option list of
/// `START_REPLICATION SLOT … LOGICAL …`.
#[must_use]
pub fn start_replication_option_list(options: &[(&str, String)]) -> String {
    let items: Vec<String> = options
        .iter()
        .map(|(k, v)| {
            format!(
                "{} {}",
                crate::sqlquote::quoted_ident(k),
                crate::sqlquote::repl_literal(v)
            )
        })
        .collect();
    format!("({})", items.join(", "))
}

/// `'format-version', '2', …`: the variadic tail of `pg_logical_slot_{get,peek}_changes`.
#[must_use]
pub fn sql_option_args(options: &[(&str, String)]) -> String {
    options
        .iter()
        .map(|(k, v)| {
            format!(
                "{}, {}",
                crate::sqlquote::literal(k),
                crate::sqlquote::literal(v)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_begin_with_every_field() {
        let m = decode_line(
            r#"{"action":"B","xid":724,"timestamp":"2026-11-25 20:23:40.310851+00","origin":0,"lsn":"0/1527260","nextlsn":"0/1527998"}"#,
        )
        .unwrap();
        let Wal2JsonMessage::Begin(b) = m else {
            panic!("{m:?}")
        };
        assert_eq!(b.xid, Some(724));
        assert_eq!(b.origin, Some(0));
        assert_eq!(b.lsn, Some("0/1527260".parse().unwrap()));
        assert_eq!(b.next_lsn, Some("0/1527998".parse().unwrap()));
        let ts = b.timestamp.unwrap();
        assert_eq!(ts.text, "2026-11-25 20:23:40.310851+00");
        assert_eq!(ts.unix_micros, Some(1_795_638_220_310_851));
    }

    #[test]
    fn minimal_lines_have_no_metadata() {
        assert_eq!(
            decode_line(b"{\"action\":\"C\"}\n").unwrap(),
            Wal2JsonMessage::Commit(TxnBoundary::default())
        );
    }

    #[test]
    fn timestamps_with_offsets_and_odd_forms() {
        let utc = parse_pg_timestamptz("2026-11-25 20:23:40.310851+00").unwrap();
        assert_eq!(
            parse_pg_timestamptz("2026-11-26 01:53:40.310851+05:30"),
            Some(utc)
        );
        assert_eq!(
            parse_pg_timestamptz("2026-11-25 17:23:40.310851-03"),
            Some(utc)
        );
        assert_eq!(parse_pg_timestamptz("1970-01-01 00:00:00+00"), Some(0));
        assert_eq!(
            parse_pg_timestamptz("1969-12-31 23:59:59.5+00"),
            Some(-500_000)
        );
        assert_eq!(
            parse_pg_timestamptz("2000-02-29 00:00:00+00:00:30"),
            Some(951_782_370_000_000)
        );
        for bad in [
            "",
            "infinity",
            "2000-02-30 00:00:00+00",
            "0044-03-15 12:00:00+00 BC",
            "2026-11-25T20:23:40+00",
            "2026-11-25 20:23:40",
            "2026-11-25 20:23:40.1234567+00",
            "2026-11-25 20:23:40.+00",
        ] {
            assert_eq!(parse_pg_timestamptz(bad), None, "{bad}");
            assert_eq!(Timestamp::new(bad).text, bad);
        }
    }

    #[test]
    fn exact_number_text_survives_beyond_f64() {
        let line = r#"{"action":"U","table":"t","columns":[{"name":"value","type":"numeric","value":12345678901234567890.123456789},{"name":"s","value":"\"value\":3"},{"name":"i","value":-5e3}],"identity":[{"name":"k","value":7}]}"#;
        let Wal2JsonMessage::Update(u) = decode_line(line).unwrap() else {
            panic!()
        };
        assert_eq!(
            u.columns[0].pg_text().unwrap(),
            "12345678901234567890.123456789"
        );
        assert_eq!(u.columns[1].pg_text().unwrap(), "\"value\":3");
        assert_eq!(u.columns[2].number_text.as_deref(), Some("-5e3"));
        assert_eq!(u.identity[0].number_text.as_deref(), Some("7"));
        assert_eq!(u.schema, None);
        assert_eq!(u.pk, None);
    }

    #[test]
    fn pg_text_restores_bytea_prefix_and_bools() {
        let line = r#"{"action":"I","schema":"s","table":"t","columns":[{"name":"b","type":"bytea","typeoid":17,"value":"dead"},{"name":"f","type":"boolean","value":false},{"name":"n","value":null}]}"#;
        let Wal2JsonMessage::Insert(i) = decode_line(line).unwrap() else {
            panic!()
        };
        assert_eq!(i.columns[0].pg_text().unwrap(), "\\xdead");
        assert_eq!(i.columns[1].pg_text().unwrap(), "false");
        assert_eq!(i.columns[2].pg_text(), None);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |s: &str| decode_line(s).unwrap_err();
        assert!(matches!(err("{"), Wal2JsonError::InvalidJson(_)));
        assert_eq!(
            decode_line([0xff, b'{']).unwrap_err(),
            Wal2JsonError::InvalidUtf8(0)
        );
        assert_eq!(err("[1]"), Wal2JsonError::NotAnObject);
        assert_eq!(err("{}"), Wal2JsonError::MissingAction);
        assert_eq!(
            err(r#"{"action":"X"}"#),
            Wal2JsonError::UnknownAction("X".into())
        );
        assert_eq!(
            err(r#"{"action":1}"#),
            Wal2JsonError::UnknownAction("1".into())
        );
        assert_eq!(
            err(r#"{"action":"I","schema":"s"}"#),
            Wal2JsonError::MissingField {
                action: 'I',
                field: "table"
            }
        );
        assert_eq!(
            err(r#"{"action":"I","table":"t","columns":[{"name":"a"}]}"#),
            Wal2JsonError::MissingField {
                action: 'I',
                field: "columns[].value"
            }
        );
        assert_eq!(
            err(r#"{"action":"M","transactional":true,"prefix":"p"}"#),
            Wal2JsonError::MissingField {
                action: 'M',
                field: "content"
            }
        );
        assert!(matches!(
            err(r#"{"action":"B","xid":-1}"#),
            Wal2JsonError::InvalidField {
                action: 'B',
                field: "xid",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"action":"B","origin":70000}"#),
            Wal2JsonError::InvalidField {
                field: "origin",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"action":"C","lsn":"nope"}"#),
            Wal2JsonError::InvalidField { field: "lsn", .. }
        ));
        assert!(matches!(
            err(r#"{"action":"D","table":"t","identity":{}}"#),
            Wal2JsonError::InvalidField {
                field: "identity",
                ..
            }
        ));
        let msg = err(r#"{"action":"T","table":5}"#).to_string();
        assert!(
            msg.contains("\"table\"") && msg.contains("expected a string"),
            "{msg}"
        );
    }

    #[test]
    fn options_for_a_filtered_publication() {
        let opts = wal2json_options(&Wal2JsonOptions {
            filter_origin_ids: vec![1, 3],
            add_tables: Some(vec![
                ("public".into(), "t".into()),
                ("my.schema".into(), "a,b c\\d".into()),
                ("*".into(), "*".into()),
            ]),
        });
        let get = |k: &str| opts.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(opts[0], ("format-version", "2".to_string()));
        for k in [
            "include-xids",
            "include-timestamp",
            "include-lsn",
            "include-origin",
            "include-pk",
            "include-type-oids",
        ] {
            assert_eq!(get(k), Some("1"), "{k}");
        }
        assert_eq!(get("filter-origins"), Some("1,3"));
        assert_eq!(
            get("add-tables"),
            Some(r"public.t,my\.schema.a\,b\ c\\d,\*.\*")
        );
        assert_eq!(get("actions"), Some("insert,update,delete,truncate"));
    }

    #[test]
    fn options_without_filters_and_their_sql_forms() {
        let opts = wal2json_options(&Wal2JsonOptions::default());
        assert!(opts
            .iter()
            .all(|(k, _)| *k != "filter-origins" && *k != "add-tables"));
        let o = vec![
            ("format-version", "2".to_string()),
            ("add-tables", r"it's.a\,b".to_string()),
        ];
        assert_eq!(
            start_replication_option_list(&o),
            r#"("format-version" '2', "add-tables" 'it''s.a\,b')"#
        );
        assert_eq!(
            sql_option_args(&o),
            r"'format-version', '2', 'add-tables', E'it''s.a\\,b'"
        );
        let empty = wal2json_options(&Wal2JsonOptions {
            add_tables: Some(vec![]),
            ..Default::default()
        });
        assert!(empty.contains(&("add-tables", String::new())));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".*") {
            let _ = decode_line(&s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_line(&b);
        }

        #[test]
        fn json_shaped_garbage_never_panics(s in r#"\{"action":"[BCIUDTM]"(,"[a-z]{1,8}":("[^"\\]{0,8}"|-?[0-9.eE+]{1,12}|null|true|\[(\{"(name|value|type)":(-?[0-9.eE]{1,8}|"v"|null)\},?){0,3}\]))*\}"#) {
            let _ = decode_line(&s);
        }

        #[test]
        fn timestamps_never_panic(s in "[0-9 :.+-]{0,40}") {
            let _ = parse_pg_timestamptz(&s);
        }
    }
}
