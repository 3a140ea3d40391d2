//! A steady-state downstream transaction in one message (issue 15).
//!
//! A small chunk without conflicts is written by guarded statements and committed in the
//! same pipeline (see [`super::uncontested`]). Sent through the extended protocol, each
//! statement ends with a `Sync`, and the backend flushes its output and the sidecar wakes
//! at each `ReadyForQuery`: six times for a chunk of inserts, updates and deletes (BEGIN,
//! three writes, the tombstone guard, the commit). Profiled at 5,000 txn/s, `send()` was
//! 15 % of the apply backend's samples. Here the whole transaction is one simple-query
//! message instead — `BEGIN`, an `EXECUTE` of each guarded statement (prepared once per
//! session with `PREPARE`, so they keep their generic plans), the origin's progress and
//! `COMMIT` — and costs one flush and one wakeup.
//!
//! The parameters travel as literals: every one is a `text[]` of values pgoutput sent as
//! text, the table's name, the peer's origins or a count, so rendering them is cheap and
//! exact. The message keeps what the commit statement promises (`session::commit_sql`): an
//! error anywhere skips the rest of the message, the origin's progress included, and the
//! transaction is left aborted for the caller to roll back and apply the chunk again the
//! careful way.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::error::ApplyError;
use super::plan::Sides;
use super::resolve::Resolver;
use super::stats::ApplyStats;
use super::uncontested::{Arg, Keyed, Sorted};
use crate::batch::Chunk;
use crate::sqlquote::literal;

/// Names of the statements prepared with `PREPARE` on one session, by SQL text.
#[derive(Default)]
pub struct Prepared {
    names: HashMap<String, String>,
    /// Numbers handed out so far: a name is never given twice, not even after a
    /// `PREPARE` that failed part of the way (the ones before it stay prepared).
    handed_out: usize,
}

impl Prepared {
    /// Records statements the session has prepared.
    pub(super) fn add(&mut self, new: Vec<(String, String)>) {
        self.names.extend(new);
    }
}

/// One downstream transaction as a single simple-query message.
pub(super) struct Message {
    /// `PREPARE`s of statements the session does not have yet (empty when it has all):
    /// sent apart first, since a prepared statement outlives a rollback.
    pub(super) prepare: String,
    /// (SQL, name) of the statements `prepare` prepares.
    pub(super) new: Vec<(String, String)>,
    /// `BEGIN`, the writes, the commit.
    pub(super) text: String,
    /// What the transaction writes when it commits.
    pub(super) stats: ApplyStats,
}

/// The message that writes and commits `chunk` (opened by `begin`, closed by `commit`),
/// or `None` when the chunk needs more than guarded writes: a table with another unique
/// constraint or without a key, a group of new rows for COPY, or a change that needs the
/// decision whatever the table holds (see [`Sorted`]).
pub(super) fn build(
    chunk: &Chunk,
    sides: Sides<'_>,
    prepared: &mut Prepared,
    begin: &str,
    commit: &str,
) -> Result<Option<Message>, ApplyError> {
    if !Resolver::may_commit_with_writes(chunk) {
        return Ok(None);
    }
    let ids: Vec<String> = sides.peer_origins().iter().map(u32::to_string).collect();
    let origins = array_literal(ids.iter().map(|id| Some(id.as_str())));
    let mut m = Message {
        prepare: String::new(),
        new: Vec::new(),
        text: format!("{begin}; "),
        stats: ApplyStats::default(),
    };
    for tc in &chunk.tables {
        let changes: Vec<Keyed<'_>> = tc.changes.iter().collect();
        let sorted = Sorted::new(&changes);
        if !sorted.rest.is_empty() {
            return Ok(None);
        }
        let t = &tc.map.local;
        let (jobs, copies) = sorted.jobs(t, true)?;
        if !copies.is_empty() {
            return Ok(None);
        }
        for job in &jobs {
            let name = m.name_for(prepared, &job.sql);
            let args: Vec<String> = job
                .args()
                .into_iter()
                .map(|a| match a {
                    Arg::Array(values) => array_literal(values.iter().copied()),
                    Arg::Name => literal(&t.name),
                    Arg::Origins => origins.clone(),
                    Arg::Expected(n) => n.to_string(),
                })
                .collect();
            let _ = write!(m.text, "EXECUTE {name}({}); ", args.join(", "));
        }
        m.stats.add(&sorted.all_written());
    }
    m.text.push_str(commit);
    Ok(Some(m))
}

impl Message {
    /// The prepared statement's name for `sql`, adding its `PREPARE` when the session
    /// has none.
    fn name_for(&mut self, prepared: &mut Prepared, sql: &str) -> String {
        if let Some(name) = prepared.names.get(sql) {
            return name.clone();
        }
        if let Some((_, name)) = self.new.iter().find(|(s, _)| s == sql) {
            return name.clone();
        }
        let name = format!("pgmesh_w{}", prepared.handed_out);
        prepared.handed_out += 1;
        let _ = write!(self.prepare, "PREPARE {name} AS {sql}; ");
        self.new.push((sql.to_string(), name.clone()));
        name
    }
}

/// A one-dimensional array literal of `values` (`NULL` for `None`), as an SQL string
/// literal: each element double-quoted with `\` and `"` escaped (array syntax), the
/// whole quoted by [`literal`], which reads the same whatever
/// `standard_conforming_strings` says.
fn array_literal<'v>(values: impl IntoIterator<Item = Option<&'v str>>) -> String {
    let mut a = String::from("{");
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            a.push(',');
        }
        match v {
            None => a.push_str("NULL"),
            Some(v) => {
                a.push('"');
                for c in v.chars() {
                    if c == '"' || c == '\\' {
                        a.push('\\');
                    }
                    a.push(c);
                }
                a.push('"');
            }
        }
    }
    a.push('}');
    literal(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_quote_every_element_and_keep_nulls() {
        assert_eq!(array_literal([]), "'{}'");
        assert_eq!(
            array_literal([Some("1"), None, Some("NULL")]),
            r#"'{"1",NULL,"NULL"}'"#
        );
        // Array escapes first, then the string literal's: a quote doubled, a backslash
        // doubled again inside E'…'.
        assert_eq!(
            array_literal([Some(r#"a"b"#), Some("it's"), Some(r"c\d")]),
            r#"E'{"a\\"b","it''s","c\\\\d"}'"#
        );
    }
}
