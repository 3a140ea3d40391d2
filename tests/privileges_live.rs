//! `pgmesh run` as a least-privilege role: `pgmesh setup` as the superuser, then a role
//! that is not a superuser and a member of `pg_signal_backend` and `pg_read_all_stats`
//! only, given exactly the statements of `pgmesh setup --print-grants` (the same text
//! docs/setup.md shows), logging in with a SCRAM password. Both sidecars run as it through
//! the real binary, and rows, updates, deletes, a conflict (ledger row) and
//! unique-constraint decisions (pgmesh.outbox and a `pgmesh.kill` logical message)
//! replicate both ways. The same role fences a node (ending an application session that
//! is inside a transaction) and lifts the fence, while its sidecars keep applying. Before
//! the grants, the sidecar fails with a message that points at them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgmesh::testkit::{versions_under_test, Cluster};

const ROLE: &str = "pgmesh_run";
const PASSWORD: &str = "run-secret";
const TABLES: &[&str] = &["items", "users"];
const WAIT: Duration = Duration::from_secs(60);

const DDL: &str = "
CREATE TABLE items(id int PRIMARY KEY, v text);
CREATE TABLE users(id int PRIMARY KEY, email text NOT NULL UNIQUE, n int);
";

fn pgmesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgmesh"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

fn write_config(dir: &Path, name: &str, a: &str, b: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[nodes.a]\ndsn = \"{a}\"\n[nodes.b]\ndsn = \"{b}\"\n[replication]\ntables = [\"public.*\"]\n"
        ),
    )
    .unwrap();
    path
}

/// A dsn for the least-privilege role (password auth, see the hba lines).
fn role_dsn(c: &Cluster) -> String {
    format!(
        "host=127.0.0.1 port={} user={ROLE} password={PASSWORD} dbname=postgres",
        c.port()
    )
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

fn q(c: &Cluster, sql: &str) -> String {
    c.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn dump(c: &Cluster, table: &str) -> String {
    q(
        c,
        &format!("SELECT coalesce(string_agg(x::text, ' ' ORDER BY x::text), '') FROM {table} x"),
    )
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

/// Both nodes hold the same rows and each slot confirmed the WAL written so far.
fn wait_converged(a: &Cluster, b: &Cluster, log: &Path) {
    let marks: Vec<(&Cluster, &str, String)> = [(a, "pgmesh_b"), (b, "pgmesh_a")]
        .into_iter()
        .map(|(c, slot)| (c, slot, q(c, "SELECT pg_current_wal_lsn()")))
        .collect();
    wait_until("convergence", log, || {
        marks.iter().all(|(c, slot, mark)| {
            c.psql(&format!(
                "SELECT confirmed_flush_lsn >= '{mark}' FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .is_ok_and(|s| s == "t")
        }) && TABLES.iter().all(|t| dump(a, t) == dump(b, t))
    });
}

/// Ledger rows of a node for one table and key, as `kind|winner|resolution` lines.
fn ledger(c: &Cluster, table: &str, id: i32) -> String {
    q(
        c,
        &format!(
            "SELECT kind, winner, resolution FROM pgmesh.conflicts
              WHERE table_name = 'public.{table}' AND key->>'id' = '{id}' ORDER BY id"
        ),
    )
}

#[test]
fn sidecars_run_as_a_least_privilege_role() {
    // The script the docs show is the one this test grants.
    let script = pgmesh::setup::grants::grants_sql(ROLE).unwrap();
    let out = pgmesh(&["setup", "--print-grants", ROLE]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), script);
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/setup.md")).unwrap();
    assert!(
        docs.contains(&script),
        "docs/setup.md must show `pgmesh setup --print-grants {ROLE}` verbatim:\n{script}"
    );

    for major in versions_under_test() {
        let start = || {
            Cluster::builder(major)
                .hba_line(&format!("host all {ROLE} 127.0.0.1/32 scram-sha-256"))
                .hba_line(&format!(
                    "host replication {ROLE} 127.0.0.1/32 scram-sha-256"
                ))
                .start()
                .unwrap()
        };
        let (a, b) = (start(), start());
        for c in [&a, &b] {
            q(c, DDL);
        }
        let dir = tempfile::tempdir().unwrap();
        let su = write_config(dir.path(), "setup.toml", &a.dsn(), &b.dsn());
        let out = pgmesh(&["setup", "-c", su.to_str().unwrap()]);
        assert!(out.status.success(), "PG{major} setup: {out:?}");
        let run = write_config(dir.path(), "run.toml", &role_dsn(&a), &role_dsn(&b));
        let log = dir.path().join("sidecars.log");

        // A role that may only log in: the sidecar stops at its first privileged step
        // and says where the grants are.
        for c in [&a, &b] {
            q(
                c,
                &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
            );
        }
        let early = Sidecar::spawn(&run, "a", &log);
        wait_until("the missing-privilege error", &log, || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("42501") && l.contains("pgmesh setup --print-grants"))
        });
        drop(early);
        std::fs::write(&log, "").unwrap();

        // Exactly the printed grants, and nothing that bypasses them.
        for c in [&a, &b] {
            q(c, &script);
            assert_eq!(
                q(
                    c,
                    &format!(
                        "SELECT rolsuper, rolreplication, rolcanlogin, rolbypassrls, rolcreaterole,
                                (SELECT string_agg(roleid::regrole::text, ',' ORDER BY roleid::regrole::text)
                                   FROM pg_auth_members WHERE member = r.oid)
                           FROM pg_roles r WHERE rolname = '{ROLE}'"
                    )
                ),
                "f|t|t|f|f|pg_read_all_stats,pg_signal_backend",
                "PG{major}"
            );
        }
        let mut sidecars = vec![
            Sidecar::spawn(&run, "a", &log),
            Sidecar::spawn(&run, "b", &log),
        ];
        // Every session the sidecars hold is the role's: the walsender and the apply session.
        for c in [&a, &b] {
            wait_until("the sidecars' sessions", &log, || {
                c.psql(&format!(
                    "SELECT (SELECT count(*) FROM pg_stat_replication WHERE usename = '{ROLE}'),
                            (SELECT count(*) FROM pg_stat_activity
                              WHERE application_name = 'pgmesh apply' AND usename = '{ROLE}'),
                            (SELECT count(*) FROM pg_stat_activity
                              WHERE application_name LIKE 'pgmesh%' AND usename <> '{ROLE}')"
                ))
                .is_ok_and(|s| s == "1|1|0")
            });
        }

        // Rows, updates and deletes, both ways.
        q(
            &a,
            "INSERT INTO items VALUES (1, 'a1'), (2, 'a2'), (3, 'a3')",
        );
        q(
            &b,
            "INSERT INTO items VALUES (11, 'b1'), (12, 'b2'), (13, 'b3')",
        );
        wait_converged(&a, &b, &log);
        q(&a, "UPDATE items SET v = 'a updated' WHERE id = 11");
        q(&b, "UPDATE items SET v = 'b updated' WHERE id = 1");
        q(&a, "DELETE FROM items WHERE id = 12");
        q(&b, "DELETE FROM items WHERE id = 2");
        wait_converged(&a, &b, &log);
        assert_eq!(
            dump(&a, "items"),
            "(1,\"b updated\") (11,\"a updated\") (13,b3) (3,a3)",
            "PG{major}"
        );

        // Races made while both sidecars are stopped, so b's writes are the later ones.
        let race = |sidecars: &mut Vec<Sidecar>, on_a: &str, on_b: &str| {
            for s in sidecars.drain(..) {
                s.stop();
            }
            q(&a, on_a);
            std::thread::sleep(Duration::from_millis(5));
            q(&b, on_b);
            sidecars.push(Sidecar::spawn(&run, "a", &log));
            sidecars.push(Sidecar::spawn(&run, "b", &log));
            wait_converged(&a, &b, &log);
        };
        // A conflict: the same row updated on both nodes; b's later write wins, recorded.
        race(
            &mut sidecars,
            "UPDATE items SET v = 'race a' WHERE id = 3",
            "UPDATE items SET v = 'race b' WHERE id = 3",
        );
        assert_eq!(q(&a, "SELECT v FROM items WHERE id = 3"), "race b");
        assert_eq!(
            ledger(&a, "items", 3),
            "update_origin_differs|remote|applied",
            "PG{major}"
        );
        assert_eq!(
            ledger(&b, "items", 3),
            "update_origin_differs|local|skipped",
            "PG{major}"
        );

        // A unique-constraint decision: two keys claim one email; the later row wins, and
        // a's apply session removed its own row and queued the decision in pgmesh.outbox,
        // then sent it as a logical message.
        race(
            &mut sidecars,
            "INSERT INTO users VALUES (1, 'x@example.com', 1)",
            "INSERT INTO users VALUES (2, 'x@example.com', 2)",
        );
        assert_eq!(q(&a, "SELECT id FROM users"), "2", "PG{major}");
        assert_eq!(
            ledger(&a, "users", 1),
            "unique_exists|remote|local_row_deleted"
        );
        assert_eq!(ledger(&b, "users", 2), "unique_exists|local|skipped");
        assert_eq!(
            q(
                &a,
                "SELECT is_called, (SELECT count(*) FROM pgmesh.outbox) FROM pgmesh.outbox_id_seq"
            ),
            "t|0",
            "PG{major}: the decision went through the outbox and left it"
        );

        // A decision only b can make (a deleted its row 4 before b's row 26 reached it):
        // a learns it from b's pgmesh.kill message.
        for s in sidecars.drain(..) {
            s.stop();
        }
        q(&b, "INSERT INTO users VALUES (26, 'u@x', 1)");
        std::thread::sleep(Duration::from_millis(5));
        q(&a, "INSERT INTO users VALUES (4, 'u@x', 2)");
        q(&a, "DELETE FROM users WHERE id = 4");
        sidecars.push(Sidecar::spawn(&run, "b", &log));
        wait_until("a's writes on b", &log, || {
            b.psql("SELECT count(*) FROM users WHERE email = 'u@x'")
                .is_ok_and(|s| s == "0")
        });
        sidecars.push(Sidecar::spawn(&run, "a", &log));
        wait_converged(&a, &b, &log);
        assert_eq!(
            ledger(&b, "users", 26),
            "unique_exists|remote|local_row_deleted"
        );
        assert_eq!(
            ledger(&a, "users", 26),
            "unique_exists|remote|removed_by_peer_decision",
            "PG{major}"
        );

        fence_as_the_role(&a, &b, &log);

        for s in sidecars.drain(..) {
            s.stop();
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains("permission denied") && !text.contains(" ERROR "),
            "PG{major}: {text}"
        );
        eprintln!("PG{major}: both sidecars ran as {ROLE} with the printed grants");
    }
}

/// The role fences node a: an application session inside a transaction is ended (so
/// `pg_signal_backend` and `pg_read_all_stats` work), the application cannot write, the
/// sidecar applies b's row into a (its session is the role's own, which the fence leaves
/// alone), and the role lifts the fence again.
fn fence_as_the_role(a: &Cluster, b: &Cluster, log: &Path) {
    use pgmesh::control::fence::{fence, fence_state, unfence, FencePolicy, FenceRequest};
    q(
        a,
        "CREATE ROLE app LOGIN PASSWORD 'app-secret'; GRANT SELECT, INSERT ON items TO app",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect =
            |user: &'static str, password: &'static str| connect_as(a.port(), user, password);
        let agent = connect(ROLE, PASSWORD).await;
        let app = connect("app", "app-secret").await;
        app.batch_execute("BEGIN; INSERT INTO items VALUES (500, 'open')")
            .await
            .unwrap();
        let app_pid: i32 = app
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let policy = FencePolicy::default();
        let report = fence(
            &agent,
            &FenceRequest {
                reason: "lease lost",
                epoch: 1,
                by: "agent a",
                policy: &policy,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("fence as {ROLE}: {e}"));
        assert_eq!(report.terminated, vec![app_pid]);
        assert!(app.batch_execute("COMMIT").await.is_err());
        let app = connect("app", "app-secret").await;
        let e = app
            .batch_execute("INSERT INTO items VALUES (501, 'fenced')")
            .await
            .unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e:?}");
        q(
            b,
            "INSERT INTO items VALUES (502, 'from b while a is fenced')",
        );
        wait_until("b's row on the fenced node a", log, || {
            a.psql("SELECT count(*) FROM items WHERE id = 502")
                .is_ok_and(|n| n == "1")
        });
        assert!(fence_state(&agent).await.unwrap().fenced);
        assert!(unfence(
            &agent,
            "owns app",
            2,
            "agent a",
            pgmesh::control::fence::Permit::Unlimited
        )
        .await
        .unwrap());
        app.batch_execute("INSERT INTO items VALUES (501, 'unfenced')")
            .await
            .expect("app writes after unfence");
    });
    wait_converged(a, b, log);
    assert_eq!(
        q(
            b,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM items WHERE id >= 500"
        ),
        "501,502"
    );
}

async fn connect_as(port: u16, user: &str, password: &str) -> tokio_postgres::Client {
    let dsn = format!("host=127.0.0.1 port={port} user={user} password={password} dbname=postgres");
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    tokio::spawn(conn);
    client
}
