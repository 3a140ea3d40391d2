//! New rows in bulk through `COPY … FROM STDIN` instead of `INSERT … ON CONFLICT DO
//! NOTHING` (issue 5, finding 3): COPY fills whole pages per WAL record (multi-insert)
//! and skips the speculative insertion of `ON CONFLICT`, about 2.7× fewer backend cycles
//! per row for 5,000-row chunks (`examples/writepaths.rs`).
//!
//! COPY has no `ON CONFLICT`: a key (or other unique value) that a local session inserted
//! after the chunk's lookup fails the whole COPY. It therefore runs under a savepoint;
//! on a unique or exclusion violation the savepoint is rolled back and the rows take the
//! INSERT path, which skips the taken keys and decides them again. That race needs a
//! local write of a key the peer is inserting at the same moment, so it is rare, and it
//! costs one wasted COPY of one chunk.

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::error::SqlState;

use super::db::Db;
use super::error::ApplyError;
use super::sql;
use crate::table::local::LocalTable;
use crate::table::row::{Row, Val};

/// Groups of new rows at least this large go through COPY. Below it the INSERT is
/// pipelined with the chunk's other statements, while COPY adds round trips (the
/// savepoint, COPY's own start, the release).
pub const COPY_MIN_ROWS: usize = 200;

/// The rows' values of columns `cols` in COPY's text format: tab-separated, one line per
/// row, `\N` for NULL, backslash, tab, newline and carriage return escaped.
/// Values the statement leaves out (unchanged TOAST, absent) are never in `cols`.
#[must_use]
pub fn copy_text<'r>(rows: impl Iterator<Item = &'r Row>, cols: &[usize]) -> Bytes {
    let mut out = BytesMut::new();
    for row in rows {
        for (n, &c) in cols.iter().enumerate() {
            if n > 0 {
                out.put_u8(b'\t');
            }
            match &row.0[c] {
                Val::Text(v) => push_escaped(&mut out, v),
                Val::Null | Val::Unchanged | Val::Absent => out.put_slice(b"\\N"),
            }
        }
        out.put_u8(b'\n');
    }
    out.freeze()
}

fn push_escaped(out: &mut BytesMut, v: &[u8]) {
    let mut start = 0;
    for (i, &b) in v.iter().enumerate() {
        let escaped = match b {
            b'\\' => b'\\',
            b'\t' => b't',
            b'\n' => b'n',
            b'\r' => b'r',
            _ => continue,
        };
        out.put_slice(&v[start..i]);
        out.put_slice(&[b'\\', escaped]);
        start = i + 1;
    }
    out.put_slice(&v[start..]);
}

/// Whether `e` says a value the COPY wrote is held by another row.
fn is_taken_value(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::EXCLUSION_VIOLATION
    )
}

impl Db<'_> {
    /// Writes `rows` (columns `cols`, key included) with one COPY under a savepoint.
    /// `Ok(false)`: one of the values is taken (a local insert since the lookup); nothing
    /// was written and the caller inserts them the careful way.
    pub(super) async fn copy_new_rows<'r>(
        &mut self,
        t: &LocalTable,
        rows: impl Iterator<Item = &'r Row>,
        cols: &[usize],
    ) -> Result<bool, ApplyError> {
        let data = copy_text(rows, cols);
        let stmt = self.statement(&sql::copy_rows(t, cols)).await?;
        let client = self.client;
        let copy = async {
            let sink = client.copy_in::<_, Bytes>(&stmt).await?;
            futures_util::pin_mut!(sink);
            sink.send(data).await?;
            sink.finish().await
        };
        // The savepoint travels with the COPY, in the same round trip.
        let (savepoint, copied) =
            futures_util::future::join(client.batch_execute(SAVEPOINT), copy).await;
        savepoint?;
        match copied {
            Ok(_) => {
                client.batch_execute(RELEASE).await?;
                Ok(true)
            }
            Err(e) if is_taken_value(&e) => {
                client.batch_execute(ROLLBACK_TO).await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

const SAVEPOINT: &str = "SAVEPOINT pgmesh_copy";
const RELEASE: &str = "RELEASE SAVEPOINT pgmesh_copy";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT pgmesh_copy; RELEASE SAVEPOINT pgmesh_copy";

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Val {
        Val::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn values_are_escaped_and_nulls_marked() {
        let rows = [
            Row(vec![text("1"), text("a\tb\nc\\d\re"), Val::Null]),
            Row(vec![text("2"), text(""), text("\\N")]),
        ];
        let out = copy_text(rows.iter(), &[0, 1, 2]);
        assert_eq!(
            &out[..],
            b"1\ta\\tb\\nc\\\\d\\re\t\\N\n2\t\t\\\\N\n".as_slice()
        );
    }

    #[test]
    fn only_the_given_columns_in_their_order() {
        let rows = [Row(vec![text("1"), Val::Unchanged, text("x")])];
        assert_eq!(&copy_text(rows.iter(), &[2, 0])[..], b"x\t1\n".as_slice());
    }
}
