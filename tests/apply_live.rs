//! Bidirectional apply against real clusters: writes flow both ways, conflicts resolve
//! the same way on both nodes and land in the ledger.

mod support;

use std::time::Duration;

use pgmesh::testkit::versions_under_test;
use support::Mesh;

const DDL: &str = "CREATE TABLE items(id bigint PRIMARY KEY, name text, qty int, note text);
                   CREATE TABLE uitems(id bigint PRIMARY KEY, name text UNIQUE, qty int);";
const TABLES: &[(&str, &[&str])] = &[("public.items", &["id"]), ("public.uitems", &["id"])];

#[test]
fn writes_flow_both_ways() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.start_sidecars();
        m.a.cluster
            .psql("INSERT INTO items VALUES (1, 'from a', 1, null)")
            .unwrap();
        m.b.cluster
            .psql("INSERT INTO items VALUES (2, 'from b', 2, 'x')")
            .unwrap();
        m.wait_converged(&["items"], Duration::from_secs(30));
        // A new row from the peer needs no decision: its transaction went as one
        // message (`apply::one_message`).
        m.wait_direction(
            "b",
            "a commit in one message",
            Duration::from_secs(10),
            |r| r.one_message_commits > 0,
        );
        m.b.cluster
            .psql("UPDATE items SET qty = 10 WHERE id = 1")
            .unwrap();
        m.a.cluster.psql("DELETE FROM items WHERE id = 2").unwrap();
        m.wait_converged(&["items"], Duration::from_secs(30));
        assert_eq!(
            m.a.cluster.psql("SELECT id, name, qty FROM items").unwrap(),
            "1|from a|10",
            "PG{major}"
        );
        // An update of a row another node wrote is PostgreSQL's update_origin_differs:
        // recorded, and the later (remote) write wins. Nothing else is a conflict.
        assert_eq!(
            m.a.cluster
                .psql("SELECT kind, winner, resolution FROM pgmesh.conflicts")
                .unwrap(),
            "update_origin_differs|remote|applied",
            "PG{major}"
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT kind, winner FROM pgmesh.conflicts")
                .unwrap(),
            "delete_origin_differs|remote",
            "PG{major}"
        );
        // Loop-free: a row written on a and applied on b never comes back to rewrite a.
        m.a.cluster
            .psql("INSERT INTO items VALUES (3, 'only a', 3, null)")
            .unwrap();
        m.wait_converged(&["items"], Duration::from_secs(30));
        m.wait_converged(&["items"], Duration::from_secs(30));
        assert_eq!(
            m.a.cluster
                .psql("SELECT (pg_xact_commit_timestamp_origin(xmin)).roident FROM items WHERE id = 3")
                .unwrap(),
            "0",
            "PG{major}: the row on a must still be a's own write"
        );
        m.stop_sidecars();
    }
}

/// A batch does not wait out its delay once the peer's walsender has sent all it had (the
/// keepalive it sends before it waits for WAL): with a ten-minute delay, each of a few
/// lone transactions still arrives, one after the other. (The walsender sends that
/// keepalive only while the write position we report is behind what it sent, so the
/// status updates going out meanwhile must not claim more: see `source::stream`.)
#[test]
fn a_lone_transaction_does_not_wait_out_the_batch_delay() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.limits.max_delay = Duration::from_secs(600);
        m.start_sidecars();
        for id in 1..=5 {
            m.a.cluster
                .psql(&format!(
                    "INSERT INTO items VALUES ({id}, 'lone', {id}, null)"
                ))
                .unwrap();
            m.wait_converged(&["items"], Duration::from_secs(60));
            assert_eq!(
                m.b.cluster.psql("SELECT count(*) FROM items").unwrap(),
                id.to_string(),
                "PG{major}"
            );
        }
        m.stop_sidecars();
    }
}

/// A backlog of thousands of one-row transactions (inserts, updates, deletes) reaches
/// the sidecar in bulk, many frames per socket read: every one must be applied, each
/// without a decision (nothing else wrote those rows), so no ledger row appears.
#[test]
fn a_backlog_of_small_transactions_drains_completely_and_without_conflicts() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.a.cluster
            .psql(
                "DO $$ BEGIN
                   FOR i IN 1..3000 LOOP
                     INSERT INTO items VALUES (i, 'n' || i, i, null); COMMIT;
                   END LOOP;
                   FOR i IN 1..3000 BY 3 LOOP
                     UPDATE items SET qty = qty + 1 WHERE id = i; COMMIT;
                   END LOOP;
                   FOR i IN 2..3000 BY 7 LOOP
                     DELETE FROM items WHERE id = i; COMMIT;
                   END LOOP;
                 END $$",
            )
            .unwrap();
        m.start_sidecars();
        m.wait_converged(&["items"], Duration::from_secs(60));
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*), sum(qty) FROM items")
                .unwrap(),
            m.a.cluster
                .psql("SELECT count(*), sum(qty) FROM items")
                .unwrap(),
            "PG{major}"
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FROM pgmesh.conflicts")
                .unwrap(),
            "0",
            "PG{major}: rows only a wrote need no decision"
        );
        m.stop_sidecars();
    }
}

#[test]
fn concurrent_inserts_of_one_key_converge_to_the_later_write() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        // Both nodes write the same key while the sidecars are down.
        m.a.cluster
            .psql("INSERT INTO items VALUES (7, 'a first', 1, null)")
            .unwrap();
        m.b.cluster
            .psql("INSERT INTO items VALUES (7, 'b later', 2, null)")
            .unwrap();
        m.start_sidecars();
        m.wait_converged(&["items"], Duration::from_secs(30));
        assert_eq!(
            m.a.cluster.psql("SELECT name FROM items").unwrap(),
            "b later",
            "PG{major}"
        );
        // Each node recorded the conflict, and both agree b's version won.
        assert_eq!(m.conflicts(&m.a.cluster, "insert_exists"), 1);
        assert_eq!(m.conflicts(&m.b.cluster, "insert_exists"), 1);
        assert_eq!(
            m.a.cluster
                .psql("SELECT winner, local_origin, remote_origin FROM pgmesh.conflicts")
                .unwrap(),
            "remote|a|b"
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT winner, local_origin, remote_origin FROM pgmesh.conflicts")
                .unwrap(),
            "local|b|a"
        );
        m.stop_sidecars();
    }
}

/// Large chunks write new rows through COPY; one that meets a key this node took (the
/// COPY fails under its savepoint) or deleted (a tombstone) decides those keys the
/// careful way: the result and the ledger are as for any chunk, and the large chunks
/// after it arrive whole.
#[test]
fn a_large_chunk_that_needs_a_decision_is_applied_again_the_careful_way() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        // b writes key 150 and deletes key 300 (a tombstone) first; then a inserts
        // 1..1000 in one transaction (later: a's versions win), then two more clean
        // 1000-row transactions.
        m.b.cluster
            .psql("INSERT INTO items VALUES (150, 'b', 0, null), (300, 'b', 0, null)")
            .unwrap();
        m.b.cluster
            .psql("DELETE FROM items WHERE id = 300")
            .unwrap();
        for (from, to) in [(1, 1000), (1001, 2000), (2001, 3000)] {
            m.a.cluster
                .psql(&format!(
                    "INSERT INTO items SELECT i, 'a', i, null FROM generate_series({from}, {to}) i"
                ))
                .unwrap();
        }
        m.start_sidecars();
        m.wait_converged(&["items"], Duration::from_secs(60));
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*), count(*) FILTER (WHERE name = 'a') FROM items")
                .unwrap(),
            "3000|3000",
            "PG{major}: a's later inserts win on b"
        );
        assert_eq!(
            m.conflicts(&m.b.cluster, "insert_exists"),
            1,
            "PG{major}: key 150 on b"
        );
        m.stop_sidecars();
    }
}

/// A batch cut into chunks is still one local transaction: a row an earlier chunk wrote
/// (no commit time yet) is the peer's own write, not a local one. Changing it again in a
/// later chunk, or deleting and re-inserting its key, is no conflict.
#[test]
fn rows_an_earlier_chunk_of_the_same_batch_wrote_are_no_conflict() {
    for major in versions_under_test() {
        let mut m = Mesh::new(major, DDL, TABLES);
        m.limits.max_rows = 7;
        m.start_sidecars();
        m.a.cluster
            .psql(
                "BEGIN;
                 INSERT INTO items SELECT i, 'n', 0 FROM generate_series(1, 40) i;
                 UPDATE items SET qty = qty + 1;
                 DELETE FROM items WHERE id % 3 = 0;
                 INSERT INTO items SELECT i, 'again', 5 FROM generate_series(3, 40, 3) i;
                 UPDATE items SET qty = qty + 1;
                 INSERT INTO uitems SELECT i, 'u' || i, 0 FROM generate_series(1, 30) i;
                 UPDATE uitems SET qty = qty + 1, name = name || 'x';
                 UPDATE uitems SET qty = qty + 1;
                 COMMIT;",
            )
            .unwrap();
        m.wait_converged(&["items", "uitems"], Duration::from_secs(30));
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*), sum(qty) FROM uitems")
                .unwrap(),
            "30|60",
            "PG{major}"
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*), sum(qty) FROM items")
                .unwrap(),
            "40|132",
            "PG{major}"
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FROM pgmesh.conflicts")
                .unwrap(),
            "0",
            "PG{major}: {}",
            m.b.cluster
                .psql("SELECT kind, key, local_origin FROM pgmesh.conflicts LIMIT 5")
                .unwrap()
        );
    }
}

/// The apply statements find a chunk's keys through the primary-key index whatever the
/// table's size: without the `= ANY` index condition (`apply/sql.rs` `key_join`) the
/// planner hash-joined or merge-joined 5,000 keys against the whole table, so every
/// chunk's cost grew with the table. Checked on the plans PostgreSQL picks.
#[test]
fn key_lookups_probe_the_index_whatever_the_table_size() {
    use pgmesh::apply::sql;
    use pgmesh::table::local::LocalTable;
    for major in versions_under_test() {
        let c = pgmesh::testkit::Cluster::start(major).unwrap();
        c.psql(
            "CREATE TABLE big(id bigint PRIMARY KEY, v text);
             INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 200000) g;
             ANALYZE big;",
        )
        .unwrap();
        let rt = support::runtime();
        rt.block_on(async {
            let client = support::client(&c.dsn()).await;
            let t = LocalTable::load(&client, "public", "big").await.unwrap();
            // Keys past the end (a bulk insert) and spread over the table (updates).
            let past: Vec<String> = (300_001..305_001).map(|i| i.to_string()).collect();
            let spread: Vec<String> = (1..5001).map(|i| (i * 37 % 200_000).to_string()).collect();
            for keys in [&past, &spread] {
                for (what, stmt, extra) in [
                    ("select_rows", sql::select_rows(&t), false),
                    ("delete_rows", sql::delete_rows(&t), false),
                    ("update_rows", sql::update_rows(&t, &[1]), true),
                ] {
                    let explain = format!("EXPLAIN {stmt}");
                    let plan: Vec<String> = if extra {
                        client.query(&explain, &[keys, keys]).await
                    } else {
                        client.query(&explain, &[keys]).await
                    }
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect();
                    let plan = plan.join("\n");
                    assert!(
                        plan.contains("Index Cond") && !plan.contains("Seq Scan on big"),
                        "PG{major} {what}:\n{plan}"
                    );
                }
            }
        });
    }
}

/// A table `big` and pgmesh's tombstone table, nothing else: for plan checks.
const BIG_AND_TOMBSTONES: &str = "CREATE TABLE big(id bigint PRIMARY KEY, v text);
     CREATE SCHEMA pgmesh;
     CREATE TABLE pgmesh.tombstones (table_name text NOT NULL, key text[] NOT NULL,
       deleted_at timestamptz NOT NULL DEFAULT now(), decided_ts timestamptz,
       decided_node text, PRIMARY KEY (table_name, key));";

/// The tombstone lookup probes the primary key of `pgmesh.tombstones` once per key even
/// with a plan cached while the tombstone table was empty (catch-up and bulk chunks use
/// cached plans): as a plain join such a plan read every tombstone of the table and
/// hash-joined them with the keys, however many there were by then.
#[test]
fn the_tombstone_lookup_probes_per_key_with_a_plan_cached_while_empty() {
    use pgmesh::apply::sql;
    use pgmesh::table::local::LocalTable;
    for major in versions_under_test() {
        let c = pgmesh::testkit::Cluster::start(major).unwrap();
        c.psql(BIG_AND_TOMBSTONES).unwrap();
        let rt = support::runtime();
        rt.block_on(async {
            let client = support::client(&c.dsn()).await;
            let t = LocalTable::load(&client, "public", "big").await.unwrap();
            client
                .batch_execute(&format!(
                    "SET plan_cache_mode = force_generic_plan; {}; PREPARE tombs(text, text[]) AS {}",
                    pgmesh::apply::session::PLANNER_SETTINGS,
                    sql::select_tombstones(&t)
                ))
                .await
                .unwrap();
            client
                .batch_execute(
                    "EXECUTE tombs('public.big', '{1,2}');
                     INSERT INTO pgmesh.tombstones (table_name, key)
                       SELECT 'public.big', ARRAY[g::text] FROM generate_series(1, 100000) g;",
                )
                .await
                .unwrap();
            let plan: Vec<String> = client
                .query("EXPLAIN EXECUTE tombs('public.big', '{1,2,300000}')", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("Index Cond: ((table_name = $1) AND (key = ARRAY[")
                    && !plan.contains("Hash Join"),
                "PG{major}:\n{plan}"
            );
        });
    }
}

/// Small chunks run on generic plans (planned once per session), so every statement of
/// the apply must keep probing the key (and the tombstones' key) when its plan was cached
/// while its tables were empty and they grew afterwards — the failure that once made pgmesh
/// plan small chunks every time.
#[test]
fn every_apply_statement_probes_keys_with_a_plan_cached_while_its_table_was_empty() {
    use pgmesh::apply::{sql, uncontested_sql as u};
    use pgmesh::table::local::LocalTable;
    use tokio_postgres::types::Type;
    for major in versions_under_test() {
        let c = pgmesh::testkit::Cluster::start(major).unwrap();
        c.psql(BIG_AND_TOMBSTONES).unwrap();
        let rt = support::runtime();
        rt.block_on(async {
            let client = support::client(&c.dsn()).await;
            let t = LocalTable::load(&client, "public", "big").await.unwrap();
            let statements = [
                ("select_rows", sql::select_rows(&t)),
                ("select_tombstones", sql::select_tombstones(&t)),
                ("upsert_tombstones", sql::upsert_tombstones(&t)),
                ("delete_rows", sql::delete_rows(&t)),
                ("update_rows", sql::update_rows(&t, &[1])),
                ("insert_rows", sql::insert_rows(&t, &[0, 1])),
                ("insert_new_rows", sql::insert_new_rows(&t, &[0, 1])),
                ("update_peers_rows", u::update_peers_rows(&t, &[1])),
                ("update_all_peers_rows", u::update_all_peers_rows(&t, &[1])),
                ("delete_peers_rows", u::delete_peers_rows(&t)),
                ("delete_all_peers_rows", u::delete_all_peers_rows(&t)),
                ("no_tombstones", u::no_tombstones(&t)),
            ];
            client
                .batch_execute("SET plan_cache_mode = force_generic_plan")
                .await
                .unwrap();
            client
                .batch_execute(pgmesh::apply::session::PLANNER_SETTINGS)
                .await
                .unwrap();
            // Arguments by type: two keys, the table's name, no origin, a count of two.
            let mut executes = Vec::new();
            for (name, text) in &statements {
                let types = client.prepare(text).await.unwrap().params().to_vec();
                let args: Vec<&str> = types
                    .iter()
                    .map(|ty| match *ty {
                        Type::TEXT_ARRAY => "'{1,2}'",
                        Type::TEXT => "'public.big'",
                        Type::OID_ARRAY => "'{}'",
                        Type::INT8 | Type::INT4 => "2",
                        ref other => panic!("{name}: a parameter of type {other}"),
                    })
                    .collect();
                client
                    .batch_execute(&format!("PREPARE {name} AS {text}"))
                    .await
                    .unwrap();
                executes.push((name, format!("EXECUTE {name}({})", args.join(", "))));
            }
            // Each plan is made (and cached) now, on empty tables.
            for (name, exec) in &executes {
                client
                    .batch_execute(&format!("EXPLAIN {exec}"))
                    .await
                    .unwrap_or_else(|e| panic!("PG{major} {name}: {e}"));
            }
            client
                .batch_execute(
                    "INSERT INTO big SELECT g, 'v' FROM generate_series(1, 100000) g;
                     INSERT INTO pgmesh.tombstones (table_name, key)
                       SELECT 'public.big', ARRAY[g::text] FROM generate_series(100001, 200000) g;",
                )
                .await
                .unwrap();
            for (name, exec) in &executes {
                let plan: Vec<String> = client
                    .query(&format!("EXPLAIN {exec}"), &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect();
                let plan = plan.join("\n");
                // A join with the keys is fine; reading a whole table (or all of its
                // tombstones: an index condition on the table name alone) is not, except
                // in the EXISTS that skips tables without tombstones (`e`: it stops at the
                // first one).
                let lines: Vec<&str> = plan.lines().collect();
                let all_tombstones = lines.windows(2).any(|w| {
                    w[1].contains("Index Cond: (table_name = ")
                        && !w[1].contains("key")
                        && !w[0].contains("on tombstones e")
                });
                let whole = plan.contains("Seq Scan on big")
                    || plan.contains("Seq Scan on tombstones")
                    || all_tombstones;
                assert!(!whole, "PG{major} {name}: reads a whole table\n{plan}");
                // Nor may it test each row it finds against every key of the chunk (a
                // nested loop over the unnest with the key as a join filter: quadratic).
                let quadratic = lines
                    .iter()
                    .any(|l| l.contains("Join Filter") && l.contains("u.k0"));
                assert!(
                    !quadratic,
                    "PG{major} {name}: matches rows against every key\n{plan}"
                );
                // Nor be compiled (JIT) at every execution.
                assert!(!plan.contains("JIT"), "PG{major} {name}: JIT\n{plan}");
                if std::env::var_os("PGMESH_SHOW_PLANS").is_some() {
                    eprintln!("PG{major} {name}:\n{plan}\n");
                }
            }
        });
    }
}

/// The one-message path (`apply::one_message`) sends every value as an SQL literal:
/// values full of quotes, backslashes, braces, commas, `NULL` as text, empty strings,
/// whitespace and non-ASCII, in keys and columns of many types, must arrive byte for
/// byte — and, since nothing here needs a decision, every transaction must go that way.
#[test]
fn values_of_every_kind_arrive_intact_in_one_message() {
    const ODD: &str = "CREATE TABLE odd(k text, n int, t text, j jsonb, b bytea, a int[],
                                    ts timestamptz, num numeric, PRIMARY KEY (k, n));";
    let texts = [
        r#"it's"#,
        r#"say "hi""#,
        r"back\slash\\",
        "{braces},and,commas",
        "NULL",
        "",
        "  spaced  ",
        "tab\there\nnewline",
        "ünïcødé ✓",
        r#"E'\x41'"#,
        "$$dollar$$",
    ];
    for major in versions_under_test() {
        let mut m = Mesh::new(major, ODD, &[("public.odd", &["k", "n"])]);
        m.start_sidecars();
        for (i, s) in texts.iter().enumerate() {
            let lit = s.replace('\'', "''");
            m.a.cluster
                .psql(&format!(
                    "INSERT INTO odd VALUES ('{lit}', {i}, '{lit}', jsonb_build_object('s', '{lit}'),
                       convert_to('{lit}', 'UTF8'), ARRAY[{i}, NULL, -1], '2026-12-06 10:00:00.123456+00',
                       {i}.5)"
                ))
                .unwrap();
        }
        m.a.cluster
            .psql("INSERT INTO odd VALUES ('nulls', 99, NULL, NULL, NULL, NULL, NULL, NULL)")
            .unwrap();
        m.wait_converged(&["odd"], Duration::from_secs(30));
        for (i, s) in texts.iter().enumerate().step_by(2) {
            let lit = s.replace('\'', "''");
            m.a.cluster
                .psql(&format!(
                    "UPDATE odd SET t = t || '{lit}', a = a || {i} WHERE n = {i}"
                ))
                .unwrap();
        }
        m.a.cluster
            .psql("UPDATE odd SET t = 'NULL', j = 'null' WHERE n = 99")
            .unwrap();
        m.a.cluster
            .psql("DELETE FROM odd WHERE n IN (1, 3)")
            .unwrap();
        m.wait_converged(&["odd"], Duration::from_secs(30));
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FROM odd WHERE t = 'NULL' AND n = 99")
                .unwrap(),
            "1",
            "PG{major}"
        );
        let r = m.wait_direction("b", "commits counted", Duration::from_secs(10), |r| {
            r.commits > 0
        });
        assert_eq!(
            r.one_message_commits, r.commits,
            "PG{major}: nothing needed a decision, so every transaction goes in one message"
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FROM pgmesh.conflicts")
                .unwrap(),
            "0",
            "PG{major}"
        );
        m.stop_sidecars();
    }
}
