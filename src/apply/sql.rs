//! SQL text of the set-based apply statements (pure; one statement per table and kind,
//! whatever the number of rows). Every value travels as an element of a `text[]`
//! parameter and is cast to the column's type in SQL, so one code path serves every type.

use crate::table::local::LocalTable;

/// `t.id = u.k0::int4 AND … AND t.id = ANY($1::text[]::int4[])`: the unnested key columns
/// (parameters `$1…`) joined onto the table.
///
/// The `= ANY` repeats the first key column's join as an index condition. Without it the
/// planner joined a chunk's 5,000 keys with a hash join over a sequential scan, or a merge
/// join over the whole primary-key index, of a 200k-row table: every chunk paid for the
/// table's size (35–75 ms here, growing with the table), where probing the index for the
/// keys costs what the chunk holds.
pub(crate) fn key_join(t: &LocalTable, alias: &str, prefix: &str) -> String {
    let mut conds: Vec<String> =
        t.pk.iter()
            .enumerate()
            .map(|(n, &c)| {
                let col = &t.columns[c];
                format!("t.{} = {alias}.{prefix}{n}::{}", col.quoted, col.type_sql)
            })
            .collect();
    if let Some(first) = t.pk.first().map(|&c| &t.columns[c]) {
        // An array-typed key column has no array-of-arrays type to cast to.
        if !first.type_sql.ends_with(']') {
            conds.push(format!(
                "t.{} = ANY($1::text[]::{}[])",
                first.quoted, first.type_sql
            ));
        }
    }
    conds.join(" AND ")
}

/// `t.a = $1::text::int4 AND t.b = $2::text::text …`: columns `cols` of alias `t` equal to
/// one text parameter each, in order.
pub(crate) fn columns_equal_params(t: &LocalTable, cols: &[usize]) -> String {
    cols.iter()
        .enumerate()
        .map(|(i, &c)| {
            let col = &t.columns[c];
            format!("t.{} = ${}::text::{}", col.quoted, i + 1, col.type_sql)
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

pub(crate) fn unnest_params(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|p| format!("${p}::text[]"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn names(prefix: &str, count: usize) -> String {
    (0..count)
        .map(|n| format!("{prefix}{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `roident` given to a row this very transaction wrote (an earlier chunk of the
/// same batch, not committed yet, so it has no commit time or origin to read): the
/// apply session maps it to the peer whose stream it applies ([`super::origins::Origins`]).
/// Without it such a row looked like a local write, and a later change of it in the same
/// batch was recorded as a conflict.
pub const OWN_TRANSACTION: u32 = u32::MAX;

/// Whether the version with xmin `xmin` was written by this transaction or one of its
/// subtransactions (updates of tables with other unique constraints run under a
/// savepoint, so their rows carry a subtransaction's xid). A visible version without a
/// commit time is ours or old (written before `track_commit_timestamp`, or frozen:
/// xmin 2); ours are the ones at or after our top-level xid, compared modulo 2^32 as
/// PostgreSQL compares xids (every unfrozen xid is within 2^31 of the current one).
pub(super) fn own_version(xmin: &str) -> String {
    format!(
        "(pg_xact_commit_timestamp({xmin}) IS NULL AND {xmin}::text::int8 > 2 \
          AND (({xmin}::text::int8 - pg_current_xact_id_if_assigned()::text::int8) % 4294967296 \
               + 4294967296) % 4294967296 < 2147483648)"
    )
}

/// The origin column of a row version of table alias `t` (see [`OWN_TRANSACTION`]).
fn row_origin(t: &str) -> String {
    format!(
        "CASE WHEN {} THEN {OWN_TRANSACTION}::oid \
              ELSE (pg_xact_commit_timestamp_origin({t}.xmin)).roident END",
        own_version(&format!("{t}.xmin"))
    )
}

/// Rows for a list of keys, locked, with their commit time and origin.
/// Params: one `text[]` per key column. Columns: ord (1-based), row json, ts, roident.
#[must_use]
pub fn select_rows(t: &LocalTable) -> String {
    let n = t.pk.len();
    // The commit time and origin are computed in the target list, not in a LATERAL join:
    // when FOR UPDATE waits for a concurrent local write, PostgreSQL re-evaluates the row
    // (EvalPlanQual) with the new version of t but reuses a joined function's old output,
    // which would pair the new row with the previous writer's time and origin.
    format!(
        "SELECT u.ord, to_jsonb(t.*)::text, \
                (pg_xact_commit_timestamp_origin(t.xmin)).timestamp, \
                {origin} \
           FROM unnest({}) WITH ORDINALITY AS u({}, ord) \
           JOIN {} t ON {} \
          FOR UPDATE OF t",
        unnest_params(1, n),
        names("k", n),
        t.name,
        key_join(t, "u", "k"),
        origin = row_origin("t"),
    )
}

/// Text values of `cols` for a list of keys (unlocked; used on the peer to complete
/// partial images). Params: one `text[]` per key column. Columns: ord, then `cols`.
#[must_use]
pub fn select_columns(t: &LocalTable, cols: &[usize]) -> String {
    let n = t.pk.len();
    let select = cols
        .iter()
        .map(|&c| format!("t.{}::text", t.columns[c].quoted))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT u.ord, {select} FROM unnest({}) WITH ORDINALITY AS u({}, ord) JOIN {} t ON {}",
        unnest_params(1, n),
        names("k", n),
        t.name,
        key_join(t, "u", "k")
    )
}

/// The canonical text array of a key, as tombstones store it.
pub(super) fn key_array(t: &LocalTable, alias: &str) -> String {
    let parts =
        t.pk.iter()
            .enumerate()
            .map(|(n, &c)| format!("{alias}.k{n}::{}::text", t.columns[c].type_sql))
            .collect::<Vec<_>>()
            .join(", ");
    format!("ARRAY[{parts}]")
}

/// Tombstones for a list of keys, with the delete's commit time and origin; a whole-table
/// tombstone (key `{}`, left by TRUNCATE) matches every key, so a key can have two rows.
/// A tombstone left by a unique-constraint decision carries its version explicitly
/// (`decided_ts`, `decided_node`); others take it from the tombstone row's xmin.
/// Params: $1 table name, then one `text[]` per key column. Columns: ord, ts, roident,
/// decided node (NULL unless decided).
///
/// Two branches on purpose: one join condition `key IN (ARRAY[…], '{}')` cannot use the
/// primary-key index, so PostgreSQL compared every key with every tombstone of the table
/// (quadratic as tombstones accumulate). Each key is one probe of the primary key: a
/// `LATERAL` subquery behind `OFFSET 0` (which the planner may not flatten into a join).
/// As a plain join, a plan cached while the tombstone table was small read every
/// tombstone of the table and hash-joined them with the keys, and kept doing so as the
/// tombstones grew, until the next ANALYZE.
#[must_use]
pub fn select_tombstones(t: &LocalTable) -> String {
    let n = t.pk.len();
    let own = own_version("tb.xmin");
    let branch = |key: &str| {
        format!(
            "SELECT u.ord, coalesce(tb.decided_ts, x.timestamp), \
                    CASE WHEN {own} THEN {OWN_TRANSACTION}::oid ELSE x.roident END, tb.decided_node \
               FROM unnest({}) WITH ORDINALITY AS u({}, ord) \
               JOIN LATERAL (SELECT s.xmin, s.decided_ts, s.decided_node FROM pgmesh.tombstones s \
                              WHERE s.table_name = $1 AND s.key = {key} OFFSET 0) tb ON true \
               LEFT JOIN LATERAL pg_xact_commit_timestamp_origin(tb.xmin) x ON true \
              WHERE {ANY_TOMBSTONE}",
            unnest_params(2, n),
            names("k", n),
        )
    };
    format!(
        "{} UNION ALL {}",
        branch(&key_array(t, "u")),
        branch("'{}'::text[]")
    )
}

/// Whether table `$1` has any tombstone. Uncorrelated, so PostgreSQL evaluates it once
/// per statement (an InitPlan, a one-time filter): a table without tombstones — most
/// tables in a healthy mesh — then costs one index probe per chunk, not one per key.
pub(super) const ANY_TOMBSTONE: &str =
    "EXISTS (SELECT 1 FROM pgmesh.tombstones e WHERE e.table_name = $1)";

/// Records tombstones (the delete's time is this transaction's commit time, read back
/// through the tombstone row's xmin). Params: $1 table name, then key columns.
#[must_use]
pub fn upsert_tombstones(t: &LocalTable) -> String {
    let n = t.pk.len();
    format!(
        "INSERT INTO pgmesh.tombstones (table_name, key) \
         SELECT $1, {} FROM unnest({}) AS u({}) {UPSERT_TOMBSTONE}",
        key_array(t, "u"),
        unnest_params(2, n),
        names("k", n)
    )
}

/// The conflict clause of a tombstone upsert: a key deleted again is dated again.
pub(super) const UPSERT_TOMBSTONE: &str = "ON CONFLICT (table_name, key) DO UPDATE \
    SET deleted_at = now(), decided_ts = NULL, decided_node = NULL";

/// Tombstones of rows removed by a unique-constraint decision, dated by the winning
/// write. Params: $1 table name, $2 winner's commit time (text), $3 winner's node, then
/// key columns.
#[must_use]
pub fn upsert_decided_tombstones(t: &LocalTable) -> String {
    let n = t.pk.len();
    format!(
        "INSERT INTO pgmesh.tombstones (table_name, key, decided_ts, decided_node) \
         SELECT $1, {}, $2::text::timestamptz, $3 FROM unnest({}) AS u({}) \
         ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = now(), \
           decided_ts = excluded.decided_ts, decided_node = excluded.decided_node",
        key_array(t, "u"),
        unnest_params(4, n),
        names("k", n)
    )
}

/// Queues messages for the peer (see migrations/V2). Params: $1 prefix, $2 JSON array of
/// bodies (text).
pub const INSERT_OUTBOX: &str = "INSERT INTO pgmesh.outbox (prefix, body) \
    SELECT $1, b FROM jsonb_array_elements($2::text::jsonb) b";

/// Moves every queued message into the WAL as a transactional logical message, in queue
/// order, and returns how many. Run in a transaction without a replication origin.
pub const FLUSH_OUTBOX: &str = "WITH m AS (DELETE FROM pgmesh.outbox RETURNING id, prefix, body) \
    SELECT count(pg_logical_emit_message(true, prefix, body::text)) \
      FROM (SELECT * FROM m ORDER BY id) o";

/// A remote TRUNCATE, last-writer-wins: removes the rows written before the truncate
/// committed (or whose time is unknown); rows written here later survive and reach the
/// peer after its truncate, so both nodes keep them. Param: $1 the truncate's commit time
/// (text). Returns one row per deleted row.
#[must_use]
pub fn truncate_older(t: &LocalTable) -> String {
    format!(
        "DELETE FROM {} t WHERE coalesce((pg_xact_commit_timestamp_origin(t.xmin)).timestamp \
         <= $1::text::timestamptz, true)",
        t.name
    )
}

/// The whole-table tombstone a TRUNCATE leaves (key `{}`). Param: $1 table name.
pub const UPSERT_TABLE_TOMBSTONE: &str = "INSERT INTO pgmesh.tombstones (table_name, key) \
    VALUES ($1, '{}') ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = now(), decided_ts = NULL, decided_node = NULL";

/// Deletes rows by key. Params: key columns.
#[must_use]
pub fn delete_rows(t: &LocalTable) -> String {
    let n = t.pk.len();
    format!(
        "DELETE FROM {} t USING unnest({}) AS u({}) WHERE {}",
        t.name,
        unnest_params(1, n),
        names("k", n),
        key_join(t, "u", "k")
    )
}

/// Updates `cols` (local column indices, not key columns) by key.
/// Params: key columns, then one per column in `cols`.
#[must_use]
pub fn update_rows(t: &LocalTable, cols: &[usize]) -> String {
    let (set, aliases) = update_set(t, cols);
    format!(
        "UPDATE {} t SET {set} FROM unnest({}) AS u({aliases}) WHERE {}",
        t.name,
        unnest_params(1, t.pk.len() + cols.len()),
        key_join(t, "u", "k")
    )
}

/// The `SET` list of an update of `cols` from the unnested `u.v…`, and the aliases of
/// the unnested arrays (`k…` for the key, then `v…`).
pub(super) fn update_set(t: &LocalTable, cols: &[usize]) -> (String, String) {
    let n = t.pk.len();
    let set = if cols.is_empty() {
        // Nothing but the key: still write a new row version, so the row's commit time
        // and origin record this write.
        let k = &t.columns[t.pk[0]].quoted;
        format!("{k} = t.{k}")
    } else {
        cols.iter()
            .enumerate()
            .map(|(i, &c)| {
                let col = &t.columns[c];
                format!("{} = u.v{i}::{}", col.quoted, col.type_sql)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let aliases = if cols.is_empty() {
        names("k", n)
    } else {
        format!("{}, {}", names("k", n), names("v", cols.len()))
    };
    (set, aliases)
}

/// Deletes rows by key and returns every column's text (canonical session settings), so
/// the rows can be written again with new images (see `Resolver::update`). Params: key
/// columns. Columns: ord, then one text per column of the table.
#[must_use]
pub fn take_rows(t: &LocalTable) -> String {
    let n = t.pk.len();
    let cols = t
        .columns
        .iter()
        .map(|c| format!("t.{}::text", c.quoted))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "DELETE FROM {} t USING unnest({}) WITH ORDINALITY AS u({}, ord) WHERE {} \
         RETURNING u.ord, {cols}",
        t.name,
        unnest_params(1, n),
        names("k", n),
        key_join(t, "u", "k")
    )
}

/// `a, b, c`: the quoted names of `cols`.
pub(super) fn column_list(t: &LocalTable, cols: &[usize]) -> String {
    cols.iter()
        .map(|&c| t.columns[c].quoted.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `COPY t (cols) FROM STDIN` (text format) for new rows, see [`super::copy`].
#[must_use]
pub fn copy_rows(t: &LocalTable, cols: &[usize]) -> String {
    format!("COPY {} ({}) FROM STDIN", t.name, column_list(t, cols))
}

/// Inserts rows with the columns `cols` (must include the key columns); rows whose key
/// or any other unique value exists already are skipped, and the 1-based positions of
/// the rows actually inserted come back. Params: one per column in `cols`.
#[must_use]
pub fn insert_rows(t: &LocalTable, cols: &[usize]) -> String {
    let target = column_list(t, cols);
    let values = cast_values(t, cols);
    let returning =
        t.pk.iter()
            .map(|&c| t.columns[c].quoted.as_str())
            .collect::<Vec<_>>()
            .join(", ");
    let join =
        t.pk.iter()
            .map(|&c| {
                let pos = cols.iter().position(|&x| x == c).unwrap_or(0);
                let col = &t.columns[c];
                format!("i.{} = u.v{pos}::{}", col.quoted, col.type_sql)
            })
            .collect::<Vec<_>>()
            .join(" AND ");
    let params = unnest_params(1, cols.len());
    let aliases = names("v", cols.len());
    // The positions come from the key arrays alone: unnesting every column a second time
    // cost the apply backend about a microsecond per row in bulk.
    let key_pos: Vec<usize> =
        t.pk.iter()
            .map(|&c| cols.iter().position(|&x| x == c).unwrap_or(0))
            .collect();
    let key_params = key_pos
        .iter()
        .map(|p| format!("${}::text[]", p + 1))
        .collect::<Vec<_>>()
        .join(", ");
    let key_aliases = key_pos
        .iter()
        .map(|p| format!("v{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH i AS (INSERT INTO {} ({target}) SELECT {values} FROM unnest({params}) AS u({aliases}) \
                    ON CONFLICT DO NOTHING RETURNING {returning}) \
         SELECT u.ord FROM unnest({key_params}) WITH ORDINALITY AS u({key_aliases}, ord) JOIN i ON {join}",
        t.name
    )
}

/// Inserts rows with the columns `cols` that must all be new: a key or unique value
/// taken fails the statement (used when the commit is sent along, see
/// `Resolver::write_pipelined`). Params: one per column in `cols`.
#[must_use]
pub fn insert_new_rows(t: &LocalTable, cols: &[usize]) -> String {
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({})",
        t.name,
        column_list(t, cols),
        cast_values(t, cols),
        unnest_params(1, cols.len()),
        names("v", cols.len())
    )
}

/// `u.v0::int8, u.v1::text, …`: the unnested values of `cols` cast to their types.
fn cast_values(t: &LocalTable, cols: &[usize]) -> String {
    cols.iter()
        .enumerate()
        .map(|(i, &c)| format!("u.v{i}::{}", t.columns[c].type_sql))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows holding the given values of one unique constraint (other than the key), locked.
/// Params: one text value per constraint column. Columns: key values as text (one per
/// key column), row json, ts, roident.
#[must_use]
pub fn select_unique_holder(t: &LocalTable, unique: &[usize]) -> String {
    let keys =
        t.pk.iter()
            .map(|&c| format!("t.{}::text", t.columns[c].quoted))
            .collect::<Vec<_>>()
            .join(", ");
    let cond = columns_equal_params(t, unique);
    format!(
        "SELECT {keys}, to_jsonb(t.*)::text, \
                (pg_xact_commit_timestamp_origin(t.xmin)).timestamp, \
                {origin} \
           FROM {} t WHERE {cond} FOR UPDATE OF t",
        t.name,
        origin = row_origin("t"),
    )
}

/// Ledger rows from one JSON array parameter (`$1`), in the same transaction as the
/// resolutions they record.
pub const INSERT_CONFLICTS: &str = "INSERT INTO pgmesh.conflicts \
    (kind, table_name, key, local_row, remote_row, local_commit_ts, remote_commit_ts, \
     local_origin, remote_origin, winner, resolution, remote_lsn) \
    SELECT kind, table_name, key, local_row, remote_row, local_commit_ts, remote_commit_ts, \
     local_origin, remote_origin, winner, resolution, remote_lsn::pg_lsn \
    FROM jsonb_to_recordset($1::text::jsonb) AS x(kind text, table_name text, key jsonb, \
     local_row jsonb, remote_row jsonb, local_commit_ts timestamptz, \
     remote_commit_ts timestamptz, local_origin text, remote_origin text, winner text, \
     resolution text, remote_lsn text)";

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::table::local::LocalColumn;

    /// `public.t (id bigint primary key, body text, email text unique)`.
    pub(in crate::apply) fn table() -> LocalTable {
        let col = |n: &str, t: &str| LocalColumn {
            name: n.into(),
            quoted: n.into(),
            type_sql: t.into(),
        };
        LocalTable {
            name: "public.t".into(),
            schema: "public".into(),
            relname: "t".into(),
            columns: vec![
                col("id", "bigint"),
                col("body", "text"),
                col("email", "text"),
            ],
            pk: vec![0],
            uniques: vec![vec![2]],
        }
    }

    #[test]
    fn statements_read_as_expected() {
        let t = table();
        assert_eq!(
            delete_rows(&t),
            "DELETE FROM public.t t USING unnest($1::text[]) AS u(k0) WHERE t.id = u.k0::bigint AND t.id = ANY($1::text[]::bigint[])"
        );
        assert_eq!(
            update_rows(&t, &[1]),
            "UPDATE public.t t SET body = u.v0::text FROM unnest($1::text[], $2::text[]) AS u(k0, v0) WHERE t.id = u.k0::bigint AND t.id = ANY($1::text[]::bigint[])"
        );
        assert!(update_rows(&t, &[]).contains("SET id = t.id"));
        let ins = insert_rows(&t, &[0, 1, 2]);
        assert!(ins.contains("ON CONFLICT DO NOTHING RETURNING id"), "{ins}");
        assert!(ins.contains("JOIN i ON i.id = u.v0::bigint"), "{ins}");
        assert!(
            ins.contains("SELECT u.ord FROM unnest($1::text[]) WITH ORDINALITY AS u(v0, ord)"),
            "{ins}"
        );
        let tombs = select_tombstones(&t);
        assert!(
            tombs.contains("s.key = ARRAY[u.k0::bigint::text] OFFSET 0"),
            "{tombs}"
        );
        assert!(tombs.contains("UNION ALL") && tombs.contains("s.key = '{}'::text[]"));
        assert!(select_unique_holder(&t, &[2]).contains("t.email = $1::text::text"));
    }
}
