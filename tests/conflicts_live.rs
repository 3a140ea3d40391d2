//! Each conflict kind, produced deterministically: both nodes write while the sidecars are
//! stopped, then replication resumes; both nodes must end identical, with the conflict in
//! both ledgers and the same winner.

mod support;

use std::time::Duration;

use pgmesh::testkit::{versions_under_test, Cluster};
use support::Mesh;

const DDL: &str = "
CREATE TABLE items(id int PRIMARY KEY, v text);
CREATE TABLE docs(id int PRIMARY KEY, small int, doc text);
CREATE TABLE users(id int PRIMARY KEY, email text UNIQUE, code int UNIQUE);
";
const TABLES: &[(&str, &[&str])] = &[
    ("public.items", &["id"]),
    ("public.docs", &["id"]),
    ("public.users", &["id"]),
];
const NAMES: &[&str] = &["items", "docs", "users"];
const WAIT: Duration = Duration::from_secs(40);

/// Ledger rows of a node for one table and key, as `kind|winner|resolution` lines.
fn ledger(c: &Cluster, table: &str, id: i32) -> String {
    c.psql(&format!(
        "SELECT kind, winner, resolution FROM pgmesh.conflicts
          WHERE table_name = 'public.{table}' AND key->>'id' = '{id}' ORDER BY id"
    ))
    .unwrap()
}

/// Changes a node's data without replicating it or leaving a tombstone (as if the row had
/// never reached it): under a replication origin (never sent on) and the replica role.
fn silently(c: &Cluster, sql: &str) {
    c.psql(&format!(
        "SELECT pg_replication_origin_create('test_silent')
          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = 'test_silent');
         SELECT pg_replication_origin_session_setup('test_silent');
         SET session_replication_role = replica;
         BEGIN; {sql}; COMMIT;"
    ))
    .unwrap();
}

/// Runs `write_a` on a and then `write_b` on b with both directions stopped (so b's
/// write is the later one), then resumes and waits for convergence.
fn race(m: &mut Mesh, write_a: &str, write_b: &str) {
    m.stop_sidecars();
    m.a.cluster.psql(write_a).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    m.b.cluster.psql(write_b).unwrap();
    m.start_sidecars();
    m.wait_converged(NAMES, WAIT);
}

#[test]
fn every_conflict_kind_converges_and_is_recorded() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.start_sidecars();
        m.a.cluster
            .psql(
                "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 20) g;
                 INSERT INTO docs SELECT g, g, repeat(md5(g::text), 400) FROM generate_series(1, 5) g;",
            )
            .unwrap();
        m.wait_converged(NAMES, WAIT);
        let (a, b) = (&m.a.cluster, &m.b.cluster);
        let _ = (a, b);

        // insert_exists: the later insert wins on both nodes.
        race(
            &mut m,
            "INSERT INTO items VALUES (100, 'a')",
            "INSERT INTO items VALUES (100, 'b')",
        );
        assert_eq!(
            m.a.cluster
                .psql("SELECT v FROM items WHERE id = 100")
                .unwrap(),
            "b",
            "PG{major}"
        );
        assert_eq!(
            ledger(&m.a.cluster, "items", 100),
            "insert_exists|remote|applied_as_update"
        );
        assert_eq!(
            ledger(&m.b.cluster, "items", 100),
            "insert_exists|local|skipped"
        );

        // update_origin_differs: concurrent updates, the later one wins.
        race(
            &mut m,
            "UPDATE items SET v = 'a2' WHERE id = 2",
            "UPDATE items SET v = 'b2' WHERE id = 2",
        );
        assert_eq!(
            m.a.cluster
                .psql("SELECT v FROM items WHERE id = 2")
                .unwrap(),
            "b2"
        );
        assert_eq!(
            ledger(&m.a.cluster, "items", 2),
            "update_origin_differs|remote|applied"
        );
        assert_eq!(
            ledger(&m.b.cluster, "items", 2),
            "update_origin_differs|local|skipped"
        );

        // update_deleted, delete first: the later update brings the row back everywhere.
        race(
            &mut m,
            "DELETE FROM items WHERE id = 3",
            "UPDATE items SET v = 'b3' WHERE id = 3",
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT v FROM items WHERE id = 3")
                .unwrap(),
            "b3"
        );
        assert_eq!(
            ledger(&m.a.cluster, "items", 3),
            "update_deleted|remote|applied_as_insert"
        );
        assert_eq!(
            ledger(&m.b.cluster, "items", 3),
            "delete_origin_differs|local|skipped"
        );

        // update_deleted, update first: the later delete wins everywhere.
        race(
            &mut m,
            "UPDATE items SET v = 'a4' WHERE id = 4",
            "DELETE FROM items WHERE id = 4",
        );
        assert_eq!(
            m.a.cluster
                .psql("SELECT count(*) FROM items WHERE id = 4")
                .unwrap(),
            "0"
        );
        assert_eq!(
            ledger(&m.a.cluster, "items", 4),
            "delete_origin_differs|remote|applied"
        );
        assert_eq!(
            ledger(&m.b.cluster, "items", 4),
            "update_deleted|local|skipped"
        );

        // delete_origin_differs on both sides: both delete, nothing to decide but the record.
        race(
            &mut m,
            "DELETE FROM items WHERE id = 5",
            "DELETE FROM items WHERE id = 5",
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FROM items WHERE id = 5")
                .unwrap(),
            "0"
        );

        // update_missing / delete_missing: b lost rows 6 and 7 without a trace.
        silently(&m.b.cluster, "DELETE FROM items WHERE id IN (6, 7)");
        m.a.cluster
            .psql("UPDATE items SET v = 'a6' WHERE id = 6; DELETE FROM items WHERE id = 7")
            .unwrap();
        m.wait_converged(NAMES, WAIT);
        assert_eq!(
            ledger(&m.b.cluster, "items", 6),
            "update_missing|remote|applied_as_insert"
        );
        assert_eq!(
            ledger(&m.b.cluster, "items", 7),
            "delete_missing|remote|tombstone_recorded"
        );

        // Primary-key change against a concurrent update of the old key: the later update
        // wins over the move's removal of key 8; the moved row exists on both nodes.
        race(
            &mut m,
            "UPDATE items SET id = 108 WHERE id = 8",
            "UPDATE items SET v = 'b8' WHERE id = 8",
        );
        assert_eq!(
            m.a.cluster
                .psql("SELECT id, v FROM items WHERE id IN (8, 108) ORDER BY id")
                .unwrap(),
            "8|b8\n108|v8"
        );

        // Unchanged TOAST: a rewrites the big value, b then updates only the small column;
        // b's newer row wins and must carry a's big value on both nodes.
        race(
            &mut m,
            "UPDATE docs SET doc = repeat(md5('new'), 400), small = -1 WHERE id = 1",
            "UPDATE docs SET small = 42 WHERE id = 1",
        );
        assert_eq!(
            m.a.cluster
                .psql("SELECT small, doc = repeat(md5('1'), 400) FROM docs WHERE id = 1")
                .unwrap(),
            "42|t",
            "PG{major}: b's row (with the doc b had) wins on both nodes"
        );

        // Two unique constraints: different keys claim the same email; the later row wins
        // and the loser is gone from both nodes.
        race(
            &mut m,
            "INSERT INTO users VALUES (1, 'x@example.com', 1)",
            "INSERT INTO users VALUES (2, 'x@example.com', 2)",
        );
        assert_eq!(
            m.a.cluster.psql("SELECT id FROM users").unwrap(),
            "2",
            "PG{major}"
        );
        assert_eq!(
            ledger(&m.a.cluster, "users", 1),
            "unique_exists|remote|local_row_deleted"
        );
        assert_eq!(
            ledger(&m.b.cluster, "users", 2),
            "unique_exists|local|skipped"
        );

        // A local insert racing the apply of the same key: the sidecar waits for the open
        // local transaction, sees its row, decides, and the stream goes on.
        m.stop_sidecars();
        m.a.cluster
            .psql("INSERT INTO items VALUES (200, 'a')")
            .unwrap();
        let dsn = m.b.cluster.dsn();
        let client = m.rt.block_on(async {
            let c = support::client(&dsn).await;
            c.batch_execute("BEGIN; INSERT INTO items VALUES (200, 'b')")
                .await
                .unwrap();
            c
        });
        // The sidecar starts and its insert of key 200 waits for the open local one.
        m.start_sidecars();
        support::live::wait_apply_blocked(
            &m.b.cluster,
            "b's apply session waiting on the open local insert",
            WAIT,
        );
        m.rt.block_on(client.batch_execute("COMMIT")).unwrap();
        m.a.cluster
            .psql("INSERT INTO items VALUES (201, 'after')")
            .unwrap();
        m.wait_converged(NAMES, WAIT);
        assert_eq!(
            m.a.cluster
                .psql("SELECT v FROM items WHERE id = 200")
                .unwrap(),
            "b"
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT v FROM items WHERE id = 201")
                .unwrap(),
            "after"
        );
        // TRUNCATE, last-writer-wins: a row written after the truncate survives on both
        // nodes; a row written before it is gone from both.
        race(
            &mut m,
            "TRUNCATE items",
            "INSERT INTO items VALUES (300, 'after')",
        );
        assert_eq!(
            m.a.cluster.psql("SELECT id FROM items").unwrap(),
            "300",
            "PG{major}"
        );
        m.stop_sidecars();
        m.b.cluster
            .psql("INSERT INTO items VALUES (301, 'before')")
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        m.a.cluster.psql("TRUNCATE items").unwrap();
        m.start_sidecars();
        m.wait_converged(NAMES, WAIT);
        assert_eq!(
            m.b.cluster.psql("SELECT count(*) FROM items").unwrap(),
            "0",
            "PG{major}"
        );
        assert_eq!(
            ledger(&m.a.cluster, "items", 301),
            "insert_deleted|local|skipped"
        );
        assert!(
            m.b.cluster
                .psql("SELECT count(*) FROM pgmesh.conflicts WHERE kind = 'truncate'")
                .unwrap()
                != "0"
        );
        m.stop_sidecars();
    }
}

/// Large groups of new rows are written with COPY (`apply/copy.rs`), which has no
/// `ON CONFLICT`: a value taken after the chunk's lookup fails it. The COPY runs under a
/// savepoint, so the rows then take the INSERT path inside the same transaction and the
/// taken value is decided as usual, without rolling back the batch.
#[test]
fn values_taken_while_a_bulk_copy_runs_are_decided_without_losing_the_batch() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        // Sequential path (a table with other unique constraints): b holds an email that
        // one of a's 600 new users claims later.
        m.b.cluster
            .psql("INSERT INTO users VALUES (10000, 'u300@x', 1)")
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        m.a.cluster
            .psql("INSERT INTO users SELECT i, 'u' || i || '@x', i FROM generate_series(1, 600) i")
            .unwrap();
        // Pipelined path: a local session on b holds key 500 of a's 1,000 new items,
        // uncommitted, when b's sidecar starts; the COPY waits for it, then fails.
        m.a.cluster
            .psql("INSERT INTO items SELECT i, 'a' FROM generate_series(1, 1000) i")
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let dsn = m.b.cluster.dsn();
        let local = m.rt.block_on(async {
            let c = support::client(&dsn).await;
            c.batch_execute("BEGIN; INSERT INTO items VALUES (500, 'b')")
                .await
                .unwrap();
            c
        });
        m.start_direction("b");
        support::live::wait_apply_blocked(&m.b.cluster, "b's apply waiting for key 500", WAIT);
        m.rt.block_on(local.batch_execute("COMMIT")).unwrap();
        m.start_direction("a");
        m.wait_converged(NAMES, WAIT);
        for c in [&m.a.cluster, &m.b.cluster] {
            assert_eq!(c.psql("SELECT count(*) FROM items").unwrap(), "1000");
            assert_eq!(c.psql("SELECT v FROM items WHERE id = 500").unwrap(), "b");
            assert_eq!(c.psql("SELECT count(*) FROM users").unwrap(), "600");
            assert_eq!(
                c.psql("SELECT id FROM users WHERE email = 'u300@x'")
                    .unwrap(),
                "300"
            );
        }
        assert_eq!(
            ledger(&m.b.cluster, "items", 500),
            "insert_exists|local|skipped"
        );
        assert_eq!(
            ledger(&m.b.cluster, "users", 10000),
            "unique_exists|remote|local_row_deleted"
        );
        // A batch the apply rolled back would have restarted the direction (every
        // rollback of a batch is an error, retried from the kept position).
        let r = m.wait_direction("b", "reports", WAIT, |_| true);
        assert_eq!(
            r.reconnects, 0,
            "PG{major}: the apply rolled a batch back: {r:?}"
        );
        m.stop_sidecars();
    }
}

/// A unique-constraint decision that only one node can make: b's row 26 is displaced on b
/// by a's later row 4, which a had deleted again before row 26 reached it, so a never
/// holds both rows. a learns the decision from b's `pgmesh.kill` message and removes row 26
/// too.
#[test]
fn a_unique_decision_reaches_the_node_that_never_saw_the_conflict() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.b.cluster
            .psql("INSERT INTO users VALUES (26, 'u@x', 1)")
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        m.a.cluster
            .psql("INSERT INTO users VALUES (4, 'u@x', 2)")
            .unwrap();
        m.a.cluster.psql("DELETE FROM users WHERE id = 4").unwrap();
        // a → b first: row 4 wins on b (later) and removes row 26; then a's delete.
        m.start_direction("b");
        let deadline = std::time::Instant::now() + WAIT;
        while m.b.cluster.psql("SELECT count(*) FROM users").unwrap() != "0" {
            assert!(
                std::time::Instant::now() < deadline,
                "b never applied a's writes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // b → a: row 26 arrives where nothing holds its value any more; the decision
        // that follows it removes it.
        m.start_direction("a");
        m.wait_converged(NAMES, WAIT);
        for c in [&m.a.cluster, &m.b.cluster] {
            assert_eq!(c.psql("SELECT count(*) FROM users").unwrap(), "0");
        }
        assert_eq!(
            ledger(&m.b.cluster, "users", 26),
            "unique_exists|remote|local_row_deleted"
        );
        assert_eq!(
            ledger(&m.a.cluster, "users", 26),
            "unique_exists|remote|removed_by_peer_decision"
        );
        m.stop_sidecars();
    }
}

/// A sidecar killed between committing a unique-constraint decision and sending it leaves
/// the decision queued in `pgmesh.outbox`; the next apply session sends it first thing.
#[test]
fn a_queued_unique_decision_is_sent_by_the_next_session() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.start_sidecars();
        m.b.cluster
            .psql("INSERT INTO users VALUES (26, 'q@x', 1)")
            .unwrap();
        m.wait_converged(NAMES, WAIT);
        m.stop_sidecars();
        // What b's apply transaction committed before the crash: the row removed (without
        // replicating it) and the decision queued.
        silently(&m.b.cluster, "DELETE FROM users WHERE id = 26");
        m.b.cluster
            .psql(
                r#"INSERT INTO pgmesh.outbox (prefix, body) VALUES ('pgmesh.kill',
                     '{"schema": "public", "table": "users", "key": ["26"],
                       "loser": {"ts": 9000000000000000, "node": "b"},
                       "winner": {"ts": 9000000000000001, "node": "a"}, "decider": "b"}')"#,
            )
            .unwrap();
        m.start_sidecars();
        m.wait_converged(NAMES, WAIT);
        for c in [&m.a.cluster, &m.b.cluster] {
            assert_eq!(c.psql("SELECT count(*) FROM users").unwrap(), "0");
        }
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FROM pgmesh.outbox")
                .unwrap(),
            "0"
        );
        assert_eq!(
            ledger(&m.a.cluster, "users", 26),
            "unique_exists|remote|removed_by_peer_decision"
        );
        m.stop_sidecars();
    }
}

/// Two rows swap the values of a unique column inside one transaction (through a
/// temporary value, as applications must): the peer receives both final images, which
/// collide with each other's old values until both are written. Nothing is a conflict
/// and no row may be lost.
#[test]
fn rows_swapping_unique_values_in_one_transaction_both_survive() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.start_sidecars();
        m.a.cluster
            .psql("INSERT INTO users VALUES (50, 's1@x', 501), (51, 's2@x', 502)")
            .unwrap();
        m.wait_converged(NAMES, WAIT);
        m.a.cluster
            .psql(
                "BEGIN;
                 UPDATE users SET email = 'tmp@x' WHERE id = 50;
                 UPDATE users SET email = 's1@x' WHERE id = 51;
                 UPDATE users SET email = 's2@x' WHERE id = 50;
                 COMMIT;",
            )
            .unwrap();
        m.wait_converged(NAMES, WAIT);
        // Back again, one row also changing its other unique column, then once more.
        m.a.cluster
            .psql(
                "BEGIN;
                 UPDATE users SET email = 'tmp@x' WHERE id = 50;
                 UPDATE users SET email = 's2@x' WHERE id = 51;
                 UPDATE users SET email = 's1@x', code = 503 WHERE id = 50;
                 COMMIT;",
            )
            .unwrap();
        m.wait_converged(NAMES, WAIT);
        m.a.cluster
            .psql(
                "BEGIN;
                 UPDATE users SET email = 'tmp@x' WHERE id = 50;
                 UPDATE users SET email = 's1@x' WHERE id = 51;
                 UPDATE users SET email = 's2@x' WHERE id = 50;
                 COMMIT;",
            )
            .unwrap();
        m.wait_converged(NAMES, WAIT);
        for c in [&m.a.cluster, &m.b.cluster] {
            assert_eq!(
                c.psql("SELECT string_agg(id || '=' || email, ',' ORDER BY id) FROM users WHERE id IN (50, 51)")
                    .unwrap(),
                "50=s2@x,51=s1@x",
                "PG{major}"
            );
        }
        m.stop_sidecars();
    }
}
