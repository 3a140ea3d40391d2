//! Tables without a primary key (REPLICA IDENTITY FULL), replicated both ways as multisets
//! of rows identified by their whole content (`apply::keyless`): changes flow, identical
//! duplicate rows stay distinct copies, unchanged TOAST is taken from the old image, and
//! every conflict a key-less table can have ends with both nodes holding the same rows,
//! recorded in the ledger on the side that met it. A seeded random workload on both nodes
//! must converge too.

mod support;

use std::time::Duration;

use bytes::Bytes;
use pgmesh::protocol::pgoutput::{Column, Decoder, Message, OldTuple};
use pgmesh::testkit::{versions_under_test, Cluster};
use support::{Mesh, Rng};

const DDL: &str = "
CREATE TABLE log(a int, b text, c jsonb, d text);
ALTER TABLE log REPLICA IDENTITY FULL;
CREATE TABLE items(id int PRIMARY KEY, v text);
";
/// `log` has no key: its tombstone trigger only records TRUNCATEs (as setup installs it).
const TABLES: &[(&str, &[&str])] = &[("public.log", &[]), ("public.items", &["id"])];
const NAMES: &[&str] = &["log", "items"];
const WAIT: Duration = Duration::from_secs(40);

/// An incompressible value well past the TOAST threshold (stored out of line).
fn big(seed: &str) -> String {
    format!("(SELECT string_agg(md5('{seed}' || g), '') FROM generate_series(1, 200) g)")
}

fn q(c: &Cluster, sql: &str) -> String {
    c.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Ledger rows of `kind` for table log on a node.
fn ledger(c: &Cluster, kind: &str) -> usize {
    q(
        c,
        &format!(
            "SELECT count(*) FROM pgmesh.conflicts WHERE table_name = 'public.log' AND kind = '{kind}'"
        ),
    )
    .parse()
    .unwrap()
}

/// Runs `write_a` on a, then `write_b` on b, with both directions stopped, then resumes
/// and waits until both nodes hold the same multiset of rows.
fn race(m: &mut Mesh, write_a: &str, write_b: &str) {
    m.stop_sidecars();
    q(&m.a.cluster, write_a);
    q(&m.b.cluster, write_b);
    m.start_sidecars();
    m.wait_converged(NAMES, WAIT);
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// What the key-less apply relies on, checked on the real server: under REPLICA IDENTITY
/// FULL the old image of an update and a delete is complete (an out-of-line value is
/// sent whole), while the new image of an update leaves an unchanged one out.
#[test]
fn full_identity_old_images_are_complete() {
    for major in versions_under_test() {
        let c = Cluster::start(major).unwrap();
        q(
            &c,
            "CREATE TABLE log(a int, b text, c jsonb, d text);
             ALTER TABLE log REPLICA IDENTITY FULL;
             CREATE PUBLICATION p FOR TABLE log;",
        );
        q(
            &c,
            "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
        );
        q(
            &c,
            &format!(
                "INSERT INTO log VALUES (1, 'x', '{{\"k\": 1}}', {});
                 UPDATE log SET a = 2;
                 DELETE FROM log;",
                big("v")
            ),
        );
        let hex = q(
            &c,
            "SELECT string_agg(encode(data, 'hex'), ',' ORDER BY lsn)
               FROM pg_logical_slot_get_binary_changes('s', NULL, NULL,
                    'proto_version', '1', 'publication_names', 'p')",
        );
        let mut decoder = Decoder::new(1);
        let (mut updates, mut deletes) = (0, 0);
        for h in hex.split(',') {
            match decoder.decode(Bytes::from(hex_decode(h))).unwrap() {
                Message::Update(u) => {
                    let Some(OldTuple::Full(old)) = &u.old else {
                        panic!("PG{major}: update without a full old image: {u:?}");
                    };
                    let old: Vec<Column> = old.iter().collect();
                    let new: Vec<Column> = u.new.iter().collect();
                    assert!(
                        matches!(&old[3], Column::Text(v) if v.len() == 6400),
                        "PG{major}: old image of d: {:?}",
                        old[3]
                    );
                    assert_eq!(new[3], Column::UnchangedToast, "PG{major}");
                    updates += 1;
                }
                Message::Delete(d) => {
                    let OldTuple::Full(old) = &d.old else {
                        panic!("PG{major}: delete without a full old image");
                    };
                    let old: Vec<Column> = old.iter().collect();
                    assert!(matches!(&old[3], Column::Text(v) if v.len() == 6400));
                    deletes += 1;
                }
                _ => {}
            }
        }
        assert_eq!((updates, deletes), (1, 1), "PG{major}");
    }
}

#[test]
fn keyless_changes_flow_both_ways_and_conflicts_converge() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.start_sidecars();

        // Rows from both sides: a TOAST-sized value, NULLs, jsonb, three identical rows,
        // and a keyed table written in the same transactions.
        q(
            &m.a.cluster,
            &format!(
                "BEGIN;
                 INSERT INTO log VALUES (1, 'x', '{{\"k\": 1}}', {});
                 INSERT INTO log SELECT 2, 'dup', NULL, NULL FROM generate_series(1, 3);
                 INSERT INTO log VALUES (3, NULL, '[1, 2]', 'small'), (NULL, NULL, NULL, NULL);
                 INSERT INTO items VALUES (1, 'one');
                 COMMIT;",
                big("one")
            ),
        );
        q(
            &m.b.cluster,
            "INSERT INTO log VALUES (10, 'from b', '{}', NULL); INSERT INTO items VALUES (2, 'two');",
        );
        m.wait_converged(NAMES, WAIT);
        assert_eq!(q(&m.b.cluster, "SELECT count(*) FROM log"), "7");

        // Updates and deletes of one copy each way; the big value is left unchanged.
        q(&m.a.cluster, "UPDATE log SET a = 101 WHERE a = 1");
        q(
            &m.a.cluster,
            "UPDATE log SET c = c || '{\"z\": 2}' WHERE a = 3",
        );
        q(
            &m.b.cluster,
            "DELETE FROM log WHERE ctid = (SELECT ctid FROM log WHERE a = 2 LIMIT 1)",
        );
        q(
            &m.b.cluster,
            "UPDATE log SET b = 'dup-b' WHERE ctid = (SELECT ctid FROM log WHERE a = 2 LIMIT 1)",
        );
        q(
            &m.b.cluster,
            "UPDATE log SET b = 'was null' WHERE a IS NULL",
        );
        // An update that leaves the row as it was.
        q(&m.b.cluster, "UPDATE log SET b = b WHERE a = 10");
        m.wait_converged(NAMES, WAIT);
        let a = &m.a.cluster;
        assert_eq!(
            q(
                a,
                "SELECT string_agg(coalesce(b, '-'), ',' ORDER BY b) FROM log WHERE a = 2"
            ),
            "dup,dup-b",
            "PG{major}"
        );
        assert_eq!(
            q(a, "SELECT length(d) FROM log WHERE a = 101"),
            "6400",
            "PG{major}"
        );
        assert_eq!(
            q(a, "SELECT c::text FROM log WHERE a = 3"),
            "[1, 2, {\"z\": 2}]"
        );
        assert_eq!(q(a, "SELECT b FROM log WHERE a IS NULL"), "was null");
        for c in [&m.a.cluster, &m.b.cluster] {
            assert_eq!(
                q(c, "SELECT count(*) FROM pgmesh.conflicts"),
                "0",
                "PG{major}: no conflict in ordinary traffic"
            );
        }

        // Update on both sides of the same row: both new images end on both nodes, the
        // big unchanged value taken from the old image on each side.
        race(
            &mut m,
            "UPDATE log SET b = 'A' WHERE a = 101",
            "UPDATE log SET b = 'B' WHERE a = 101",
        );
        assert_eq!(
            q(
                &m.a.cluster,
                "SELECT string_agg(b || ':' || length(d), ',' ORDER BY b) FROM log WHERE a = 101"
            ),
            "A:6400,B:6400",
            "PG{major}"
        );
        assert_eq!(
            (
                ledger(&m.a.cluster, "update_missing"),
                ledger(&m.b.cluster, "update_missing")
            ),
            (1, 1),
            "PG{major}"
        );
        assert_eq!(
            q(
                &m.a.cluster,
                "SELECT key->>'b' || '|' || (remote_row->>'b') || '|' || winner || '|' || resolution
                   FROM pgmesh.conflicts WHERE kind = 'update_missing'"
            ),
            "x|B|remote|applied_as_insert"
        );

        // Update against delete: the updated row lives on both nodes.
        race(
            &mut m,
            "DELETE FROM log WHERE a = 3",
            "UPDATE log SET b = 'upd' WHERE a = 3",
        );
        assert_eq!(
            q(&m.a.cluster, "SELECT b FROM log WHERE a = 3"),
            "upd",
            "PG{major}"
        );
        assert_eq!(ledger(&m.a.cluster, "update_missing"), 2, "PG{major}");
        assert_eq!(ledger(&m.b.cluster, "delete_missing"), 1, "PG{major}");

        // Delete on both sides: gone on both, each side records the peer's delete.
        race(
            &mut m,
            "DELETE FROM log WHERE a = 10",
            "DELETE FROM log WHERE a = 10",
        );
        assert_eq!(
            q(&m.a.cluster, "SELECT count(*) FROM log WHERE a = 10"),
            "0"
        );
        assert_eq!(
            (
                ledger(&m.a.cluster, "delete_missing"),
                ledger(&m.b.cluster, "delete_missing")
            ),
            (1, 2),
            "PG{major}"
        );
        assert_eq!(
            q(
                &m.a.cluster,
                "SELECT key->>'b' || '|' || winner || '|' || resolution
                   FROM pgmesh.conflicts WHERE kind = 'delete_missing'"
            ),
            "from b|remote|skipped"
        );

        // Each side deletes one of two identical copies: two deletes, none left, no
        // conflict (each delete finds the other copy).
        q(
            &m.a.cluster,
            "INSERT INTO log VALUES (20, 'twin', NULL, NULL), (20, 'twin', NULL, NULL)",
        );
        m.wait_converged(NAMES, WAIT);
        let one = "DELETE FROM log WHERE ctid = (SELECT ctid FROM log WHERE a = 20 LIMIT 1)";
        race(&mut m, one, one);
        assert_eq!(
            q(&m.a.cluster, "SELECT count(*) FROM log WHERE a = 20"),
            "0"
        );
        assert_eq!(
            (
                ledger(&m.a.cluster, "delete_missing"),
                ledger(&m.b.cluster, "delete_missing")
            ),
            (1, 2),
            "PG{major}: no new conflict"
        );

        // TRUNCATE of a key-less table, then traffic again.
        q(&m.b.cluster, "TRUNCATE log");
        m.wait_converged(NAMES, WAIT);
        assert_eq!(
            q(&m.a.cluster, "SELECT count(*) FROM log"),
            "0",
            "PG{major}"
        );
        q(
            &m.a.cluster,
            "INSERT INTO log VALUES (30, 'after', NULL, NULL)",
        );
        m.wait_converged(NAMES, WAIT);
        assert_eq!(q(&m.b.cluster, "SELECT b FROM log"), "after");
        m.stop_sidecars();
    }
}

/// A peer's delete or update that has to wait for a local transaction rewriting the same
/// row without changing it (`SET c = c`): the apply then finds the row in its new version
/// and changes it, instead of counting it missing on this node alone (which left the row
/// on one node: a lookup sub-select follows the lock to the new version, but the statement
/// around it reads with the snapshot taken before the wait).
#[test]
fn a_peer_change_waiting_for_a_local_rewrite_of_its_row_still_finds_it() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.start_sidecars();
        q(
            &m.a.cluster,
            &format!(
                "INSERT INTO log VALUES (1, 'one', '{{\"k\": 1}}', NULL), (2, 'two', NULL, {})",
                big("two")
            ),
        );
        m.wait_converged(NAMES, WAIT);
        let rounds = [
            (
                "UPDATE log SET c = c WHERE a = 1",
                "DELETE FROM log WHERE a = 1",
            ),
            (
                "UPDATE log SET a = a WHERE a = 2",
                "UPDATE log SET b = 'new' WHERE a = 2",
            ),
        ];
        for (local_rewrite, peer_change) in rounds {
            let dsn = m.b.cluster.dsn();
            let local = m.rt.block_on(async {
                let c = support::client(&dsn).await;
                c.batch_execute(&format!("BEGIN; {local_rewrite}"))
                    .await
                    .unwrap();
                c
            });
            q(&m.a.cluster, peer_change);
            support::live::wait_apply_blocked(
                &m.b.cluster,
                "b's apply session waiting for the open local rewrite",
                WAIT,
            );
            m.rt.block_on(local.batch_execute("COMMIT")).unwrap();
            m.wait_converged(NAMES, WAIT);
        }
        assert_eq!(
            q(
                &m.b.cluster,
                "SELECT string_agg(a || ' ' || b, ',') FROM log"
            ),
            "2 new",
            "PG{major}"
        );
        assert_eq!(
            ledger(&m.b.cluster, "delete_missing") + ledger(&m.b.cluster, "update_missing"),
            0,
            "PG{major}: the rows were there"
        );
        m.stop_sidecars();
    }
}

/// One random statement on the key-less table over a few values of `a`, so both nodes
/// hit the same rows. Every write gives its rows a content never seen before (`tag`):
/// a row content that comes back while the peer changes the earlier identical row is
/// the documented limit of content as identity (see `apply::keyless`). Identical copies
/// made by one statement and updates that leave a row as it was are included.
fn statement(r: &mut Rng, tag: &str) -> String {
    let k = r.below(8) + 1;
    let one = format!("ctid = (SELECT ctid FROM log WHERE a = {k} LIMIT 1)");
    match r.below(11) {
        0 | 1 => format!(
            "INSERT INTO log VALUES ({k}, '{tag}', '{{\"n\": {}}}', NULL)",
            r.below(5)
        ),
        2 => format!("INSERT INTO log SELECT {k}, '{tag}', NULL, NULL FROM generate_series(1, 2)"),
        3 => format!("INSERT INTO log VALUES ({k}, '{tag}', NULL, {})", big(tag)),
        4 | 5 => format!(
            "UPDATE log SET b = '{tag}', c = '{{\"u\": {}}}' WHERE {one}",
            r.below(5)
        ),
        // Leaves an out-of-line d unchanged.
        6 => format!("UPDATE log SET b = '{tag}' WHERE a = {k}"),
        7 => format!("UPDATE log SET c = c WHERE a = {k}"),
        8 => format!("DELETE FROM log WHERE {one}"),
        9 => format!("DELETE FROM log WHERE a = {k}"),
        _ => format!(
            "UPDATE log SET a = {}, b = '{tag}' WHERE {one}",
            r.below(8) + 1
        ),
    }
}

async fn worker(dsn: String, name: String, seed: u64, ops: usize) {
    let client = support::client(&dsn).await;
    let mut r = Rng(seed | 1);
    for i in 0..ops {
        let n = if r.below(4) == 0 { 2 + r.below(2) } else { 1 };
        let mut sql = String::from("BEGIN;");
        for j in 0..n {
            sql.push_str(&statement(&mut r, &format!("{name}-{i}-{j}")));
            sql.push(';');
        }
        sql.push_str("COMMIT;");
        // Concurrent multi-statement transactions (local ones, or a local one and the
        // apply session) can deadlock; the application's answer is to roll back and go on.
        if let Err(e) = client.batch_execute(&sql).await {
            assert_eq!(
                e.code().map(|c| c.code()),
                Some("40P01"),
                "worker statement: {e}"
            );
            let _ = client.batch_execute("ROLLBACK").await;
        }
        if r.below(6) == 0 {
            tokio::time::sleep(Duration::from_millis(r.below(10))).await;
        }
    }
}

#[test]
fn random_keyless_workloads_converge() {
    let ops: usize = std::env::var("PGMESH_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    for major in versions_under_test() {
        for s in 0..2u64 {
            let seed = 0x2545_F491_4F6C_DD1Du64.wrapping_mul(s + 3) ^ u64::from(major);
            let mut m = Mesh::new(major, DDL, TABLES);
            m.start_sidecars();
            let (da, db) = (m.a.cluster.dsn(), m.b.cluster.dsn());
            m.rt.block_on(async {
                let w = vec![
                    tokio::spawn(worker(da.clone(), "a1".into(), seed, ops)),
                    tokio::spawn(worker(da, "a2".into(), seed ^ 0xA5A5, ops)),
                    tokio::spawn(worker(db.clone(), "b1".into(), seed ^ 0x5A5A, ops)),
                    tokio::spawn(worker(db, "b2".into(), seed ^ 0xFFFF, ops)),
                ];
                for h in w {
                    h.await.expect("worker");
                }
            });
            m.wait_converged(NAMES, Duration::from_secs(90));
            let rows = q(&m.a.cluster, "SELECT count(*) FROM log");
            let conflicts: usize = [&m.a.cluster, &m.b.cluster]
                .iter()
                .map(|c| {
                    q(c, "SELECT count(*) FROM pgmesh.conflicts")
                        .parse::<usize>()
                        .unwrap()
                })
                .sum();
            for c in [&m.a.cluster, &m.b.cluster] {
                assert_eq!(
                    q(
                        c,
                        "SELECT count(*) FROM pgmesh.conflicts
                          WHERE kind NOT IN ('update_missing', 'delete_missing')
                             OR remote_commit_ts IS NULL OR remote_lsn IS NULL"
                    ),
                    "0",
                    "PG{major} seed {s}: unexpected ledger rows"
                );
            }
            eprintln!("PG{major} seed {s}: converged with {rows} rows; {conflicts} conflicts in the ledgers");
            m.stop_sidecars();
        }
    }
}

/// A table without a primary key but with a unique index is refused with the fix: with
/// no key there is nothing to decide a collision of two rows by.
#[test]
fn keyless_table_with_a_unique_index_is_refused_with_the_fix() {
    let major = versions_under_test()[0];
    let c = Cluster::start(major).unwrap();
    q(
        &c,
        "CREATE TABLE u(a int, b text); CREATE UNIQUE INDEX u_b ON u (lower(b));
         CREATE TABLE ok(a int, b text);",
    );
    let rt = support::runtime();
    rt.block_on(async {
        let client = support::client(&c.dsn()).await;
        let err = pgmesh::table::local::LocalTable::load(&client, "public", "u")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("public.u has no primary key but a unique index u_b")
                && err.contains("ADD PRIMARY KEY USING INDEX u_b"),
            "{err}"
        );
        let ok = pgmesh::table::local::LocalTable::load(&client, "public", "ok")
            .await
            .unwrap();
        assert!(ok.is_keyless());
    });
}
