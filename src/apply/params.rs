//! Statement parameters of the apply path, and the grouping of rows by the columns they
//! carry: every write statement takes one `text[]` per column (`unnest` on the server), so
//! rows are grouped by column set and each group is one statement.

use tokio_postgres::types::ToSql;

use super::error::ApplyError;
use crate::batch::Pending;
use crate::table::local::LocalTable;
use crate::table::row::{Key, Row, Val};

/// A change to write: its key, the image to write, the change it came from.
pub(super) type Change<'c> = (&'c Key, &'c Row, &'c Pending);
/// `text[]` parameters, one per column.
pub(super) type Columns<'v> = Vec<Vec<Option<&'v str>>>;

/// One `text[]` parameter per key column, for `keys`.
pub(super) fn key_params<'k>(keys: &[&'k Key], ncols: usize) -> Result<Columns<'k>, ApplyError> {
    let mut cols = vec![Vec::with_capacity(keys.len()); ncols];
    for k in keys {
        for (c, v) in cols.iter_mut().zip(&k.0) {
            c.push(Some(key_text(v)?));
        }
    }
    Ok(cols)
}

/// A key value as text (key values travel as text, like every value pgoutput sends).
pub(super) fn key_text(v: &[u8]) -> Result<&str, ApplyError> {
    std::str::from_utf8(v).map_err(|_| ApplyError::Protocol("key value is not valid UTF-8".into()))
}

pub(super) fn as_params<'p>(cols: &'p [Vec<Option<&str>>]) -> Vec<&'p (dyn ToSql + Sync)> {
    cols.iter().map(|c| c as &(dyn ToSql + Sync)).collect()
}

/// One `text[]` per column in `cols` over the rows at `idx`, after the key arrays when
/// `keys` (the number of key columns) is given.
pub(super) fn value_params<'r>(
    rows: &[Change<'r>],
    idx: &[usize],
    cols: &[usize],
    keys: Option<usize>,
) -> Result<Columns<'r>, ApplyError> {
    let mut params = match keys {
        Some(n) => {
            let ks: Vec<&Key> = idx.iter().map(|&i| rows[i].0).collect();
            key_params(&ks, n)?
        }
        None => Vec::new(),
    };
    for &c in cols {
        let mut col = Vec::with_capacity(idx.len());
        for &i in idx {
            col.push(rows[i].1 .0[c].as_text()?);
        }
        params.push(col);
    }
    Ok(params)
}

/// Columns an image sets: key columns included for inserts, excluded for updates.
pub(super) fn columns_of(row: &Row, table: &LocalTable, with_key: bool) -> Vec<usize> {
    row.0
        .iter()
        .enumerate()
        .filter(|(i, v)| {
            matches!(v, Val::Text(_) | Val::Null) && (with_key || !table.pk.contains(i))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Positions of `rows` grouped by the columns they set, groups in order of first
/// appearance: (columns, positions).
pub(super) fn groups_by_columns<'r>(
    rows: impl IntoIterator<Item = &'r Row>,
    table: &LocalTable,
    with_key: bool,
) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    for (i, r) in rows.into_iter().enumerate() {
        let cols = columns_of(r, table, with_key);
        match groups.iter_mut().find(|(c, _)| *c == cols) {
            Some((_, g)) => g.push(i),
            None => groups.push((cols, vec![i])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn table() -> std::sync::Arc<LocalTable> {
        crate::txn::testing::table_map(&["id", "a", "b"], &[0], &[])
            .local
            .clone()
    }

    fn text(s: &str) -> Val {
        Val::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn rows_group_by_the_columns_they_set_in_order_of_appearance() {
        let rows = [
            Row(vec![text("1"), text("x"), Val::Unchanged]),
            Row(vec![text("2"), text("y"), Val::Null]),
            Row(vec![text("3"), text("z"), Val::Unchanged]),
        ];
        let t = table();
        assert_eq!(
            groups_by_columns(&rows, &t, true),
            vec![(vec![0, 1], vec![0, 2]), (vec![0, 1, 2], vec![1])]
        );
        // Updates leave the key columns out.
        assert_eq!(
            groups_by_columns(&rows, &t, false),
            vec![(vec![1], vec![0, 2]), (vec![1, 2], vec![1])]
        );
    }

    #[test]
    fn key_params_are_one_array_per_key_column() {
        let (k1, k2) = (
            Key(vec![Bytes::from("1"), Bytes::from("a")]),
            Key(vec![Bytes::from("2"), Bytes::from("b")]),
        );
        let p = key_params(&[&k1, &k2], 2).unwrap();
        assert_eq!(
            p,
            vec![vec![Some("1"), Some("2")], vec![Some("a"), Some("b")]]
        );
        let bad = Key(vec![Bytes::from_static(&[0xff])]);
        assert!(matches!(
            key_params(&[&bad], 1),
            Err(ApplyError::Protocol(_))
        ));
    }
}
