//! Initial copy (`pgmesh setup` on tables new to replication) against real clusters,
//! through the binary as an operator runs it: existing rows reach the empty node, a table
//! added while both nodes take writes (sidecars running) loses and resurrects no row,
//! rows on both nodes are refused unless the operator says how to reconcile, and an
//! interrupted copy is resumed.

mod support;

use pgmesh::testkit::{versions_under_test, Cluster};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cli::{pgmesh, text, write_config, Sidecars};
use support::{dump, Rng};

/// Two clusters per test at a time on the shared machine.
static CLUSTERS: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    CLUSTERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait_same(a: &Cluster, b: &Cluster, tables: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let diff: Vec<&str> = tables
            .iter()
            .copied()
            .filter(|t| dump(a, t) != dump(b, t))
            .collect();
        if diff.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for t in diff {
                let (da, db) = (dump(a, t), dump(b, t));
                let only_a: Vec<&str> = da.lines().filter(|l| !db.contains(l)).take(10).collect();
                let only_b: Vec<&str> = db.lines().filter(|l| !da.contains(l)).take(10).collect();
                eprintln!("{t}: only on a {only_a:?}\n only on b {only_b:?}");
            }
            panic!("nodes did not converge");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text, big text, \
    n int GENERATED ALWAYS AS (id * 2) STORED);";

#[test]
fn setup_copies_existing_rows_then_both_directions_stream() {
    let _t = turn();
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql(ITEMS).unwrap();
        }
        // Rows with TOASTed values, quotes, tabs, newlines and NULLs survive COPY text.
        a.psql(
            "INSERT INTO items (id, v, big)
             SELECT i, CASE WHEN i % 7 = 0 THEN NULL ELSE E'x\\t''y\\n' || i END,
                    CASE WHEN i % 1000 = 0 THEN repeat(md5(i::text), 400) END
               FROM generate_series(1, 30000) i",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &a, &b, "\"public.*\"");

        let out = pgmesh(&["setup", "--check"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));

        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        let t = text(&out);
        assert!(
            t.contains("node b: copied public.items from a: 30000 rows inserted"),
            "PG{major}: {t}"
        );
        assert!(
            t.contains("copy public.items a→b: 30000 rows"),
            "PG{major}: {t}"
        );
        assert_eq!(dump(&a, "items"), dump(&b, "items"), "PG{major}");
        assert_eq!(
            b.psql("SELECT state || ' ' || rows_copied FROM pgmesh.table_sync")
                .unwrap(),
            "done 30000"
        );
        // Copied rows carry the oldest commit time, under the copy's own origin.
        assert_eq!(
            b.psql(
                "SELECT DISTINCT x.timestamp || ' ' || o.roname FROM items,
                        pg_xact_commit_timestamp_origin(items.xmin) x
                   JOIN pg_replication_origin o ON o.roident = x.roident"
            )
            .unwrap(),
            "2000-01-01 00:00:00.000001+00 pgmesh__copy_a"
        );

        // A second setup copies nothing again.
        let out = pgmesh(&["setup"], &cfg);
        assert!(
            text(&out).contains("nothing to change"),
            "PG{major}: {}",
            text(&out)
        );

        let _sidecars = Sidecars::start(&cfg);
        a.psql("UPDATE items SET v = 'from a' WHERE id <= 100; DELETE FROM items WHERE id BETWEEN 101 AND 200")
            .unwrap();
        b.psql("UPDATE items SET v = 'from b' WHERE id BETWEEN 201 AND 300; INSERT INTO items (id, v) VALUES (40000, 'new on b')")
            .unwrap();
        wait_same(&a, &b, &["items"]);
        assert_eq!(
            a.psql("SELECT count(*) FROM items WHERE v LIKE 'from _'")
                .unwrap(),
            "200"
        );
        // Copied rows count as a's writes on b: a's updates of them are no conflict. On
        // a, b's updates of rows a wrote are (update_origin_differs, like native PG).
        assert_eq!(
            b.psql("SELECT count(*) FROM pgmesh.conflicts").unwrap(),
            "0"
        );
        assert_eq!(
            a.psql("SELECT string_agg(DISTINCT kind || ' ' || winner, ',') || ' ' || count(*) FROM pgmesh.conflicts")
                .unwrap(),
            "update_origin_differs remote 100"
        );
    }
}

/// A live primary (a, writing all along) gets a new empty peer (b); later a table that
/// only a filled joins replication while both nodes write. Sidecars run throughout the
/// second copy, so streamed changes and copied rows meet in every order.
#[test]
fn a_node_and_a_table_added_while_writes_go_on_lose_no_row() {
    let _t = turn();
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql("CREATE TABLE t1 (id int PRIMARY KEY, v int); CREATE TABLE t2 (id int PRIMARY KEY, v int);")
                .unwrap();
        }
        a.psql("INSERT INTO t1 SELECT i, 0 FROM generate_series(1, 50000) i; INSERT INTO t2 SELECT i, 0 FROM generate_series(1, 80000) i")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Writers: a writes both tables all along (inserts, updates and deletes of copied
        // and new rows); b writes each table once it replicates.
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let mut writers = Vec::new();
        for (node, dsn, seed) in [("a", a.dsn(), 1u64), ("b", b.dsn(), 2)] {
            let (stop, live) = (stop.clone(), live.clone());
            let bin = a.bin_dir().to_path_buf();
            writers.push(std::thread::spawn(move || {
                let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) + u64::from(major));
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) || rounds < 3 {
                    rounds += 1;
                    let mut sql = String::new();
                    for (i, (table, size)) in [("t1", 60_000), ("t2", 90_000)].into_iter().enumerate() {
                        if node == "b" && !live[i].load(Ordering::Relaxed) {
                            continue;
                        }
                        for _ in 0..20 {
                            let v = rng.below(1000);
                            let k = rng.below(size) as i64 + if node == "a" { 0 } else { 1_000_000 };
                            let old = rng.below(size);
                            sql.push_str(&match rng.below(3) {
                                0 => format!("INSERT INTO {table} VALUES ({k}, {v}) ON CONFLICT (id) DO UPDATE SET v = {v};"),
                                1 => format!("UPDATE {table} SET v = v + 1 WHERE id = {old};"),
                                _ => format!("DELETE FROM {table} WHERE id = {old};"),
                            });
                        }
                    }
                    if sql.is_empty() {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    // A statement may fail on a race (e.g. a key both sides insert); the
                    // next round goes on.
                    let _ = Command::new(bin.join("psql"))
                        .args(["-X", "-q", "-d", &dsn, "-c", &sql])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }));
        }
        std::thread::sleep(Duration::from_secs(1));
        let cfg = write_config(dir.path(), &a, &b, "\"public.t1\"");
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert!(
            text(&out).contains("node b: copied public.t1 from a"),
            "PG{major}: {}",
            text(&out)
        );
        let _sidecars = Sidecars::start(&cfg);
        live[0].store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(2));

        let cfg = write_config(dir.path(), &a, &b, "\"public.t1\", \"public.t2\"");
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert!(
            text(&out).contains("node b: copied public.t2 from a"),
            "PG{major}: {}",
            text(&out)
        );
        live[1].store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        wait_same(&a, &b, &["t1", "t2"]);
        for t in ["t1", "t2"] {
            let n: i64 = b
                .psql(&format!("SELECT count(*) FROM {t}"))
                .unwrap()
                .parse()
                .unwrap();
            assert!(n > 40_000, "PG{major}: {t} has {n} rows");
        }
    }
}

#[test]
fn rows_on_both_nodes_are_refused_unless_merged_or_replaced() {
    let _t = turn();
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql("CREATE TABLE m (id int PRIMARY KEY, v text); CREATE TABLE r (id int PRIMARY KEY, v text);")
                .unwrap();
        }
        a.psql("INSERT INTO m VALUES (1, 'a'), (2, 'a'); INSERT INTO r VALUES (1, 'a'), (2, 'a')")
            .unwrap();
        b.psql("INSERT INTO m VALUES (2, 'b'), (3, 'b'); INSERT INTO r VALUES (3, 'b')")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &a, &b, "\"public.m\"");

        let out = pgmesh(&["setup", "--json"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        assert!(
            text(&out).contains("table public.m is new to replication and holds rows on more than one node (2 rows on a, 2 rows on b)"),
            "PG{major}: {}",
            text(&out)
        );
        assert_eq!(
            a.psql("SELECT count(*) FROM pg_replication_slots").unwrap(),
            "0"
        );

        let out = pgmesh(&["setup", "--merge-existing"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert_eq!(
            a.psql("SELECT string_agg(id || v, ',' ORDER BY id) FROM m")
                .unwrap(),
            "1a,2a,3b"
        );
        assert_eq!(
            b.psql("SELECT string_agg(id || v, ',' ORDER BY id) FROM m")
                .unwrap(),
            "1a,2b,3b"
        );

        let cfg = write_config(dir.path(), &a, &b, "\"public.m\", \"public.r\"");
        // Deleting rows is asked for; without a terminal only --yes says so.
        let out = pgmesh(&["setup", "--replace-existing-from", "a"], &cfg);
        assert_eq!(out.status.code(), Some(2), "PG{major}: {}", text(&out));
        assert!(text(&out).contains("--yes"), "{}", text(&out));
        let out = pgmesh(&["setup", "--replace-existing-from", "zz", "--yes"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        assert!(text(&out).contains("'zz'"), "{}", text(&out));
        let out = pgmesh(&["setup", "--replace-existing-from", "a", "--yes"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert_eq!(dump(&a, "r"), dump(&b, "r"), "PG{major}");
        assert_eq!(
            b.psql("SELECT string_agg(id || v, ',' ORDER BY id) FROM r")
                .unwrap(),
            "1a,2a"
        );
    }
}

#[test]
fn an_interrupted_copy_is_resumed_by_the_next_setup() {
    let _t = turn();
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
                .unwrap();
        }
        a.psql("INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 5000) i")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &a, &b, "\"public.t\"");
        let out = pgmesh(&["setup", "-q"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        // As if the copy had stopped half way: part of the rows missing, state 'copying'.
        b.psql(
            "SET session_replication_role = replica; DELETE FROM t WHERE id > 2500;
             UPDATE pgmesh.table_sync SET state = 'copying', finished_at = NULL",
        )
        .unwrap();
        let out = pgmesh(&["setup", "--check"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert!(
            text(&out).contains("2500 rows inserted, 2500 already there"),
            "PG{major}: {}",
            text(&out)
        );
        assert_eq!(dump(&a, "t"), dump(&b, "t"), "PG{major}");
        assert_eq!(
            b.psql("SELECT state FROM pgmesh.table_sync").unwrap(),
            "done"
        );
    }
}
