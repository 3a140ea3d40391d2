//! SQL text of the row-at-a-time statements for tables without a primary key (pure).
//!
//! Such a table is a multiset of rows identified by their whole content, so a change
//! names its row by the full old image: one statement finds and locks ONE row whose every
//! column matches (`LIMIT 1`), leaving identical duplicates alone; a second statement
//! changes the row at that address.
//!
//! Two statements, not one with the lookup as a sub-select: when the lookup waits for a
//! concurrent local write that leaves the row's content as it was (`UPDATE t SET c = c`),
//! `FOR UPDATE` follows to the new row version and hands back its address, but the outer
//! statement still reads with the snapshot taken before the wait, in which that version
//! does not exist yet: it would change nothing and the change would count as missing on
//! this node only. The second statement takes a new snapshot, which holds the version we
//! locked.
//!
//! Columns are compared as canonical text, `t.c::text IS NOT DISTINCT FROM
//! $n::text::<type>::text`: text works for every type (json, point and xml have no `=`),
//! NULL matches NULL, and the round trip through the column type makes the peer's text
//! (printed under the walsender's DateStyle / TimeZone) canonical under the apply
//! session's fixed settings, the same ones this row's text is printed under. The row is
//! addressed by `(tableoid, ctid)`, not `ctid` alone: in a partitioned table two
//! partitions can hold the same ctid.

use crate::table::local::LocalTable;

/// `t.a::text IS NOT DISTINCT FROM $1::text::int4::text AND …` over `cols`, parameters
/// numbered from `first`; `true` without columns (callers refuse an old image without
/// any column to compare: it would name any row).
fn matches(t: &LocalTable, cols: &[usize], first: usize) -> String {
    if cols.is_empty() {
        return "true".into();
    }
    cols.iter()
        .enumerate()
        .map(|(i, &c)| {
            let col = &t.columns[c];
            format!(
                "t.{}::text IS NOT DISTINCT FROM ${}::text::{}::text",
                col.quoted,
                first + i,
                col.type_sql
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The address of one row whose columns `match_cols` equal the parameters (one per
/// column, in order), locked: a concurrent local change of that row is waited for and
/// re-checked (a row that no longer matches is passed over for the next one that does).
/// Columns: tableoid (`oid`), ctid as text; no row when none matches.
#[must_use]
pub fn locate_one(t: &LocalTable, match_cols: &[usize]) -> String {
    format!(
        "SELECT t.tableoid, t.ctid::text FROM {} t WHERE {} LIMIT 1 FOR UPDATE OF t",
        t.name,
        matches(t, match_cols, 1)
    )
}

/// The row at an address `locate_one` returned: `$1` tableoid, `$2` ctid as text.
/// (Partitions can share a ctid, hence the tableoid.)
const AT_ADDRESS: &str = "tableoid = $1 AND ctid = $2::text::tid";

/// Deletes the row at an address `locate_one` returned.
#[must_use]
pub fn delete_at(t: &LocalTable) -> String {
    format!("DELETE FROM {} WHERE {AT_ADDRESS}", t.name)
}

/// Sets `set_cols` of the row at an address `locate_one` returned (`$1`, `$2`); the new
/// values follow from `$3`. Without any column to set, the first column is set to itself
/// (a new row version still records the write); `None` for a table without columns.
#[must_use]
pub fn update_at(t: &LocalTable, set_cols: &[usize]) -> Option<String> {
    let set = if set_cols.is_empty() {
        let c = &t.columns.first()?.quoted;
        format!("{c} = {c}")
    } else {
        set_cols
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let col = &t.columns[c];
                format!("{} = ${}::text::{}", col.quoted, 3 + i, col.type_sql)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!("UPDATE {} SET {set} WHERE {AT_ADDRESS}", t.name))
}

/// Inserts one row with the columns `cols` (the others take their defaults).
#[must_use]
pub fn insert_one(t: &LocalTable, cols: &[usize]) -> String {
    if cols.is_empty() {
        return format!("INSERT INTO {} DEFAULT VALUES", t.name);
    }
    let target = super::sql::column_list(t, cols);
    let values = cols
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("${}::text::{}", i + 1, t.columns[c].type_sql))
        .collect::<Vec<_>>()
        .join(", ");
    format!("INSERT INTO {} ({target}) VALUES ({values})", t.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::local::LocalColumn;

    fn table() -> LocalTable {
        let col = |n: &str, q: &str, t: &str| LocalColumn {
            name: n.into(),
            quoted: q.into(),
            type_sql: t.into(),
        };
        LocalTable {
            name: "public.log".into(),
            schema: "public".into(),
            relname: "log".into(),
            columns: vec![
                col("a", "a", "integer"),
                col("When", "\"When\"", "timestamp with time zone"),
                col("c", "c", "jsonb"),
            ],
            pk: vec![],
            uniques: vec![],
        }
    }

    #[test]
    fn a_row_is_located_by_every_column_as_text_and_locked() {
        assert_eq!(
            locate_one(&table(), &[0, 1, 2]),
            "SELECT t.tableoid, t.ctid::text FROM public.log t \
             WHERE t.a::text IS NOT DISTINCT FROM $1::text::integer::text \
             AND t.\"When\"::text IS NOT DISTINCT FROM $2::text::timestamp with time zone::text \
             AND t.c::text IS NOT DISTINCT FROM $3::text::jsonb::text LIMIT 1 FOR UPDATE OF t"
        );
        assert_eq!(
            delete_at(&table()),
            "DELETE FROM public.log WHERE tableoid = $1 AND ctid = $2::text::tid"
        );
    }

    #[test]
    fn update_numbers_new_values_after_the_address() {
        let sql = update_at(&table(), &[0, 1]).unwrap();
        assert_eq!(
            sql,
            "UPDATE public.log SET a = $3::text::integer, \"When\" = $4::text::timestamp with time zone \
             WHERE tableoid = $1 AND ctid = $2::text::tid"
        );
        let touch = update_at(&table(), &[]).unwrap();
        assert!(
            touch.starts_with("UPDATE public.log SET a = a WHERE"),
            "{touch}"
        );
        let mut empty = table();
        empty.columns.clear();
        assert_eq!(update_at(&empty, &[]), None);
    }

    #[test]
    fn insert_casts_each_value() {
        assert_eq!(
            insert_one(&table(), &[0, 2]),
            "INSERT INTO public.log (a, c) VALUES ($1::text::integer, $2::text::jsonb)"
        );
        assert_eq!(
            insert_one(&table(), &[]),
            "INSERT INTO public.log DEFAULT VALUES"
        );
    }
}
