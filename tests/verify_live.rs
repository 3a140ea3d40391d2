//! `pgmesh verify` and `pgmesh repair` against two real nodes with sidecars running,
//! driven through the binary as an operator would.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::cli::{pgmesh, text};

use pgmesh::testkit::{versions_under_test, Cluster};
use serde_json::Value;
use support::{dump, Mesh, Rng};

/// At most one mesh (two clusters) at a time on the shared machine: tests take turns.
static MESHES: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    MESHES.lock().unwrap_or_else(|e| e.into_inner())
}

const DDL: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, v text, n int);
CREATE TABLE pairs (k1 int, k2 text, v text, PRIMARY KEY (k1, k2));
CREATE TABLE bag (x int, y text);
ALTER TABLE bag REPLICA IDENTITY FULL;";

const TABLES: &[(&str, &[&str])] = &[
    ("public.items", &["id"]),
    ("public.pairs", &["k1", "k2"]),
    ("public.bag", &[]),
];
const NAMES: &[&str] = &["items", "pairs", "bag"];
const WAIT: Duration = Duration::from_secs(60);

fn write_config(dir: &Path, a: &str, b: &str) -> PathBuf {
    let path = dir.join("pgmesh.toml");
    std::fs::write(
        &path,
        format!(
            "[nodes.a]\ndsn = \"{a}\"\n[nodes.b]\ndsn = \"{b}\"\n[replication]\n\
             tables = [\"public.*\"]\nfull_identity = [\"public.bag\"]\n"
        ),
    )
    .unwrap();
    path
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// Runs `sql` on a node behind pgmesh's back: under a replication origin of its own
/// (so the sidecars never see it) and, with `quiet`, without firing the tombstone
/// trigger.
fn sneak(c: &Cluster, quiet: bool, sql: &str) {
    c.psql(
        "SELECT pg_replication_origin_create('test_sneak') \
          WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = 'test_sneak')",
    )
    .unwrap();
    let role = if quiet {
        "SET session_replication_role = replica;"
    } else {
        ""
    };
    c.psql(&format!(
        "SELECT pg_replication_origin_session_setup('test_sneak'); {role} {sql}"
    ))
    .unwrap();
}

/// `table key kind detail` of every difference in a verify JSON report, sorted.
fn differences(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for t in v["tables"].as_array().unwrap() {
        for d in t["differences"].as_array().unwrap() {
            let key: Vec<String> = d["key"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("NULL")))
                .collect();
            let detail = match d["kind"].as_str().unwrap() {
                "only_on" => d["only_on"].as_str().unwrap().to_string(),
                "values_differ" => d["columns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
                _ => format!("a={} b={}", d["copies"]["a"], d["copies"]["b"]),
            };
            out.push(format!(
                "{} {} {} {detail}",
                t["table"].as_str().unwrap(),
                key.join(","),
                d["kind"].as_str().unwrap()
            ));
        }
    }
    out.sort();
    out
}

fn loaded_mesh(major: u32) -> Mesh {
    let mut m = Mesh::new(major, DDL, TABLES);
    m.start_sidecars();
    m.a.cluster
        .psql(
            "INSERT INTO items SELECT g, 'v' || g, g FROM generate_series(1, 3000) g;
             INSERT INTO pairs SELECT g % 10, 'k' || g, 'p' FROM generate_series(1, 200) g;
             INSERT INTO bag VALUES (1, 'x'), (1, 'x'), (2, 'y'), (3, NULL);",
        )
        .unwrap();
    m.wait_converged(NAMES, WAIT);
    m
}

fn query(c: &Cluster, sql: &str) -> String {
    c.psql(sql).unwrap()
}

#[test]
fn verify_reports_exactly_the_changed_keys_and_repair_fixes_them() {
    let _t = turn();
    for major in versions_under_test() {
        let mut m = loaded_mesh(major);
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &m.a.cluster.dsn(), &m.b.cluster.dsn());

        let out = pgmesh(&["verify", "--json"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        let v = json(&out);
        assert_eq!(v["ok"], true);
        let items = &v["tables"][1];
        assert_eq!(items["table"], "public.items", "{v:#}");
        assert_eq!(items["rows"]["a"], 3000);
        assert_eq!(items["rows"]["b"], 3000);
        assert!(
            text(&out).contains("verify: [2/3] public.items"),
            "{}",
            text(&out)
        );

        // Behind pgmesh's back. On b: an update, a delete without a tombstone, a delete
        // with one, an insert, a composite key, one more copy of a row without a key.
        sneak(
            &m.b.cluster,
            true,
            "UPDATE items SET v = 'changed-b' WHERE id = 7;
             DELETE FROM items WHERE id = 8;
             INSERT INTO items VALUES (5001, 'only-b', 0);
             UPDATE pairs SET v = 'b' WHERE k1 = 3 AND k2 = 'k13';
             INSERT INTO bag VALUES (1, 'x');",
        );
        sneak(&m.b.cluster, false, "DELETE FROM items WHERE id = 10");
        // On a, later: its update is the newer one.
        std::thread::sleep(Duration::from_millis(5));
        sneak(
            &m.a.cluster,
            true,
            "UPDATE items SET v = 'changed-a', n = -9 WHERE id = 9",
        );

        // One big range (chunk above the table's size) is split and narrowed.
        let out = pgmesh(&["verify", "--json", "--chunk-rows", "5000"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        let v = json(&out);
        assert_eq!(v["ok"], false);
        let expected = vec![
            "public.bag x=1,y=x copies_differ a=2 b=3",
            "public.items id=10 only_on a",
            "public.items id=5001 only_on b",
            "public.items id=7 values_differ v",
            "public.items id=8 only_on a",
            "public.items id=9 values_differ v,n",
            "public.pairs k1=3,k2=k13 values_differ v",
        ];
        assert_eq!(differences(&v), expected, "PG{major}: {v:#}");
        assert_eq!(v["differences"], 7);
        assert!(v["consistent_at"]["a"].is_string(), "{v:#}");

        // The same with small ranges, for people.
        let out = pgmesh(&["verify", "--chunk-rows", "100"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        let human = String::from_utf8_lossy(&out.stdout).to_string();
        let line = human
            .lines()
            .find(|l| l.starts_with("public.items "))
            .unwrap_or_default();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "public.items",
                "id",
                "3000",
                "2999",
                "31",
                "5",
                "differing",
                "keys"
            ],
            "PG{major}: {human}"
        );
        for needle in [
            "  id=7     values differ: v\n",
            "  id=5001  only on b\n",
            "  k1=3, k2=k13  values differ: v\n",
            "  (1, x)  2 copies on a, 3 on b\n",
            "verify: 7 differences in 3 of 3 tables",
        ] {
            assert!(
                human.contains(needle),
                "PG{major}: missing {needle:?} in\n{human}"
            );
        }

        // Repair asks; without a terminal it needs --yes. A dry run changes nothing.
        let out = pgmesh(&["repair"], &cfg);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("repair needs --yes"), "{}", text(&out));
        let out = pgmesh(&["repair", "--dry-run", "--table", "items"], &cfg);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("copy b → a"), "{}", text(&out));
        assert_eq!(
            query(&m.a.cluster, "SELECT v FROM items WHERE id = 7"),
            "v7"
        );

        // Last writer wins.
        let out = pgmesh(
            &[
                "repair", "--yes", "--json", "--table", "items", "--table", "pairs",
            ],
            &cfg,
        );
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        let v = json(&out);
        let mut fixes: Vec<String> = v["fixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{} {} {} on {} {}",
                    f["key"],
                    f["action"].as_str().unwrap(),
                    f["winner"].as_str().unwrap(),
                    f["on"].as_str().unwrap(),
                    f["outcome"]["result"].as_str().unwrap()
                )
            })
            .collect();
        fixes.sort();
        assert_eq!(
            fixes,
            vec![
                r#"{"id":"10"} delete b on a repaired"#,
                r#"{"id":"5001"} copy b on a repaired"#,
                r#"{"id":"7"} copy b on a repaired"#,
                r#"{"id":"8"} copy a on b repaired"#,
                r#"{"id":"9"} copy a on b repaired"#,
                r#"{"k1":"3","k2":"k13"} copy b on a repaired"#,
            ],
            "PG{major}: {v:#}"
        );
        assert_eq!(
            query(&m.a.cluster, "SELECT v FROM items WHERE id = 7"),
            "changed-b"
        );
        assert_eq!(
            query(&m.b.cluster, "SELECT v FROM items WHERE id = 8"),
            "v8"
        );
        assert_eq!(
            query(&m.b.cluster, "SELECT v, n FROM items WHERE id = 9"),
            "changed-a|-9"
        );
        assert_eq!(
            query(&m.a.cluster, "SELECT count(*) FROM items WHERE id = 10"),
            "0"
        );
        // The copy carries the winning version's commit time.
        let ts = "SELECT pg_xact_commit_timestamp(xmin) FROM items WHERE id = 7";
        assert_eq!(query(&m.a.cluster, ts), query(&m.b.cluster, ts));
        // Each fix is in the ledger of the node it changed; the delete left a tombstone
        // dated by the winning delete.
        let ledger = "SELECT string_agg(key::text || ' ' || resolution || ' ' || winner, '; ' ORDER BY key::text COLLATE \"C\") \
                      FROM pgmesh.conflicts WHERE kind = 'repair'";
        assert_eq!(
            query(&m.a.cluster, ledger),
            r#"{"id": "10"} repaired_delete remote; {"id": "5001"} repaired_copy remote; {"id": "7"} repaired_copy remote; {"k1": "3", "k2": "k13"} repaired_copy remote"#,
            "PG{major}"
        );
        assert_eq!(
            query(&m.b.cluster, ledger),
            r#"{"id": "8"} repaired_copy remote; {"id": "9"} repaired_copy remote"#,
            "PG{major}"
        );
        assert_eq!(
            query(
                &m.a.cluster,
                "SELECT decided_node, decided_ts IS NOT NULL FROM pgmesh.tombstones \
                  WHERE table_name = 'public.items' AND key = '{10}'"
            ),
            "test_sneak|t"
        );
        assert_eq!(
            query(
                &m.a.cluster,
                "SELECT local_row->>'v', remote_row->>'v', remote_origin FROM pgmesh.conflicts \
                  WHERE kind = 'repair' AND key = '{\"id\": \"7\"}'"
            ),
            "v7|changed-b|test_sneak"
        );

        // A table without a key: only --prefer decides.
        let out = pgmesh(&["repair", "--yes", "--table", "bag"], &cfg);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("--prefer NODE"), "{}", text(&out));
        let out = pgmesh(
            &["repair", "--yes", "--table", "bag", "--prefer", "a"],
            &cfg,
        );
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert!(text(&out).contains("delete 1 copy on b"), "{}", text(&out));
        assert_eq!(
            query(&m.b.cluster, "SELECT count(*) FROM bag WHERE x = 1"),
            "2"
        );

        // --prefer wins over time.
        std::thread::sleep(Duration::from_millis(5));
        sneak(
            &m.b.cluster,
            true,
            "UPDATE items SET v = 'late-b' WHERE id = 20",
        );
        let out = pgmesh(&["repair", "--yes", "--prefer", "a"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert!(text(&out).contains("--prefer a"), "{}", text(&out));
        assert_eq!(
            query(&m.b.cluster, "SELECT v FROM items WHERE id = 20"),
            "v20"
        );

        // Identical now, and nothing travelled back: the only ledger rows are repairs.
        let out = pgmesh(&["verify"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        m.wait_converged(NAMES, WAIT);
        for c in [&m.a.cluster, &m.b.cluster] {
            assert_eq!(
                query(
                    c,
                    "SELECT count(*) FROM pgmesh.conflicts WHERE kind <> 'repair'"
                ),
                "0",
                "PG{major}: {}",
                query(c, "SELECT kind, key FROM pgmesh.conflicts")
            );
        }
        for t in NAMES {
            assert_eq!(dump(&m.a.cluster, t), dump(&m.b.cluster, t));
        }
        // Replication goes on over repaired rows.
        m.a.cluster
            .psql("UPDATE items SET v = 'after' WHERE id IN (7, 8, 5001)")
            .unwrap();
        m.wait_converged(NAMES, WAIT);

        // A direction that is behind: no differences are claimed.
        m.stop_sidecars();
        m.a.cluster
            .psql("INSERT INTO items VALUES (9001, 'late', 0)")
            .unwrap();
        let out = pgmesh(&["verify", "--wait-timeout", "2"], &cfg);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("could not reach a consistent point: direction a → b is behind"),
            "{}",
            text(&out)
        );
        assert!(!text(&out).contains("only on a"), "{}", text(&out));
        let out = pgmesh(&["repair", "--yes", "--wait-timeout", "1"], &cfg);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("repair changed nothing"),
            "{}",
            text(&out)
        );
        m.start_sidecars();
        let out = pgmesh(&["verify"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        m.stop_sidecars();

        // Teardown removes the repair and stream origins with pgmesh's others.
        let origins = "SELECT string_agg(roname, ',' ORDER BY roname COLLATE \"C\") FROM pg_replication_origin";
        assert_eq!(
            query(&m.a.cluster, origins),
            "pgmesh__repair_b,pgmesh__stream_b,pgmesh_b,test_sneak"
        );
        let out = pgmesh(&["teardown", "--yes"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        for c in [&m.a.cluster, &m.b.cluster] {
            assert_eq!(query(c, origins), "test_sneak", "PG{major}: {}", text(&out));
        }
    }
}

#[test]
fn verify_while_both_nodes_write_reports_no_false_differences() {
    let _t = turn();
    for major in versions_under_test() {
        let mut m = loaded_mesh(major);
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &m.a.cluster.dsn(), &m.b.cluster.dsn());
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for (n, dsn) in [(1u64, m.a.cluster.dsn()), (2, m.b.cluster.dsn())] {
            let stop = stop.clone();
            writers.push(m.rt.spawn(async move {
                let c = support::client(&dsn).await;
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n);
                let mut next = n * 1_000_000;
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = i64::try_from(1 + rng.below(3000)).unwrap();
                    let r = match rng.below(10) {
                        0..=5 => {
                            c.execute(
                                "UPDATE items SET v = $2, n = n + 1 WHERE id = $1",
                                &[&id, &format!("w{n}-{ops}")],
                            )
                            .await
                        }
                        6 | 7 => {
                            next += 1;
                            let k = i64::try_from(next).unwrap();
                            c.execute("INSERT INTO items VALUES ($1, 'new', 0)", &[&k])
                                .await
                        }
                        _ => c.execute("DELETE FROM items WHERE id = $1", &[&id]).await,
                    };
                    r.unwrap();
                    ops += 1;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                ops
            }));
        }
        std::thread::sleep(Duration::from_millis(500));
        for chunk in ["200", "5000"] {
            let out = pgmesh(&["verify", "--json", "--chunk-rows", chunk], &cfg);
            assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
            let v = json(&out);
            assert_eq!(v["ok"], true, "{v:#}");
        }
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for w in writers {
            total += m.rt.block_on(w).unwrap();
        }
        assert!(total > 100, "writers barely wrote: {total}");
        m.wait_converged(NAMES, WAIT);
        let out = pgmesh(&["verify"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        m.stop_sidecars();
    }
}

#[test]
fn bad_input_gets_a_clear_message() {
    let _t = turn();
    let major = versions_under_test()[0];
    let mut m = loaded_mesh(major);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &m.a.cluster.dsn(), &m.b.cluster.dsn());

    let out = pgmesh(&["verify", "--table", "public.nope"], &cfg);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("table public.nope is not replicated"),
        "{}",
        text(&out)
    );
    let out = pgmesh(&["repair", "--yes", "--prefer", "c"], &cfg);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--prefer"), "{}", text(&out));
    let out = pgmesh(&["verify", "--chunk-rows", "0"], &cfg);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = pgmesh(&["verify"], &dir.path().join("missing.toml"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // A table defined differently on the nodes is skipped with the reason.
    m.b.cluster
        .psql("ALTER TABLE pairs ADD COLUMN extra int")
        .unwrap();
    let out = pgmesh(&["verify", "--table", "pairs", "--table", "items"], &cfg);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("skipped: column extra exists on node b but not on node a"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("verify: 0 differences in 0 of 2 tables (1 skipped)"),
        "{}",
        text(&out)
    );

    // A node that does not answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = write_config(
        dir.path(),
        &m.a.cluster.dsn(),
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
    );
    for json in [false, true] {
        let args: &[&str] = if json {
            &["verify", "--json"]
        } else {
            &["verify"]
        };
        let out = pgmesh(args, &down);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("cannot connect to node b (127.0.0.1:"),
            "{}",
            text(&out)
        );
    }
    m.stop_sidecars();
}
