//! `pgmesh status`, `pgmesh conflicts` and ledger retention against real clusters, driven
//! through the binary as an operator would: setup, sidecars as child processes, then the
//! read commands' exit codes, JSON and tables.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::cli::{pgmesh, text};

use pgmesh::testkit::{versions_under_test, Cluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const DDL: &str = "CREATE TABLE items (id int PRIMARY KEY, v text);";

/// At most two clusters at a time on the shared machine: tests take turns.
static CLUSTERS: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    CLUSTERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_config(dir: &Path, name: &str, a: &str, b: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[nodes.a]\ndsn = \"{a}\"\n[nodes.b]\ndsn = \"{b}\"\n[replication]\ntables = [\"public.*\"]\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn q(c: &Cluster, sql: &str) -> String {
    c.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

struct Sidecar(Child);

impl Sidecar {
    fn spawn(cfg: &Path, node: &str, log: &Path) -> Sidecar {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .args(["run", "-c"])
            .arg(cfg)
            .args(["--node", node])
            .env("RUST_LOG", "pgmesh=info")
            .env_remove("PGPASSWORD")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pgmesh run");
        Sidecar(child)
    }

    /// SIGTERM and wait: the sidecar commits or rolls back and acknowledges first.
    fn stop(mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, log: &Path, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; sidecar log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `pgmesh status --json` until it exits `code`; returns that run.
fn status_until(cfg: &Path, args: &[&str], code: i32, log: &Path) -> Output {
    let mut last = None;
    let mut argv = vec!["status", "--json"];
    argv.extend_from_slice(args);
    wait_until(&format!("status {args:?} to exit {code}"), log, || {
        let o = pgmesh(&argv, cfg);
        let done = o.status.code() == Some(code);
        last = Some(o);
        done
    });
    last.unwrap()
}

fn direction<'v>(report: &'v Value, from: &str, to: &str) -> &'v Value {
    report["directions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["from"] == from && d["to"] == to)
        .unwrap_or_else(|| panic!("no direction {from} -> {to} in {report:#}"))
}

fn setup(a: &Cluster, b: &Cluster, dir: &Path, extra: &str) -> PathBuf {
    q(a, DDL);
    q(b, DDL);
    let cfg = write_config(dir, "pgmesh.toml", &a.dsn(), &b.dsn(), extra);
    let out = pgmesh(&["setup"], &cfg);
    assert_eq!(out.status.code(), Some(0), "setup: {}", text(&out));
    cfg
}

#[test]
fn status_reports_each_direction_and_exits_by_health() {
    let _t = turn();
    for major in versions_under_test() {
        let (a, b) = (
            Cluster::start(major).unwrap(),
            Cluster::start(major).unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = setup(&a, &b, dir.path(), "");
        let log = dir.path().join("sidecars.log");

        // No sidecar yet: both directions down.
        let out = pgmesh(&["status", "--json"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        let r = json(&out);
        assert_eq!(r["healthy"], false);
        assert_eq!(direction(&r, "a", "b")["state"], "sidecar_down", "{r:#}");

        let sa = Sidecar::spawn(&cfg, "a", &log);
        let mut sb = Some(Sidecar::spawn(&cfg, "b", &log));
        let out = status_until(&cfg, &[], 0, &log);
        let r = json(&out);
        assert_eq!(r["healthy"], true, "PG{major}: {r:#}");
        assert_eq!(r["directions"].as_array().unwrap().len(), 2);
        for (from, to) in [("a", "b"), ("b", "a")] {
            let d = direction(&r, from, to);
            assert_eq!(d["state"], "streaming", "{d:#}");
            assert_eq!(d["slot"], format!("pgmesh_{to}"));
            assert_eq!(d["origin"], format!("pgmesh_{from}"));
            assert!(d["lag_bytes"].is_i64(), "{d:#}");
            assert!(d["lag_seconds"].is_f64(), "{d:#}");
            assert!(d["retained_wal_bytes"].is_i64(), "{d:#}");
            assert_eq!(d["wal_status"], "reserved", "{d:#}");
            assert_eq!(d["conflicts_last_hour"], 0, "{d:#}");
            assert_eq!(d["sidecar"]["slot_active"], true, "{d:#}");
            assert_eq!(d["sidecar"]["apply_session"], true, "{d:#}");
            assert!(d["sidecar"]["walsender_pid"].is_i64(), "{d:#}");
            assert_eq!(d["problems"].as_array().unwrap().len(), 0);
        }
        for n in r["nodes"].as_array().unwrap() {
            assert_eq!(n["reachable"], true);
            assert!(n["server_version"]
                .as_str()
                .unwrap()
                .starts_with(&major.to_string()));
        }

        // Something applied: the last applied position shows.
        q(
            &a,
            "INSERT INTO items SELECT g, 'x' FROM generate_series(1, 10) g",
        );
        wait_until("rows on b", &log, || {
            b.psql("SELECT count(*) FROM items")
                .is_ok_and(|n| n == "10")
        });
        let r = json(&status_until(&cfg, &[], 0, &log));
        let applied = direction(&r, "a", "b")["last_applied_lsn"].clone();
        assert!(applied.is_string(), "PG{major}: {r:#}");
        let human = pgmesh(&["status"], &cfg);
        let t = text(&human);
        assert!(t.contains("a -> b") && t.contains("streaming"), "{t}");
        assert!(
            t.contains("status: healthy (2 direction(s) streaming)"),
            "{t}"
        );

        // Each sidecar has estimated its clock against its peer's from the stream (a
        // round trip within seconds, recorded at once); both clusters share this
        // machine's clock, so the skew is small and nothing warns.
        let mut r = Value::Null;
        wait_until("clock skew estimates in status", &log, || {
            r = json(&pgmesh(&["status", "--json"], &cfg));
            r["directions"]
                .as_array()
                .is_some_and(|ds| ds.iter().all(|d| d["clock_skew"].is_object()))
        });
        for (from, to) in [("a", "b"), ("b", "a")] {
            let d = direction(&r, from, to);
            let c = &d["clock_skew"];
            let skew = c["skew_seconds"].as_f64().unwrap();
            let uncertainty = c["uncertainty_seconds"].as_f64().unwrap();
            assert!(skew.abs() < 1.0, "PG{major}: {d:#}");
            assert!((0.0..1.0).contains(&uncertainty), "PG{major}: {d:#}");
            assert!(c["samples"].as_i64().unwrap() >= 1, "{d:#}");
            assert_eq!(c["beyond_warn"], false, "{d:#}");
            assert_eq!(d["warnings"].as_array().unwrap().len(), 0, "{d:#}");
        }
        let t = text(&pgmesh(&["status"], &cfg));
        for (node, peer) in [("a", "b"), ("b", "a")] {
            let line = t
                .lines()
                .find(|l| l.starts_with(&format!("  {node}: clock skew vs {peer}: ")))
                .unwrap_or_else(|| panic!("no clock skew line for {node}:\n{t}"));
            assert!(line.ends_with(" s") && line.contains(" s ± "), "{line}");
        }

        // b's sidecar stops while a keeps writing: a -> b is down and falls behind.
        sb.take().unwrap().stop();
        q(
            &a,
            "INSERT INTO items SELECT g, repeat('y', 200) FROM generate_series(11, 2000) g",
        );
        std::thread::sleep(Duration::from_millis(200));
        let out = pgmesh(&["status", "--json"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        let r = json(&out);
        let d = direction(&r, "a", "b");
        assert_eq!(d["state"], "sidecar_down", "{d:#}");
        assert!(d["lag_bytes"].as_i64().unwrap() > 100_000, "{d:#}");
        assert!(d["lag_seconds"].as_f64().unwrap() > 0.0, "{d:#}");
        assert!(d["oldest_pending_commit_time"].is_string(), "{d:#}");
        assert_eq!(d["sidecar"]["slot_active"], false);
        assert_eq!(d["sidecar"]["apply_session"], false);
        assert_eq!(d["last_applied_lsn"], applied, "{d:#}");
        assert!(
            d["problems"][0]
                .as_str()
                .unwrap()
                .contains("start `pgmesh run --node b`"),
            "{d:#}"
        );
        assert_eq!(direction(&r, "b", "a")["state"], "streaming", "{r:#}");
        // Only the directions into a: a's sidecar is fine.
        let out = pgmesh(&["status", "--json", "--node", "a"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        assert_eq!(json(&out)["directions"].as_array().unwrap().len(), 1);
        let out = pgmesh(&["status", "--node", "b"], &cfg);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let t = text(&out);
        assert!(t.contains("sidecar down") && t.contains("UNHEALTHY"), "{t}");
        // A lag limit below the backlog is a second problem.
        let out = pgmesh(&["status", "--json", "--max-lag-bytes", "1kB"], &cfg);
        let r = json(&out);
        assert!(
            direction(&r, "a", "b")["problems"]
                .to_string()
                .contains("--max-lag-bytes"),
            "{r:#}"
        );

        // Back: it catches up and all is healthy again.
        let _sb = Sidecar::spawn(&cfg, "b", &log);
        let r = json(&status_until(&cfg, &[], 0, &log));
        assert_eq!(direction(&r, "a", "b")["state"], "streaming");

        // Usage errors exit 2.
        let out = pgmesh(&["status", "--node", "zz"], &cfg);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("known nodes: a, b"), "{}", text(&out));
        let out = pgmesh(&["status", "--max-lag-bytes", "lots"], &cfg);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[nodes.a]\n").unwrap();
        let out = pgmesh(&["status"], &bad);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));

        // An unreachable node: said clearly, exit 1, no password anywhere.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = write_config(
            dir.path(),
            "down.toml",
            &format!("{} password=s3cret-pw", a.dsn()),
            &format!(
                "host=127.0.0.1 port={closed} user=postgres dbname=postgres password=s3cret-pw"
            ),
            "",
        );
        for args in [&["status", "--json"][..], &["status"]] {
            let out = pgmesh(args, &down);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(!text(&out).contains("s3cret"), "{}", text(&out));
        }
        let r = json(&pgmesh(&["status", "--json"], &down));
        let nb = r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "b")
            .unwrap();
        assert_eq!(nb["reachable"], false);
        assert!(
            nb["error"]
                .as_str()
                .unwrap()
                .contains("cannot connect to node b"),
            "{r:#}"
        );
        assert_eq!(direction(&r, "a", "b")["state"], "unreachable");
        assert_eq!(direction(&r, "b", "a")["state"], "unreachable");
        let t = text(&pgmesh(&["status"], &down));
        assert!(
            t.contains("UNREACHABLE") && t.contains("node b unreachable"),
            "{t}"
        );
        drop(sa);
    }
}

/// Ledger rows of a node as `kind|winner` lines for key `id`.
fn ledger(c: &Cluster, id: i32) -> String {
    q(
        c,
        &format!(
            "SELECT kind || '|' || winner FROM pgmesh.conflicts WHERE key->>'id' = '{id}' ORDER BY id"
        ),
    )
}

#[test]
fn conflicts_command_filters_and_retention_prunes() {
    let _t = turn();
    for major in versions_under_test() {
        let (a, b) = (
            Cluster::start(major).unwrap(),
            Cluster::start(major).unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        // The sidecars prune every second with a one-hour retention.
        let cfg = setup(
            &a,
            &b,
            dir.path(),
            "[ledger]\nretention = \"1h\"\nprune_interval = \"1s\"\n",
        );
        let log = dir.path().join("sidecars.log");
        // The ledger is node-local: never in the publication.
        assert_eq!(
            q(&a, "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pgmesh' AND schemaname = 'pgmesh'"),
            "0"
        );

        // Provoke: both nodes change the same rows while the sidecars are stopped.
        q(
            &a,
            "INSERT INTO items SELECT g, 'v' FROM generate_series(1, 5) g",
        );
        q(
            &b,
            "INSERT INTO items SELECT g, 'v' FROM generate_series(6, 10) g",
        );
        let (sa, sb) = (
            Sidecar::spawn(&cfg, "a", &log),
            Sidecar::spawn(&cfg, "b", &log),
        );
        wait_until("initial rows", &log, || {
            [&a, &b].iter().all(|c| {
                c.psql("SELECT count(*) FROM items")
                    .is_ok_and(|n| n == "10")
            })
        });
        sa.stop();
        sb.stop();
        q(
            &a,
            "UPDATE items SET v = 'a2' WHERE id = 2; INSERT INTO items VALUES (100, 'a')",
        );
        std::thread::sleep(Duration::from_millis(5));
        q(
            &b,
            "UPDATE items SET v = 'b2' WHERE id = 2; INSERT INTO items VALUES (100, 'b')",
        );
        let (sa, sb) = (
            Sidecar::spawn(&cfg, "a", &log),
            Sidecar::spawn(&cfg, "b", &log),
        );
        wait_until("both ledgers", &log, || {
            ledger(&a, 2) == "update_origin_differs|remote"
                && ledger(&b, 2) == "update_origin_differs|local"
                && ledger(&a, 100) == "insert_exists|remote"
                && ledger(&b, 100) == "insert_exists|local"
        });

        // Every node, full rows.
        let out = pgmesh(&["conflicts", "--json"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        let rows = json(&out);
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 4, "{rows:#?}");
        let upd_a = rows
            .iter()
            .find(|r| r["node"] == "a" && r["kind"] == "update_origin_differs")
            .unwrap();
        assert_eq!(upd_a["table_name"], "public.items");
        assert_eq!(upd_a["key"]["id"], "2", "{upd_a:#}");
        assert_eq!(upd_a["winner"], "remote");
        assert_eq!(upd_a["remote_origin"], "b");
        assert_eq!(upd_a["remote_row"]["v"], "b2", "{upd_a:#}");
        assert_eq!(upd_a["local_row"]["v"], "a2", "{upd_a:#}");
        assert!(upd_a["detected_at"].as_str().unwrap().ends_with('Z'));

        // Filters.
        let count = |args: &[&str]| -> usize {
            let mut argv = vec!["conflicts", "--json"];
            argv.extend_from_slice(args);
            let out = pgmesh(&argv, &cfg);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
            json(&out).as_array().unwrap().len()
        };
        assert_eq!(count(&["--node", "a"]), 2);
        assert_eq!(
            count(&["--node", "a", "--kind", "update_origin_differs"]),
            1
        );
        assert_eq!(count(&["--kind", "insert_exists,update_origin_differs"]), 4);
        assert_eq!(count(&["--kind", "delete_missing"]), 0);
        assert_eq!(count(&["--table", "items", "--since", "1h"]), 4);
        assert_eq!(count(&["--table", "public.*"]), 4);
        assert_eq!(count(&["--table", "other"]), 0);
        assert_eq!(
            count(&["--since", "2000-01-01", "--until", "2000-01-02T00:00:00Z"]),
            0
        );
        assert_eq!(count(&["--until", "1h"]), 0);
        assert_eq!(count(&["--limit", "1"]), 1);
        let out = pgmesh(&["conflicts", "--jsonl", "--node", "b"], &cfg);
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert!(lines
            .iter()
            .all(|l| l["node"] == "b" && l["winner"] == "local"));

        let out = pgmesh(&["conflicts"], &cfg);
        let t = text(&out);
        assert!(
            t.contains("update_origin_differs") && t.contains("public.items") && t.contains("NODE"),
            "{t}"
        );
        assert!(t.contains("4 conflict(s)"), "{t}");
        let out = pgmesh(&["conflicts", "--limit", "3", "--node", "a"], &cfg);
        assert!(text(&out).contains("2 conflict(s)"), "{}", text(&out));
        let out = pgmesh(&["conflicts", "--limit", "1"], &cfg);
        assert!(text(&out).contains("1 of 4 matching"), "{}", text(&out));
        let out = pgmesh(&["conflicts", "--summary", "--json"], &cfg);
        let s = json(&out);
        assert_eq!(s.as_array().unwrap().len(), 4, "{s:#}");
        assert!(s.as_array().unwrap().iter().all(|r| r["count"] == 1));
        let t = text(&pgmesh(&["conflicts", "--summary"], &cfg));
        assert!(t.contains("total: 4 conflict(s)"), "{t}");

        // Bad input: exit 2 and say what to write.
        for (args, needle) in [
            (&["conflicts", "--kind", "bogus"][..], "known kinds"),
            (&["conflicts", "--since", "yesterday"], "RFC 3339"),
            (
                &["conflicts", "--since", "2h", "--until", "3h"],
                "before --until",
            ),
            (&["conflicts", "--table", "."], "--table"),
            (&["conflicts", "--node", "zz"], "known nodes: a, b"),
        ] {
            let out = pgmesh(args, &cfg);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
            assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
        }

        // Retention in the sidecar: records older than an hour go within a pass or two.
        q(
            &a,
            "INSERT INTO pgmesh.conflicts (detected_at, kind, table_name, key, winner, resolution)
             SELECT now() - interval '2 hours', 'insert_exists', 'public.items',
                    jsonb_build_object('id', g::text), 'remote', 'applied_as_update'
               FROM generate_series(1, 50) g",
        );
        wait_until("the sidecar's pruning", &log, || {
            a.psql("SELECT count(*) FROM pgmesh.conflicts")
                .is_ok_and(|n| n == "2")
        });
        // The sidecar logs what it pruned after the prune committed: wait for the line.
        wait_until("the sidecar's log of what it pruned", &log, || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("pruned the conflict ledger"))
        });
        // b's ledger is untouched (the prune is not replicated).
        assert_eq!(q(&b, "SELECT count(*) FROM pgmesh.conflicts"), "2");

        // On demand with the same rules: by age, then down to max_rows (oldest first).
        // (The sidecars would prune too: stopped.)
        sa.stop();
        sb.stop();
        let small = write_config(
            dir.path(),
            "small.toml",
            &a.dsn(),
            &b.dsn(),
            "[ledger]\nretention = \"30d\"\nmax_rows = 10\n",
        );
        q(
            &b,
            "INSERT INTO pgmesh.conflicts (detected_at, kind, table_name, key, winner, resolution)
             SELECT now() - interval '40 days', 'insert_exists', 'public.items',
                    jsonb_build_object('id', g::text), 'remote', 'applied_as_update'
               FROM generate_series(1, 7) g;
             INSERT INTO pgmesh.conflicts (kind, table_name, key, winner, resolution)
             SELECT 'update_missing', 'public.items', jsonb_build_object('id', g::text),
                    'remote', 'applied_as_insert'
               FROM generate_series(1, 20) g",
        );
        let newest = q(&b, "SELECT string_agg(id::text, ',' ORDER BY id) FROM (SELECT id FROM pgmesh.conflicts ORDER BY id DESC LIMIT 10) x");
        let out = pgmesh(&["conflicts", "--prune", "--node", "b", "--json"], &small);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let p = json(&out);
        assert_eq!(p[0]["node"], "b");
        assert_eq!(
            (p[0]["by_age"].as_u64(), p[0]["by_count"].as_u64()),
            (Some(7), Some(12)),
            "{p:#}"
        );
        assert_eq!(
            q(
                &b,
                "SELECT string_agg(id::text, ',' ORDER BY id) FROM pgmesh.conflicts"
            ),
            newest
        );
        let out = pgmesh(&["conflicts", "--prune", "--node", "b"], &small);
        assert!(
            text(&out)
                .contains("node b: pruned 0 record(s): 0 older than 30d, 0 beyond max_rows 10"),
            "{}",
            text(&out)
        );
        let out = pgmesh(&["conflicts", "--prune", "--kind", "truncate"], &small);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }
}

#[test]
fn pruning_deletes_in_batches_and_one_pruner_at_a_time() {
    use pgmesh::config::LedgerConfig;
    use pgmesh::ledger::prune;
    let _t = turn();
    let major = versions_under_test()[0];
    let c = Cluster::start(major).unwrap();
    q(&c, include_str!("../migrations/V1__pgmesh_schema.sql"));
    q(
        &c,
        "INSERT INTO pgmesh.conflicts (detected_at, kind, table_name, key, winner, resolution)
         SELECT now() - g * interval '1 day', 'insert_exists', 'public.t',
                jsonb_build_object('id', g::text), 'remote', 'applied'
           FROM generate_series(1, 40) g",
    );
    let rt = support::runtime();
    rt.block_on(async {
        let sql = pgmesh::sqlconn::SqlConfig::from_dsn("a", &c.dsn()).unwrap();
        let (client, _task) = pgmesh::sqlconn::connect_sql(&sql).await.unwrap();
        let cfg = LedgerConfig {
            retention: Duration::from_secs(10 * 86_400 + 3_600),
            max_rows: 4,
            ..LedgerConfig::default()
        };
        // Another pruner holds the lock: this pass skips.
        let (other, _t2) = pgmesh::sqlconn::connect_sql(&sql).await.unwrap();
        other
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('pgmesh ledger prune'))",
                &[],
            )
            .await
            .unwrap();
        let o = prune(&client, "a", &cfg, 3).await.unwrap();
        assert!(o.skipped_busy && o.total() == 0, "{o:?}");
        drop(other);
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Ids 11..40 (days 11..40) are older than the retention: 30 rows in batches of 3.
        // Of ids 1..10, max_rows keeps the 4 last inserted (highest ids; for records the
        // sidecar writes, insertion order is detection order).
        let o = prune(&client, "a", &cfg, 3).await.unwrap();
        assert_eq!(
            (o.by_age, o.by_count, o.skipped_busy),
            (30, 6, false),
            "{o:?}"
        );
        let ids: Vec<i64> = client
            .query("SELECT id FROM pgmesh.conflicts ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, [7, 8, 9, 10]);
        let o = prune(&client, "a", &cfg, 3).await.unwrap();
        assert_eq!(o.total(), 0);
    });
}
