//! `pgmesh setup`, `setup --check` and `teardown` against real clusters (two per version),
//! driven through the binary as an operator would.

mod support;

use pgmesh::testkit::{versions_under_test, Cluster};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use support::cli::{pgmesh, text};

/// At most two clusters at a time on the shared machine: tests take turns.
static CLUSTERS: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    CLUSTERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_config(dir: &Path, a: &str, b: &str, replication: &str) -> PathBuf {
    let path = dir.join("pgmesh.toml");
    std::fs::write(
        &path,
        format!(
            "[nodes.a]\ndsn = \"{a}\"\n[nodes.b]\ndsn = \"{b}\"\n[replication]\n{replication}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn preflight_finds_each_misconfiguration_with_its_fix() {
    let _t = turn();
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::builder(major)
            .setting("wal_level", "replica")
            .setting("track_commit_timestamp", "off")
            .start()
            .unwrap();
        a.psql("CREATE TABLE nopk (x int); CREATE TABLE typed (id int PRIMARY KEY, v text); CREATE TABLE only_a (id int PRIMARY KEY)")
            .unwrap();
        b.psql("CREATE TABLE nopk (x int); CREATE TABLE typed (id int PRIMARY KEY, v varchar(10))")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &a.dsn(), &b.dsn(), "tables = [\"public.*\"]");

        let out = pgmesh(&["setup", "--check"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        assert!(
            text(&out).contains("ALTER SYSTEM SET wal_level = logical;"),
            "{}",
            text(&out)
        );

        let out = pgmesh(&["setup", "--check", "--json"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false);
        let findings = v["findings"].as_array().unwrap();
        let all: Vec<String> = findings
            .iter()
            .map(|f| {
                format!(
                    "{} {} {} | {}",
                    f["node"],
                    f["severity"],
                    f["what"].as_str().unwrap(),
                    f["fix"].as_str().unwrap()
                )
            })
            .collect();
        for needle in [
            "\"b\" \"error\" wal_level is 'replica'; logical decoding needs 'logical' | ALTER SYSTEM SET wal_level = logical;",
            "\"b\" \"error\" track_commit_timestamp is off",
            "| ALTER SYSTEM SET track_commit_timestamp = on;",
            "\"a\" \"error\" table public.nopk has no primary key",
            "ALTER TABLE public.nopk REPLICA IDENTITY FULL; and list \"public.nopk\" in [replication].full_identity",
            "\"b\" \"error\" table public.typed: column v is text on node a but character varying(10) on node b | ALTER TABLE public.typed ALTER COLUMN v TYPE text;",
            "\"b\" \"error\" table public.only_a exists on node a but not on node b",
        ] {
            assert!(all.iter().any(|l| l.contains(needle)), "PG{major}: missing {needle:?} in\n{all:#?}");
        }

        // The same database under two names.
        let twice = write_config(dir.path(), &a.dsn(), &a.dsn(), "tables = [\"public.*\"]");
        let out = pgmesh(&["setup", "--check", "--json"], &twice);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out).contains("nodes a and b are the same database"),
            "{}",
            text(&out)
        );
        let cfg = write_config(dir.path(), &a.dsn(), &b.dsn(), "tables = [\"public.*\"]");

        // Setup refuses and changes nothing.
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_eq!(
            a.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgmesh'")
                .unwrap(),
            "0"
        );
        assert_eq!(
            a.psql("SELECT count(*) FROM pg_replication_slots").unwrap(),
            "0"
        );
    }
}

const TABLES: &str = "
CREATE TABLE items (id int PRIMARY KEY, v text);
CREATE TABLE keys4 (i int, t text, ts timestamptz, n numeric, PRIMARY KEY (i, t, ts, n));
CREATE TABLE log (x int); ALTER TABLE log REPLICA IDENTITY FULL;
CREATE TABLE scratch (x int);
CREATE TABLE seqd (id serial PRIMARY KEY);
CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three');
";

#[test]
fn setup_creates_everything_idempotently_and_teardown_keeps_rows() {
    let _t = turn();
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        a.psql(TABLES).unwrap();
        b.psql(TABLES).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repl = "tables = [\"public.*\"]\nfull_identity = [\"public.log\"]\nexclude = [\"public.scratch\"]";
        let cfg = write_config(dir.path(), &a.dsn(), &b.dsn(), repl);

        a.psql("INSERT INTO seqd SELECT FROM generate_series(1, 5)")
            .unwrap();

        // Warnings only: colliding sequences/identities, row counts that differ.
        let out = pgmesh(&["setup", "--check", "--json", "--merge-existing"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["ok"].as_bool(), v["warnings"].as_u64()),
            (Some(true), Some(4)),
            "{v:#}"
        );
        let all = v.to_string();
        for needle in [
            "pgmesh sequences -c ",
            "(on a: ALTER SEQUENCE public.seqd_id_seq INCREMENT BY 2 RESTART WITH 6;)",
            "(on b: ALTER SEQUENCE public.seqd_id_seq INCREMENT BY 2 RESTART WITH 7;)",
            "(on a: ALTER SEQUENCE public.ident_id_seq INCREMENT BY 2 RESTART WITH 2;)",
            "(on b: ALTER SEQUENCE public.ident_id_seq INCREMENT BY 2 RESTART WITH 1;)",
        ] {
            assert!(
                all.contains(needle),
                "PG{major}: missing {needle:?} in\n{v:#}"
            );
        }
        a.psql("ALTER SEQUENCE seqd_id_seq INCREMENT BY 2 START WITH 6 RESTART WITH 6; ALTER TABLE ident ALTER COLUMN id SET INCREMENT BY 2 SET START WITH 2 RESTART WITH 2; TRUNCATE seqd").unwrap();
        b.psql("ALTER SEQUENCE seqd_id_seq INCREMENT BY 2 START WITH 7 RESTART WITH 7; ALTER TABLE ident ALTER COLUMN id SET INCREMENT BY 2 SET START WITH 3 RESTART WITH 3").unwrap();
        let out = pgmesh(&["setup", "--check", "--merge-existing"], &cfg);
        assert!(
            text(&out).contains("all checks passed"),
            "PG{major}: {}",
            text(&out)
        );

        let out = pgmesh(&["setup", "--merge-existing"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert!(
            text(&out).contains("created logical replication slot pgmesh_b"),
            "{}",
            text(&out)
        );

        for (c, me, peer) in [(&a, "a", "b"), (&b, "b", "a")] {
            assert_eq!(
                c.psql("SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'pgmesh'").unwrap(),
                "public.ident,public.items,public.keys4,public.log,public.seqd"
            );
            assert_eq!(
                c.psql("SELECT slot_name || ':' || plugin FROM pg_replication_slots")
                    .unwrap(),
                format!("pgmesh_{peer}:pgoutput")
            );
            // The merge of `items` wrote under the copy origin; streamed transactions
            // commit under the stream origin.
            assert_eq!(
                c.psql("SELECT string_agg(roname, ',' ORDER BY roname) FROM pg_replication_origin")
                    .unwrap(),
                format!("pgmesh__copy_{peer},pgmesh__stream_{peer},pgmesh_{peer}")
            );
            assert_eq!(
                c.psql("SELECT string_agg(tgrelid::regclass::text || ':' || tgenabled::text, ',' ORDER BY tgrelid::regclass::text) FROM pg_trigger WHERE tgname = 'pgmesh_tombstone'").unwrap(),
                "ident:O,items:O,keys4:O,log:O,seqd:O"
            );
            assert_eq!(
                c.psql("SELECT string_agg(name || ':' || is_local, ',' ORDER BY name) FROM pgmesh.nodes").unwrap(),
                if me == "a" { "a:true,b:false" } else { "a:false,b:true" }
            );
            // The fence: a statement trigger on every replicated table, enabled for
            // local sessions only (not for the apply); the flag is off.
            assert_eq!(
                c.psql("SELECT string_agg(tgrelid::regclass::text || ':' || tgenabled::text || ':' || tgtype, ',' ORDER BY tgrelid::regclass::text) FROM pg_trigger WHERE tgname = 'pgmesh_fence'").unwrap(),
                "ident:O:62,items:O:62,keys4:O:62,log:O:62,seqd:O:62"
            );
            assert_eq!(c.psql("SELECT fenced FROM pgmesh.fence").unwrap(), "f");
            let history: Vec<String> = (1..=pgmesh::setup::migrate::latest_version())
                .map(|v| v.to_string())
                .collect();
            assert_eq!(
                c.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM pgmesh.refinery_schema_history")
                    .unwrap(),
                history.join(",")
            );
        }

        // Idempotent: a second run changes nothing.
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("nothing to change"),
            "{}",
            text(&out)
        );

        check_tombstones(&a);

        // Config change: log leaves the set; publication and triggers follow.
        let repl2 = "tables = [\"public.*\"]\nexclude = [\"public.scratch\", \"public.log\"]";
        let cfg = write_config(dir.path(), &a.dsn(), &b.dsn(), repl2);
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(
            b.psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'pgmesh'").unwrap(),
            "ident,items,keys4,seqd"
        );
        assert_eq!(
            b.psql("SELECT count(*) FROM pg_trigger WHERE tgname = 'pgmesh_tombstone'")
                .unwrap(),
            "4"
        );
        assert_eq!(
            b.psql("SELECT string_agg(tgrelid::regclass::text, ',' ORDER BY tgrelid::regclass::text) FROM pg_trigger WHERE tgname = 'pgmesh_fence'")
                .unwrap(),
            "ident,items,keys4,seqd"
        );
        assert!(
            text(&out).contains("dropped fence trigger on log (no longer replicated)"),
            "{}",
            text(&out)
        );

        // Teardown refuses while a sidecar streams from a slot.
        let mut streamer = Command::new(a.bin_dir().join("pg_recvlogical"))
            .args([
                "-d",
                &a.dsn(),
                "--slot",
                "pgmesh_b",
                "--start",
                "-f",
                "/dev/null",
            ])
            .args(["-o", "proto_version=1", "-o", "publication_names=pgmesh"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(
            &a,
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgmesh_b'",
            "t",
        );
        let out = pgmesh(&["teardown", "--yes"], &cfg);
        streamer.kill().unwrap();
        streamer.wait().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("slot pgmesh_b is in use"),
            "{}",
            text(&out)
        );
        wait_for(
            &a,
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgmesh_b'",
            "f",
        );

        // Teardown: refuses without --yes off a terminal, then removes it all, keeps rows.
        let out = pgmesh(&["teardown"], &cfg);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("--yes"));
        let out = pgmesh(&["teardown", "--yes"], &cfg);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        for c in [&a, &b] {
            assert_eq!(
                c.psql("SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_replication_origin)
                        + (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_trigger WHERE tgname IN ('pgmesh_tombstone', 'pgmesh_fence'))
                        + (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgmesh')").unwrap(),
                "0"
            );
        }
        assert_eq!(b.psql("SELECT count(*) FROM items").unwrap(), "3");
        assert_eq!(
            a.psql("SELECT count(*) FROM items").unwrap(),
            "1",
            "two rows deleted above"
        );
        let out = pgmesh(&["teardown", "--yes"], &cfg);
        assert!(text(&out).contains("nothing to remove"), "{}", text(&out));
    }
}

/// Polls `sql` on `c` until it returns `want`; fails after 30 s with the last answer.
fn wait_for(c: &Cluster, sql: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = c.psql(sql).unwrap();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql}: waited for {want:?}, last {got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Local deletes leave a canonical tombstone; deletes under `session_replication_role =
/// replica` (the apply session) do not; an application role needs no grant on pgmesh.
fn check_tombstones(a: &Cluster) {
    a.psql("DELETE FROM items WHERE id = 1").unwrap();
    assert_eq!(
        a.psql("SELECT table_name || ' ' || key::text FROM pgmesh.tombstones")
            .unwrap(),
        "public.items {1}"
    );
    a.psql("SET session_replication_role = replica; DELETE FROM items WHERE id = 2")
        .unwrap();
    assert_eq!(
        a.psql("SELECT count(*) FROM pgmesh.tombstones").unwrap(),
        "1"
    );

    a.psql("CREATE ROLE app LOGIN; GRANT SELECT, INSERT, DELETE ON keys4 TO app")
        .unwrap();
    a.psql(
        "INSERT INTO keys4 VALUES (7, 'x y', '2024-01-02 03:04:05.5+00', 1.50);
         SET ROLE app;
         SET TimeZone = 'Pacific/Chatham'; SET DateStyle = 'SQL, DMY';
         SET extra_float_digits = -15; SET IntervalStyle = 'sql_standard';
         DELETE FROM keys4",
    )
    .unwrap();
    assert_eq!(
        a.psql("SELECT key::text FROM pgmesh.tombstones WHERE table_name = 'public.keys4'")
            .unwrap(),
        "{7,\"x y\",\"2024-01-02 03:04:05.5+00\",1.50}"
    );
    // Deleting the same key again refreshes the tombstone instead of failing.
    a.psql(
        "INSERT INTO keys4 VALUES (7, 'x y', '2024-01-02 03:04:05.5+00', 1.50); DELETE FROM keys4",
    )
    .unwrap();
    assert_eq!(
        a.psql("SELECT count(*) FROM pgmesh.tombstones").unwrap(),
        "2"
    );
    // A table without a key leaves no row tombstone (it is applied as a multiset, and a
    // key of every column could outgrow the tombstone index); TRUNCATE still records one.
    a.psql("INSERT INTO log VALUES (1); UPDATE log SET x = 2; DELETE FROM log")
        .unwrap();
    assert_eq!(
        a.psql("SELECT count(*) FROM pgmesh.tombstones").unwrap(),
        "2"
    );
    a.psql("TRUNCATE log").unwrap();
    assert_eq!(
        a.psql("SELECT key::text FROM pgmesh.tombstones WHERE table_name = 'public.log'")
            .unwrap(),
        "{}"
    );
}

#[test]
fn bad_input_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgmesh.toml");
    let run = |toml: &str, args: &[&str]| {
        std::fs::write(&cfg, toml).unwrap();
        let o = pgmesh(args, &cfg);
        (o.status.code(), text(&o))
    };
    let (code, out) = run(
        "[nodes.a]\ndsn = \"host=127.0.0.1\"\nhots = \"x\"\n[nodes.b]\ndsn = \"host=127.0.0.1\"\n[replication]\ntables = [\"public.*\"]\n",
        &["setup", "--check"],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("hots") && out.contains("pgmesh.toml"), "{out}");

    let (code, out) = run("[replication]\ntables = [\"public.*\"]\n", &["setup"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("no nodes defined") && out.contains("[nodes.a]"),
        "{out}"
    );

    let (code, out) = run("", &["teardown", "--yes"]);
    assert_eq!(code, Some(2), "{out}");

    // Port 1 on loopback: nothing listens there.
    let unreachable = "[nodes.a]\ndsn = \"host=127.0.0.1 port=1 user=postgres password=hunter2\"\n[nodes.b]\ndsn = \"host=127.0.0.1 port=1 user=postgres\"\n[replication]\ntables = [\"public.*\"]\n";
    let (code, out) = run(unreachable, &["setup", "--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("cannot connect to node a (127.0.0.1:1/postgres)"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
    let (code, out) = run(unreachable, &["teardown", "--yes"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cannot connect to node b"), "{out}");

    let missing = dir.path().join("nope.toml");
    let o = pgmesh(&["setup"], &missing);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("cannot read config file"), "{}", text(&o));
}
