//! Schema changes against real clusters, through the binary as an operator would run it:
//! a column added on one node only stops the direction into the other node (and only
//! that one) with a message that says what differs, keeps its position, and resumes with
//! every row once the other node has the column; `pgmesh ddl` changes both nodes while
//! both take writes, and nothing stops.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgmesh::testkit::{versions_under_test, Cluster};
use support::cli::{pgmesh, text};
use support::live::{self as cli, wait_converged, wait_for, Sidecar};

const DDL: &str = "CREATE TABLE items (id int PRIMARY KEY, k int NOT NULL DEFAULT 0, old text);";
const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_column_added_on_one_node_stops_only_the_direction_into_the_other() {
    let _t = cli::turn();
    for major in versions_under_test() {
        let (a, b, dir, cfg) = cli::nodes_with_setup(major, DDL, "\"public.*\"");
        let _sa = Sidecar::spawn(&cfg, "a", dir.path().join("a.log"));
        let mut sb = Sidecar::spawn(&cfg, "b", dir.path().join("b.log"));
        a.psql("INSERT INTO items (id, k) VALUES (1, 1)").unwrap();
        b.psql("INSERT INTO items (id, k) VALUES (2, 2)").unwrap();
        wait_converged(&a, &b, &["items"], MINUTE);

        a.psql("ALTER TABLE items ADD COLUMN extra text").unwrap();
        let mark = a.psql("SELECT pg_current_wal_lsn()").unwrap();
        a.psql("INSERT INTO items VALUES (3, 3, NULL, 'x3')")
            .unwrap();
        b.psql("INSERT INTO items (id, k) VALUES (4, 4)").unwrap();
        // b → a keeps working (a has every column b sends).
        wait_for(
            &a,
            "SELECT count(*) FROM items WHERE id = 4",
            "1",
            "b's row on a",
            MINUTE,
        );
        // a → b stops and says why and how to go on.
        let log = sb.wait_log("table public.items differs between a and b", MINUTE);
        for want in [
            "column extra (text) exists on a but not on b",
            "position kept",
            "ALTER TABLE public.items ADD COLUMN extra text;",
            "pgmesh ddl -c <config> --node b \"ALTER TABLE public.items ADD COLUMN extra text\"",
        ] {
            assert!(log.contains(want), "PG{major}: missing {want:?} in\n{log}");
        }
        // Writes on a while the direction is stopped.
        a.psql("INSERT INTO items VALUES (5, 5, NULL, 'x5'); UPDATE items SET extra = 'y1' WHERE id = 1")
            .unwrap();
        b.psql("INSERT INTO items (id, k) VALUES (6, 6)").unwrap();
        wait_for(
            &a,
            "SELECT count(*) FROM items WHERE id = 6",
            "1",
            "b's second row on a",
            MINUTE,
        );
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            b.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM items")
                .unwrap(),
            "1,2,4,6",
            "PG{major}: nothing of a's new shape is applied on b"
        );
        assert!(
            sb.running(),
            "PG{major}: the sidecar of b must keep running"
        );
        let log = sb.log_text();
        assert_eq!(
            log.matches("differs between a and b").count(),
            1,
            "PG{major}: stopped once, not retried:\n{log}"
        );
        // Nothing past the last applied commit was acknowledged to a.
        assert_eq!(
            a.psql(&format!(
                "SELECT confirmed_flush_lsn <= '{mark}' FROM pg_replication_slots WHERE slot_name = 'pgmesh_b'"
            ))
            .unwrap(),
            "t",
            "PG{major}"
        );

        // The fix, while b's sidecar is down; restarted, it resumes from the kept position.
        drop(sb);
        let out = pgmesh(
            &[
                "ddl",
                "--node",
                "b",
                "ALTER TABLE items ADD COLUMN extra text",
            ],
            &cfg,
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {t}");
        assert!(
            t.contains("ran on b ") && t.contains("committed on b"),
            "PG{major}: {t}"
        );
        let sb = Sidecar::spawn(&cfg, "b", dir.path().join("b2.log"));
        wait_converged(&a, &b, &["items"], MINUTE);
        assert_eq!(
            b.psql(
                "SELECT string_agg(id || ':' || coalesce(extra, '-'), ',' ORDER BY id) FROM items"
            )
            .unwrap(),
            "1:y1,2:-,3:x3,4:-,5:x5,6:-",
            "PG{major}"
        );
        assert!(
            !sb.log_text().contains("differs between"),
            "PG{major}: {}",
            sb.log_text()
        );
    }
}

/// Inserts rows `base + 1 …` on `c` and updates an earlier one and the shared row 1
/// until `stop`; returns how many rows it inserted. (An update may lose a deadlock
/// against the sidecar's apply; that is the application's business, not replication's.)
fn writer(c: &Cluster, base: i64, stop: &AtomicBool) -> i64 {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = base + i + 1;
        match c.psql(&format!("INSERT INTO items (id, k) VALUES ({id}, {i})")) {
            Ok(_) => i += 1,
            Err(e) => {
                eprintln!("writer {base}: insert failed, retrying: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let _ = c.psql(&format!(
            "UPDATE items SET k = k + 1 WHERE id IN ({}, 1)",
            base + 1 + i / 2
        ));
    }
    i
}

fn ddl(cfg: &std::path::Path, sql: &str) -> String {
    let out = pgmesh(&["ddl", sql], cfg);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{sql}: {t}");
    t
}

#[test]
fn pgmesh_ddl_changes_both_nodes_while_they_write_and_nothing_stops() {
    let _t = cli::turn();
    for major in versions_under_test() {
        let (a, b, dir, cfg) = cli::nodes_with_setup(major, DDL, "\"public.*\"");
        a.psql("INSERT INTO items VALUES (1, 0, 'seed')").unwrap();
        let sa = Sidecar::spawn(&cfg, "a", dir.path().join("a.log"));
        let sb = Sidecar::spawn(&cfg, "b", dir.path().join("b.log"));
        wait_converged(&a, &b, &["items"], MINUTE);

        let stop = Arc::new(AtomicBool::new(false));
        let changes = [
            // Additive: every node has the column before any row carries it.
            "ALTER TABLE items ADD COLUMN note text DEFAULT 'n'",
            // A drop: rows in flight still carry `old`; both nodes dropped it, so its
            // values are discarded.
            "ALTER TABLE items DROP COLUMN old",
            // A retype (a rewrite) of a column the writers write: rows in flight carry
            // integers, and the rewritten rows must not win over them.
            "ALTER TABLE items ALTER COLUMN k TYPE bigint",
        ];
        // Nothing in the scope may panic: the writers would never be told to stop.
        let (written_a, written_b, outputs) = std::thread::scope(|s| {
            let wa = s.spawn(|| writer(&a, 1_000_000, &stop));
            let wb = s.spawn(|| writer(&b, 2_000_000, &stop));
            let mut outputs = Vec::new();
            for sql in changes {
                std::thread::sleep(Duration::from_secs(1));
                outputs.push((sql, pgmesh(&["ddl", sql], &cfg)));
            }
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            (wa.join(), wb.join(), outputs)
        });
        for (sql, out) in &outputs {
            assert_eq!(out.status.code(), Some(0), "PG{major} {sql}: {}", text(out));
            assert!(text(out).contains("committed on a, b"), "{}", text(out));
        }
        let (written_a, written_b) = (written_a.unwrap(), written_b.unwrap());
        assert!(
            written_a > 10 && written_b > 10,
            "PG{major}: {written_a} / {written_b}"
        );
        cli::wait_converged_or_show(&a, &b, &["items"], MINUTE, &[&sa, &sb]);
        let total = (1 + written_a + written_b).to_string();
        for c in [&a, &b] {
            assert_eq!(
                c.psql("SELECT count(*) FROM items").unwrap(),
                total,
                "PG{major}"
            );
            assert_eq!(
                c.psql("SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'items'").unwrap(),
                "id integer, k bigint, note text",
                "PG{major}"
            );
        }
        for s in [&sa, &sb] {
            let log = s.log_text();
            assert!(
                !log.contains("differs between"),
                "PG{major}: a direction stopped:\n{log}"
            );
        }

        // A new primary key: the tombstone trigger follows it.
        let t = ddl(
            &cfg,
            "ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (id, k)",
        );
        assert!(
            t.contains("a: regenerated tombstone trigger of public.items (key: id, k)")
                && t.contains("b: regenerated tombstone trigger of public.items (key: id, k)"),
            "PG{major}: {t}"
        );
        a.psql("DELETE FROM items WHERE id = 1").unwrap();
        assert_eq!(
            a.psql("SELECT array_length(key, 1) FROM pgmesh.tombstones WHERE table_name = 'public.items'")
                .unwrap(),
            "2"
        );
        // A new table that the patterns select: published and triggered on both nodes.
        let t = ddl(&cfg, "CREATE TABLE extra_t (id int PRIMARY KEY, v text)");
        assert!(
            t.contains("added public.extra_t to publication pgmesh"),
            "PG{major}: {t}"
        );
        a.psql("INSERT INTO extra_t VALUES (1, 'from a')").unwrap();
        b.psql("INSERT INTO extra_t VALUES (2, 'from b')").unwrap();
        wait_converged(&a, &b, &["items", "extra_t"], MINUTE);
        assert_eq!(b.psql("SELECT count(*) FROM extra_t").unwrap(), "2");
    }
}

#[test]
fn a_direction_behind_several_schema_changes_catches_up_across_them() {
    let _t = cli::turn();
    for major in versions_under_test() {
        let (a, b, dir, cfg) = cli::nodes_with_setup(major, DDL, "\"public.*\"");
        a.psql("INSERT INTO items SELECT g, g, 'seed' FROM generate_series(1, 20) g")
            .unwrap();
        let sa = Sidecar::spawn(&cfg, "a", dir.path().join("a.log"));
        let sb = Sidecar::spawn(&cfg, "b", dir.path().join("b.log"));
        wait_converged(&a, &b, &["items"], MINUTE);
        // b's sidecar is down: a's changes wait in the slot, made with the old shape.
        drop(sb);
        a.psql("UPDATE items SET k = k + 100, old = 'changed' WHERE id <= 10; INSERT INTO items VALUES (21, 21, 'late')")
            .unwrap();
        // Three changes on both nodes while those changes wait: an add, a drop (not a
        // rename: pgmesh ddl records it), and a rewrite (the rewritten rows must not win
        // over the waiting updates).
        for sql in [
            "ALTER TABLE items ADD COLUMN note text",
            "ALTER TABLE items DROP COLUMN old",
            "ALTER TABLE items ALTER COLUMN k TYPE bigint",
        ] {
            let out = pgmesh(&["ddl", sql], &cfg);
            assert_eq!(
                out.status.code(),
                Some(0),
                "PG{major} {sql}: {}",
                text(&out)
            );
        }
        assert_eq!(
            b.psql("SELECT dropped::text FROM pgmesh.schema_changes WHERE 'old' = ANY (dropped)")
                .unwrap(),
            "{old}"
        );
        let sb = Sidecar::spawn(&cfg, "b", dir.path().join("b2.log"));
        cli::wait_converged_or_show(&a, &b, &["items"], MINUTE, &[&sa, &sb]);
        assert_eq!(
            b.psql("SELECT sum(k) FROM items").unwrap(),
            ((1..=20).sum::<i64>() + 1000 + 21).to_string(),
            "PG{major}: every waiting update arrived"
        );
        for s in [&sa, &sb] {
            let log = s.log_text();
            assert!(!log.contains("differs between"), "PG{major}:\n{log}");
        }
    }
}

#[test]
fn pgmesh_ddl_refuses_what_would_break_replication() {
    let _t = cli::turn();
    for major in versions_under_test() {
        let (a, b, _dir, cfg) = cli::nodes_with_setup(major, DDL, "\"public.*\"");
        a.psql("INSERT INTO items VALUES (1, 0, 'x')").unwrap();
        b.psql("INSERT INTO items VALUES (1, 0, 'x')").unwrap();
        let columns = "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0 AND NOT attisdropped";
        for (sql, code, want) in [
            (
                "ALTER TABLE items RENAME COLUMN old TO newer",
                2,
                "Add a new column",
            ),
            ("TRUNCATE items", 2, "is none of them"),
            (
                "ALTER TABLE items ADD COLUMN at timestamptz DEFAULT clock_timestamp()",
                1,
                "gives different values",
            ),
            (
                "ALTER TABLE items ADD COLUMN n serial",
                1,
                "gives different values",
            ),
            (
                "ALTER TABLE items DROP CONSTRAINT items_pkey",
                1,
                "would have no primary key",
            ),
            (
                "ALTER TABLE items ADD COLUMN ok text; ALTER TABLE missing ADD COLUMN x int",
                1,
                "every node was rolled back",
            ),
        ] {
            let out = pgmesh(&["ddl", sql], &cfg);
            let t = text(&out);
            assert_eq!(out.status.code(), Some(code), "PG{major} {sql}: {t}");
            assert!(t.contains(want), "PG{major} {sql}: {t}");
        }
        for c in [&a, &b] {
            assert_eq!(
                c.psql(columns).unwrap(),
                "id,k,old",
                "PG{major}: nothing changed"
            );
        }
        // A dry run changes nothing either; a real one does.
        let out = pgmesh(
            &["ddl", "--dry-run", "ALTER TABLE items ADD COLUMN ok text"],
            &cfg,
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(a.psql(columns).unwrap(), "id,k,old");
        // A long transaction holding the table: the lock is retried, then given up.
        let holder = std::process::Command::new(a.bin_dir().join("psql"))
            .args([
                "-X",
                "-q",
                "-d",
                &a.dsn(),
                "-c",
                "BEGIN; LOCK TABLE items IN ACCESS SHARE MODE; SELECT pg_sleep(4); COMMIT;",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let out = pgmesh(
            &[
                "ddl",
                "--lock-timeout",
                "200ms",
                "--attempts",
                "2",
                "ALTER TABLE items ADD COLUMN ok text",
            ],
            &cfg,
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {t}");
        assert!(
            t.contains("attempt 1 of 2") && t.contains("could not take the locks on node a"),
            "{t}"
        );
        let _ = holder.wait_with_output();
        let out = pgmesh(
            &["ddl", "--json", "ALTER TABLE items ADD COLUMN ok text"],
            &cfg,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], true, "{v:#}");
        assert_eq!(v["committed"], serde_json::json!(["a", "b"]));
        for c in [&a, &b] {
            assert_eq!(c.psql(columns).unwrap(), "id,k,old,ok", "PG{major}");
        }
    }
}
