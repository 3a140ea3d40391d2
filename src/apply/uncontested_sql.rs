//! SQL of the no-conflict path ([`super::uncontested`]): writes whose condition is that
//! the row was last written by the peer whose changes these are.

use super::sql::UPSERT_TOMBSTONE;
use super::sql::{key_array, key_join, names, own_version, unnest_params, update_set};
use crate::table::local::LocalTable;

/// The version of `t` was last written by the peer (one of its origins, `$p`, an
/// `oid[]`) or by this transaction, whose writes all come from the peer's stream (see
/// [`super::sql::OWN_TRANSACTION`]). In a `WHERE` clause PostgreSQL evaluates it again on
/// the newest version when a local session changed the row meanwhile (EvalPlanQual), so
/// a local write in between makes it false and the key goes to the decision.
fn peer_wrote(p: usize) -> String {
    format!(
        "((pg_xact_commit_timestamp_origin(t.xmin)).roident = ANY(${p}::oid[]) OR {})",
        own_version("t.xmin")
    )
}

/// Updates `cols` of the rows the peer wrote last and returns their 1-based positions.
/// Params: key columns, one per column in `cols`, then the peer's origins (`oid[]`).
#[must_use]
pub fn update_peers_rows(t: &LocalTable, cols: &[usize]) -> String {
    let (set, aliases) = update_set(t, cols);
    let arrays = t.pk.len() + cols.len();
    format!(
        "UPDATE {} t SET {set} FROM unnest({}) WITH ORDINALITY AS u({aliases}, ord) \
         WHERE {} AND {} RETURNING u.ord",
        t.name,
        unnest_params(1, arrays),
        key_join(t, "u", "k"),
        peer_wrote(arrays + 1)
    )
}

/// Deletes the rows the peer wrote last, records their tombstones, and returns their
/// 1-based positions. Params: key columns, the table name, the peer's origins (`oid[]`).
#[must_use]
pub fn delete_peers_rows(t: &LocalTable) -> String {
    delete_peers_rows_then(t, "SELECT ord FROM d")
}

/// [`delete_peers_rows`] that fails unless it deleted all `$k` rows (see [`all_or_fail`]);
/// `$k` follows the peer's origins.
#[must_use]
pub fn delete_all_peers_rows(t: &LocalTable) -> String {
    let k = t.pk.len() + 3;
    delete_peers_rows_then(t, &format!("SELECT {} FROM d", all_or_fail(k)))
}

fn delete_peers_rows_then(t: &LocalTable, select: &str) -> String {
    let n = t.pk.len();
    format!(
        "WITH d AS (DELETE FROM {} t USING unnest({}) WITH ORDINALITY AS u({}, ord) \
                    WHERE {} AND {} RETURNING u.ord, {}), \
              tb AS (INSERT INTO pgmesh.tombstones (table_name, key) \
                     SELECT ${}::text, {} FROM d {UPSERT_TOMBSTONE}) \
         {select}",
        t.name,
        unnest_params(1, n),
        names("k", n),
        key_join(t, "u", "k"),
        peer_wrote(n + 2),
        names("u.k", n),
        n + 1,
        key_array(t, "d"),
    )
}

/// [`update_peers_rows`] that fails unless it updated all `$k` rows (see [`all_or_fail`]);
/// `$k` follows the peer's origins.
#[must_use]
pub fn update_all_peers_rows(t: &LocalTable, cols: &[usize]) -> String {
    let k = t.pk.len() + cols.len() + 2;
    format!(
        "WITH w AS ({}) SELECT {} FROM w",
        update_peers_rows(t, cols),
        all_or_fail(k)
    )
}

/// The tombstone lookup ([`super::sql::select_tombstones`]) made to fail when it finds
/// any (see [`all_or_fail`]). Params: as the lookup's.
#[must_use]
pub fn no_tombstones(t: &LocalTable) -> String {
    format!(
        "SELECT 1 / (count(*) = 0)::int FROM ({}) x",
        super::sql::select_tombstones(t)
    )
}

/// How a guarded statement fails: when the commit travels with a chunk's writes (one
/// round trip for the whole chunk, see `Db::write_uncontested`), a row that needs a
/// decision must abort the attempt, not leave the rest to be committed. `1 / 0` raises
/// `division_by_zero`, which nothing else in the apply path's statements can raise, and
/// needs no function in the pgmesh schema (a node set up by an older version works too);
/// the session then applies the chunk again the careful way. The expected count is
/// parameter `$k` (`int8`).
fn all_or_fail(k: usize) -> String {
    format!("1 / (count(*) = ${k}::int8)::int")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::sql::tests::table;

    #[test]
    fn the_condition_names_the_peers_origins_after_the_arrays() {
        let upd = update_peers_rows(&table(), &[1]);
        assert!(
            upd.starts_with("UPDATE public.t t SET body = u.v0::text FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(k0, v0, ord)"),
            "{upd}"
        );
        assert!(upd.contains("roident = ANY($3::oid[])"), "{upd}");
        assert!(upd.ends_with("RETURNING u.ord"), "{upd}");
        let del = delete_peers_rows(&table());
        assert!(del.contains("roident = ANY($3::oid[])"), "{del}");
        assert!(del.contains("RETURNING u.ord, u.k0"), "{del}");
        assert!(
            del.contains("SELECT $2::text, ARRAY[d.k0::bigint::text] FROM d ON CONFLICT"),
            "{del}"
        );
    }
}
