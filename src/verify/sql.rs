//! SQL text of verify's reads (pure). Every statement reads rows as text under the
//! canonical session settings ([`crate::config::names::CANONICAL_TEXT_SETTINGS`]), with the
//! columns in one fixed order chosen from the first node, so both nodes print the same
//! row as the same text whatever their own column order or settings.
//!
//! A key range is `(lo, hi]` in primary-key order; either end may be open. Key values
//! travel as text parameters cast to the column type (`$1::text::bigint`), so they
//! round-trip exactly (floats print shortest-exact with `extra_float_digits = 3`,
//! timestamps in UTC).
//!
//! A range's digest is `count / sum(first 64 bits of md5(row)) / sum(last 64 bits)`: an
//! order-independent sum (no sort, no memory that grows with the range) that works for a
//! multiset as well, where duplicate rows must not cancel out as they would with xor.

use crate::apply::sql::{columns_equal_params, names, unnest_params};
use crate::table::local::LocalTable;

/// `ROW(t.a, t.b, …)::text`: the whole row as one text, columns in table order.
#[must_use]
pub fn row_text(t: &LocalTable) -> String {
    let cols = t
        .columns
        .iter()
        .map(|c| format!("t.{}", c.quoted))
        .collect::<Vec<_>>()
        .join(", ");
    format!("ROW({cols})::text")
}

/// `ARRAY[t.a::text, …]::text[]`: every column's text, in table order.
#[must_use]
pub fn column_texts(t: &LocalTable) -> String {
    let cols = t
        .columns
        .iter()
        .map(|c| format!("t.{}::text", c.quoted))
        .collect::<Vec<_>>()
        .join(", ");
    format!("ARRAY[{cols}]::text[]")
}

/// `t.k1::text, t.k2::text`: the key columns' texts.
fn key_texts(t: &LocalTable) -> String {
    t.pk.iter()
        .map(|&c| format!("t.{}::text", t.columns[c].quoted))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `t.k1, t.k2`: key order (the primary key's index serves it).
fn key_order(t: &LocalTable) -> String {
    t.pk.iter()
        .map(|&c| format!("t.{}", t.columns[c].quoted))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($1::text::int8, $2::text::text)`: a key given as text parameters from `first`.
fn key_params(t: &LocalTable, first: usize) -> String {
    let parts =
        t.pk.iter()
            .enumerate()
            .map(|(i, &c)| format!("${}::text::{}", first + i, t.columns[c].type_sql))
            .collect::<Vec<_>>()
            .join(", ");
    format!("({parts})")
}

/// The condition selecting `(lo, hi]`; `lo`'s key parameters come first. A row
/// comparison on the key columns, which PostgreSQL answers from the primary key's index.
#[must_use]
pub fn range_cond(t: &LocalTable, has_lo: bool, has_hi: bool) -> String {
    let key = format!("({})", key_order(t));
    let n = t.pk.len();
    let mut parts = Vec::new();
    if has_lo {
        parts.push(format!("{key} > {}", key_params(t, 1)));
    }
    if has_hi {
        let first = if has_lo { n + 1 } else { 1 };
        parts.push(format!("{key} <= {}", key_params(t, first)));
    }
    if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" AND ")
    }
}

/// The digest aggregate over a column `h` holding md5 hex texts: `count, 'sum1/sum2'`.
const DIGEST: &str = "count(*)::int8, \
    coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::int8), 0)::text || '/' || \
    coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::int8), 0)::text";

/// Count and digest of a key range. Params: the range's keys (see [`range_cond`]).
/// Columns: count (int8), digest (text).
#[must_use]
pub fn range_digest(t: &LocalTable, has_lo: bool, has_hi: bool) -> String {
    format!(
        "SELECT {DIGEST} FROM (SELECT md5({}) AS h FROM {} t WHERE {}) s",
        row_text(t),
        t.name,
        range_cond(t, has_lo, has_hi)
    )
}

/// The key `$offset` rows past `lo` (the upper end of a range of `offset + 1` rows).
/// Params: `lo`'s keys if any, then the offset (int8). Columns: key texts.
#[must_use]
pub fn boundary(t: &LocalTable, has_lo: bool) -> String {
    let offset = if has_lo { t.pk.len() + 1 } else { 1 };
    format!(
        "SELECT {} FROM {} t WHERE {} ORDER BY {} OFFSET ${offset}::int8 LIMIT 1",
        key_texts(t),
        t.name,
        range_cond(t, has_lo, false),
        key_order(t)
    )
}

/// Every `step`-th key of a range, in key order: where to split it. Params: the range's
/// keys, then the step (int8). Columns: key texts.
#[must_use]
pub fn split_points(t: &LocalTable, has_lo: bool, has_hi: bool) -> String {
    let n = t.pk.len();
    let step = 1 + n * (usize::from(has_lo) + usize::from(has_hi));
    let aliases = (0..n)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let texts =
        t.pk.iter()
            .enumerate()
            .map(|(i, &c)| format!("t.{}::text AS k{i}", t.columns[c].quoted))
            .collect::<Vec<_>>()
            .join(", ");
    format!(
        "SELECT {aliases} FROM (SELECT {texts}, row_number() OVER (ORDER BY {}) AS rn \
           FROM {} t WHERE {}) s WHERE rn % ${step}::int8 = 0 ORDER BY rn",
        key_order(t),
        t.name,
        range_cond(t, has_lo, has_hi)
    )
}

/// Each row of a range: its key and the md5 of its text. Params: the range's keys.
/// Columns: key texts, md5.
#[must_use]
pub fn range_rows(t: &LocalTable, has_lo: bool, has_hi: bool) -> String {
    format!(
        "SELECT {}, md5({}) FROM {} t WHERE {} ORDER BY {}",
        key_texts(t),
        row_text(t),
        t.name,
        range_cond(t, has_lo, has_hi),
        key_order(t)
    )
}

/// `unnest($1::text[], …) WITH ORDINALITY AS u(k0, …, ord)`.
fn unnest_keys(t: &LocalTable) -> String {
    let n = t.pk.len();
    format!(
        "unnest({}) WITH ORDINALITY AS u({}, ord)",
        unnest_params(1, n),
        names("k", n)
    )
}

/// `t.k1 = u.k0::int8 AND …`: the unnested key columns joined onto the table.
fn key_join(t: &LocalTable) -> String {
    crate::apply::sql::key_join(t, "u", "k")
}

/// The current version of each of a list of keys (unlocked): every column's text and
/// the row version (`xmin`). Params: one text[] per key column. Columns: ord (1-based),
/// column texts (text[]), xmin (text). Keys without a row are absent.
#[must_use]
pub fn key_states(t: &LocalTable) -> String {
    format!(
        "SELECT u.ord, {}, t.xmin::text FROM {} JOIN {} t ON {}",
        column_texts(t),
        unnest_keys(t),
        t.name,
        key_join(t)
    )
}

/// What repair needs of one key's row: column texts, the row as JSON (for the ledger),
/// its version, commit time and origin. Params: the key's values (text), one per key
/// column. Columns: text[], json text, xmin text, timestamptz, roident (oid).
#[must_use]
pub fn key_version(t: &LocalTable, lock: bool) -> String {
    let cond = columns_equal_params(t, &t.pk);
    format!(
        "SELECT {}, to_jsonb(t.*)::text, t.xmin::text, \
                (pg_xact_commit_timestamp_origin(t.xmin)).timestamp, \
                (pg_xact_commit_timestamp_origin(t.xmin)).roident \
           FROM {} t WHERE {cond}{}",
        column_texts(t),
        t.name,
        if lock { " FOR UPDATE OF t" } else { "" }
    )
}

/// Buckets of a table without a key: rows grouped by the first two hex digits of their
/// md5 (256 buckets), each with its count and digest. No params. Columns: bucket, count,
/// digest.
#[must_use]
pub fn bucket_digests(t: &LocalTable) -> String {
    format!(
        "SELECT substr(h, 1, 2), {DIGEST} FROM (SELECT md5({}) AS h FROM {} t) s GROUP BY 1",
        row_text(t),
        t.name
    )
}

/// The distinct rows of one bucket with their number of copies. Params: $1 bucket.
/// Columns: row text, column texts (text[]), count.
#[must_use]
pub fn bucket_rows(t: &LocalTable) -> String {
    format!(
        "SELECT r, c, count(*)::int8 FROM (SELECT {} AS r, {} AS c FROM {} t) s \
          WHERE substr(md5(r), 1, 2) = $1 GROUP BY r, c",
        row_text(t),
        column_texts(t),
        t.name
    )
}

/// Copies of given row texts: count and the versions (xmins) of the copies. Params: $1
/// text[] of row texts. Columns: row text, count, xmins (sorted, comma-separated).
#[must_use]
pub fn row_counts(t: &LocalTable, lock: bool) -> String {
    if lock {
        // FOR UPDATE cannot go with GROUP BY: lock the copies in a subquery.
        return format!(
            "SELECT r, count(*)::int8, string_agg(x, ',' ORDER BY x) FROM \
               (SELECT {} AS r, t.xmin::text AS x FROM {} t WHERE {} = ANY($1::text[]) FOR UPDATE OF t) s \
              GROUP BY r",
            row_text(t),
            t.name,
            row_text(t)
        );
    }
    format!(
        "SELECT r, count(*)::int8, string_agg(x, ',' ORDER BY x) FROM \
           (SELECT {} AS r, t.xmin::text AS x FROM {} t) s WHERE r = ANY($1::text[]) GROUP BY r",
        row_text(t),
        t.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::local::LocalColumn;

    fn table(pk: Vec<usize>) -> LocalTable {
        let col = |n: &str, q: &str, t: &str| LocalColumn {
            name: n.into(),
            quoted: q.into(),
            type_sql: t.into(),
        };
        LocalTable {
            name: "public.t".into(),
            schema: "public".into(),
            relname: "t".into(),
            columns: vec![
                col("id", "id", "bigint"),
                col("Sub", "\"Sub\"", "text"),
                col("v", "v", "jsonb"),
            ],
            pk,
            uniques: vec![],
        }
    }

    #[test]
    fn ranges_number_their_parameters_lo_first() {
        let t = table(vec![0, 1]);
        assert_eq!(range_cond(&t, false, false), "true");
        assert_eq!(
            range_cond(&t, true, true),
            "(t.id, t.\"Sub\") > ($1::text::bigint, $2::text::text) \
             AND (t.id, t.\"Sub\") <= ($3::text::bigint, $4::text::text)"
        );
        assert_eq!(
            range_cond(&t, false, true),
            "(t.id, t.\"Sub\") <= ($1::text::bigint, $2::text::text)"
        );
        assert_eq!(
            range_digest(&t, true, false),
            format!(
                "SELECT {DIGEST} FROM (SELECT md5(ROW(t.id, t.\"Sub\", t.v)::text) AS h FROM public.t t \
                 WHERE (t.id, t.\"Sub\") > ($1::text::bigint, $2::text::text)) s"
            )
        );
    }

    #[test]
    fn boundary_and_split_take_their_count_after_the_keys() {
        let t = table(vec![0]);
        assert_eq!(
            boundary(&t, true),
            "SELECT t.id::text FROM public.t t WHERE (t.id) > ($1::text::bigint) ORDER BY t.id OFFSET $2::int8 LIMIT 1"
        );
        assert!(boundary(&t, false).contains("WHERE true ORDER BY t.id OFFSET $1::int8"));
        let s = split_points(&t, true, true);
        assert!(s.contains("rn % $3::int8 = 0"), "{s}");
        assert!(split_points(&t, false, false).contains("rn % $1::int8 = 0"));
    }

    #[test]
    fn key_reads_join_unnested_keys() {
        let t = table(vec![0, 1]);
        assert_eq!(
            key_states(&t),
            "SELECT u.ord, ARRAY[t.id::text, t.\"Sub\"::text, t.v::text]::text[], t.xmin::text \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(k0, k1, ord) \
             JOIN public.t t ON t.id = u.k0::bigint AND t.\"Sub\" = u.k1::text \
             AND t.id = ANY($1::text[]::bigint[])"
        );
        let v = key_version(&t, true);
        assert!(
            v.ends_with(
                "WHERE t.id = $1::text::bigint AND t.\"Sub\" = $2::text::text FOR UPDATE OF t"
            ),
            "{v}"
        );
    }

    #[test]
    fn keyless_reads_group_by_row_text() {
        let t = table(vec![]);
        assert!(bucket_digests(&t).ends_with("FROM public.t t) s GROUP BY 1"));
        assert!(bucket_rows(&t).contains("WHERE substr(md5(r), 1, 2) = $1 GROUP BY r, c"));
        assert!(row_counts(&t, true).contains("= ANY($1::text[]) FOR UPDATE OF t"));
    }
}
