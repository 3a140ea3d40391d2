//! Fencing at the database (`pgmesh::control::fence`) against real PostgreSQL, on nodes set
//! up by `pgmesh setup`: an application role cannot write a fenced node whatever it sets,
//! sessions that were inside a transaction are ended (idle ones stay), the fence survives
//! a crash restart, the sidecars' apply (as the least-privilege role, which also fences)
//! keeps bringing the peer's rows in, and `unguarded_tables` finds a table whose trigger
//! is gone.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use pgmesh::control::fence::{
    fence, fence_state, unfence, unguarded_tables, FencePolicy, FenceReport, FenceRequest, Permit,
};
use pgmesh::testkit::{versions_under_test, Cluster};
use support::cli::{pgmesh, text};
use support::live::{nodes_with_setup, turn, wait_for, Sidecar};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const DDL: &str = "
CREATE TABLE items (id int PRIMARY KEY, v text);
CREATE TABLE other (id int PRIMARY KEY);
";
const WAIT: Duration = Duration::from_secs(60);
const RUN_ROLE: &str = "pgmesh_run";

/// Roles of the application side on one node: `app` writes, `helper` is a role app may
/// SET ROLE to, `reporting` is another application, `ops` is exempt from the fence.
const ROLES: &str = "
CREATE ROLE app LOGIN;
CREATE ROLE helper NOLOGIN;
GRANT helper TO app;
CREATE ROLE reporting LOGIN;
CREATE ROLE ops LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON items, other TO app, helper, reporting, ops;
";

fn dsn(c: &Cluster, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname=postgres",
        c.port()
    )
}

async fn session(c: &Cluster, user: &str) -> Client {
    support::client(&dsn(c, user)).await
}

async fn pid(s: &Client) -> i32 {
    s.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn request<'a>(reason: &'a str, epoch: i64, policy: &'a FencePolicy) -> FenceRequest<'a> {
    FenceRequest {
        reason,
        epoch,
        by: "agent a",
        policy,
    }
}

/// `fence` with its wall time printed (the failover path waits for it).
async fn timed_fence(client: &Client, req: &FenceRequest<'_>, what: &str) -> FenceReport {
    let t = Instant::now();
    let report = fence(client, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!(
        "{what}: fence() took {:?}, ended {:?}",
        t.elapsed(),
        report.terminated
    );
    report
}

/// The statement failed on the fence: SQLSTATE 25006 and pgmesh's message (not
/// PostgreSQL's own read-only error).
fn assert_fenced<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>, what: &str) {
    let e = r.expect_err(what);
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {e:?}"));
    assert_eq!(
        db.code(),
        &SqlState::READ_ONLY_SQL_TRANSACTION,
        "{what}: {db:?}"
    );
    let m = db.message();
    assert!(
        m.starts_with("pgmesh: node a is fenced (lease lost, since 20")
            && m.ends_with(
                "): this region does not own a write endpoint; write through the endpoint's current owner"
            ),
        "{what}: {m}"
    );
}

/// The session was ended by the fence: its next statement fails on the connection.
fn assert_ended<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>, what: &str) {
    let e = r.expect_err(what);
    assert!(
        e.is_closed() || e.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "{what}: want a closed connection, got {e:?}"
    );
}

/// Waits until `sql` (one value) on `client` returns `want`.
async fn wait_value(client: &Client, sql: &str, want: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got: Option<String> = client.query_one(sql, &[]).await.unwrap().get(0);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {sql} gave {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn fence_holds_application_writes_and_ends_open_transactions() {
    let _t = turn();
    let rt = support::runtime();
    for major in versions_under_test() {
        let (a, _b, _dir, cfg) = nodes_with_setup(major, DDL, "\"public.*\"");
        a.psql(ROLES).unwrap();
        a.psql("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
            .unwrap();
        rt.block_on(holds_writes(&a, &cfg, major));
    }
}

async fn holds_writes(a: &Cluster, cfg: &Path, major: u32) {
    let agent = session(a, "postgres").await;
    let app = session(a, "app").await;
    app.batch_execute("INSERT INTO items VALUES (10, 'unfenced')")
        .await
        .expect("unfenced, app writes");
    let fresh = fence_state(&agent).await.unwrap();
    assert_eq!(
        fresh,
        pgmesh::control::fence::FenceState {
            server_now_ms: fresh.server_now_ms,
            ..Default::default()
        },
        "PG{major}: a fresh node is not fenced"
    );
    assert_eq!(
        unguarded_tables(&agent).await.unwrap(),
        Vec::<String>::new()
    );

    // Sessions of app as the fence comes: one wrote and has not committed, one only read
    // in REPEATABLE READ (its snapshot predates the flag), one is idle.
    let writer = session(a, "app").await;
    writer
        .batch_execute("BEGIN; INSERT INTO items VALUES (100, 'uncommitted')")
        .await
        .unwrap();
    let reader = session(a, "app").await;
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM items")
        .await
        .unwrap();
    let idle = session(a, "app").await;
    let (writer_pid, reader_pid, idle_pid) =
        (pid(&writer).await, pid(&reader).await, pid(&idle).await);
    // A few more sessions in a transaction, for the timing.
    let mut busy = Vec::new();
    for _ in 0..8 {
        let s = session(a, "app").await;
        s.batch_execute("BEGIN; SELECT 1").await.unwrap();
        busy.push(s);
    }

    let policy = FencePolicy {
        roles: None,
        exempt: vec!["ops".into()],
    };
    let report = timed_fence(
        &agent,
        &request("lease lost", 7, &policy),
        &format!("PG{major} first fence, 10 sessions in a transaction"),
    )
    .await;
    assert!(!report.was_fenced);
    assert!(report.still_running.is_empty(), "{report:?}");
    assert_eq!(report.terminated.len(), 10, "{report:?}");
    assert!(
        report.terminated.contains(&writer_pid)
            && report.terminated.contains(&reader_pid)
            && !report.terminated.contains(&idle_pid),
        "PG{major}: {report:?}"
    );
    assert_ended(writer.batch_execute("COMMIT").await, "the writer's COMMIT");
    assert_ended(
        reader
            .batch_execute("INSERT INTO items VALUES (101, 'rr')")
            .await,
        "the REPEATABLE READ reader's next statement",
    );
    assert_eq!(
        a.psql("SELECT count(*) FROM items WHERE id IN (100, 101)")
            .unwrap(),
        "0",
        "PG{major}: the uncommitted insert never appears"
    );
    assert_eq!(
        idle.query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("an idle session survives and reads")
            .get::<_, i64>(0),
        3
    );
    assert_fenced(
        idle.batch_execute("INSERT INTO items VALUES (11, 'x')")
            .await,
        "the idle session's insert",
    );

    // Every kind of write, and every way a client might try to turn read-only off.
    let app = session(a, "app").await;
    for (sql, what) in [
        ("INSERT INTO items VALUES (12, 'x')", "INSERT"),
        ("UPDATE items SET v = 'x' WHERE id = 1", "UPDATE"),
        ("DELETE FROM items WHERE id = 1", "DELETE"),
        ("TRUNCATE other", "TRUNCATE"),
        (
            "INSERT INTO items VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET v = 'y'",
            "upsert",
        ),
        (
            "MERGE INTO items USING (VALUES (13)) v(id) ON items.id = v.id WHEN NOT MATCHED THEN INSERT VALUES (v.id, 'm')",
            "MERGE",
        ),
        (
            "SET default_transaction_read_only = off; INSERT INTO items VALUES (14, 'x')",
            "after SET default_transaction_read_only = off",
        ),
        (
            "BEGIN; SET transaction_read_only = off; INSERT INTO items VALUES (15, 'x')",
            "after SET transaction_read_only = off",
        ),
        (
            "BEGIN READ WRITE; INSERT INTO items VALUES (16, 'x')",
            "in BEGIN READ WRITE",
        ),
        (
            "SET ROLE helper; INSERT INTO items VALUES (17, 'x')",
            "after SET ROLE helper",
        ),
    ] {
        assert_fenced(app.batch_execute(sql).await, &format!("PG{major}: {what}"));
        app.batch_execute("ROLLBACK; RESET ROLE").await.unwrap();
    }
    assert_eq!(
        a.psql("SELECT count(*) FROM items WHERE id BETWEEN 11 AND 17")
            .unwrap(),
        "0"
    );
    // Superusers and exempt roles write.
    a.psql("INSERT INTO items VALUES (20, 'superuser')")
        .unwrap();
    let ops = session(a, "ops").await;
    ops.batch_execute(
        "INSERT INTO items VALUES (21, 'ops'); UPDATE items SET v = 'ops' WHERE id = 2",
    )
    .await
    .expect("the exempt role writes");

    let state = fence_state(&agent).await.unwrap();
    assert!(state.fenced);
    assert_eq!(
        (
            state.reason.as_deref(),
            state.epoch,
            state.changed_by.as_deref()
        ),
        (Some("lease lost"), Some(7), Some("agent a"))
    );
    assert!(
        state
            .changed_at
            .as_deref()
            .is_some_and(|t| t.ends_with('Z')),
        "{state:?}"
    );

    // Fencing again is idempotent and ends the sessions that opened a transaction since.
    let late = session(a, "app").await;
    late.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let late_pid = pid(&late).await;
    let again = timed_fence(
        &agent,
        &request("lease lost", 7, &policy),
        &format!("PG{major} fence again"),
    )
    .await;
    assert!(again.was_fenced);
    assert_eq!(again.terminated, vec![late_pid]);
    assert_ended(
        late.batch_execute("SELECT 1").await,
        "a later session in a transaction",
    );

    // A crash restart keeps the fence.
    a.restart_immediate().unwrap();
    let agent = session(a, "postgres").await;
    assert!(
        fence_state(&agent).await.unwrap().fenced,
        "PG{major}: fenced after restart"
    );
    let app = session(a, "app").await;
    assert_fenced(
        app.batch_execute("INSERT INTO items VALUES (30, 'x')")
            .await,
        "insert after the restart",
    );

    // Unfence: app writes again; the state says who lifted it and why.
    assert!(
        unfence(&agent, "owns app-eu", 9, "agent a", Permit::Unlimited)
            .await
            .unwrap()
    );
    assert!(
        !unfence(&agent, "owns app-eu", 9, "agent a", Permit::Unlimited)
            .await
            .unwrap()
    );
    app.batch_execute("INSERT INTO items VALUES (30, 'unfenced again')")
        .await
        .expect("app writes after unfence");
    let state = fence_state(&agent).await.unwrap();
    assert_eq!(
        (
            state.fenced,
            state.reason.as_deref(),
            state.epoch,
            state.changed_by.as_deref()
        ),
        (false, Some("owns app-eu"), Some(9), Some("agent a"))
    );

    // A fence for some roles only: app is held and its open transaction ended,
    // reporting writes and keeps its transaction.
    let only_app = FencePolicy {
        roles: Some(vec!["app".into()]),
        exempt: Vec::new(),
    };
    let app_tx = session(a, "app").await;
    app_tx.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let app_tx_pid = pid(&app_tx).await;
    let reporting_tx = session(a, "reporting").await;
    reporting_tx
        .batch_execute("BEGIN; INSERT INTO items VALUES (40, 'reporting in tx')")
        .await
        .unwrap();
    let report = timed_fence(
        &agent,
        &request("lease lost", 10, &only_app),
        &format!("PG{major} fence of app only"),
    )
    .await;
    assert_eq!(
        report.terminated,
        vec![app_tx_pid],
        "PG{major}: only app's session"
    );
    assert_ended(
        app_tx.batch_execute("SELECT 1").await,
        "app's open transaction",
    );
    reporting_tx
        .batch_execute("INSERT INTO items VALUES (41, 'reporting'); COMMIT")
        .await
        .expect("reporting is not fenced");
    assert_fenced(
        app.batch_execute("INSERT INTO items VALUES (42, 'x')")
            .await,
        "app under a fence of app only",
    );
    let reporting = session(a, "reporting").await;
    reporting
        .batch_execute("INSERT INTO items VALUES (43, 'r')")
        .await
        .expect("reporting writes");
    assert!(
        unfence(&agent, "owns app-eu", 11, "operator", Permit::Unlimited)
            .await
            .unwrap()
    );

    // A table whose trigger was dropped or disabled is unguarded; setup guards it again.
    a.psql("DROP TRIGGER pgmesh_fence ON items; ALTER TABLE other DISABLE TRIGGER pgmesh_fence")
        .unwrap();
    assert_eq!(
        unguarded_tables(&agent).await.unwrap(),
        vec!["public.items".to_string(), "public.other".to_string()]
    );
    let out = pgmesh(&["setup"], cfg);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("created fence trigger on public.items")
            && t.contains("enabled fence trigger on public.other (was tgenabled = 'D')"),
        "{t}"
    );
    assert_eq!(
        unguarded_tables(&agent).await.unwrap(),
        Vec::<String>::new()
    );

    // A table that starts replicating through `pgmesh ddl` is guarded at once.
    let out = pgmesh(&["ddl", "CREATE TABLE extra_t (id int PRIMARY KEY)"], cfg);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("created fence trigger on public.extra_t"),
        "{}",
        text(&out)
    );
    assert_eq!(
        unguarded_tables(&agent).await.unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn sidecars_apply_into_a_fenced_node() {
    let _t = turn();
    let rt = support::runtime();
    let script = pgmesh::setup::grants::grants_sql(RUN_ROLE).unwrap();
    for major in versions_under_test() {
        let (a, b, dir, _cfg) = nodes_with_setup(major, DDL, "\"public.*\"");
        for c in [&a, &b] {
            c.psql(&format!("CREATE ROLE {RUN_ROLE} LOGIN")).unwrap();
            c.psql(&script).unwrap();
            c.psql(ROLES).unwrap();
        }
        // The sidecars and the agent run as the least-privilege role.
        let run = dir.path().join("run.toml");
        std::fs::write(
            &run,
            format!(
                "[nodes.a]\ndsn = \"{}\"\n[nodes.b]\ndsn = \"{}\"\n[replication]\ntables = [\"public.*\"]\n",
                dsn(&a, RUN_ROLE),
                dsn(&b, RUN_ROLE)
            ),
        )
        .unwrap();
        let mut sidecars = [
            Sidecar::spawn(&run, "a", dir.path().join("a.log")),
            Sidecar::spawn(&run, "b", dir.path().join("b.log")),
        ];
        let apply_sql = format!(
            "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE application_name = 'pgmesh apply' AND usename = '{RUN_ROLE}'"
        );
        for c in [&a, &b] {
            wait_for(
                c,
                &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmesh apply' AND usename = '{RUN_ROLE}'"),
                "1",
                "the sidecar's apply session",
                WAIT,
            );
        }
        let apply_pid = a.psql(&apply_sql).unwrap();
        rt.block_on(async {
            let agent = session(&a, RUN_ROLE).await;
            let app_tx = session(&a, "app").await;
            app_tx
                .batch_execute("BEGIN; INSERT INTO items VALUES (99, 'never')")
                .await
                .unwrap();
            let app_tx_pid = pid(&app_tx).await;
            let policy = FencePolicy {
                roles: None,
                exempt: vec!["ops".into()],
            };
            let report = timed_fence(
                &agent,
                &request("lease lost", 3, &policy),
                &format!("PG{major} fence as {RUN_ROLE}"),
            )
            .await;
            assert_eq!(report.terminated, vec![app_tx_pid], "PG{major}");
            assert_ended(
                app_tx.batch_execute("COMMIT").await,
                "app's open transaction",
            );

            // The peer's rows arrive on the fenced node; its own superuser and exempt
            // writes leave it; application writes do not happen.
            b.psql("INSERT INTO items VALUES (1, 'from b')").unwrap();
            a.psql("INSERT INTO items VALUES (2, 'superuser on a')")
                .unwrap();
            let ops = session(&a, "ops").await;
            ops.batch_execute("INSERT INTO items VALUES (3, 'ops on a')")
                .await
                .unwrap();
            let app = session(&a, "app").await;
            assert_fenced(
                app.batch_execute("INSERT INTO items VALUES (4, 'app on a')")
                    .await,
                "app on the fenced node",
            );
            let on_b = session(&b, "postgres").await;
            let ids = "SELECT string_agg(id::text, ',' ORDER BY id) FROM items";
            wait_value(&agent, ids, "1,2,3", "b's row applied on the fenced node a").await;
            wait_value(&on_b, ids, "1,2,3", "a's exempt writes on b").await;
            assert_eq!(
                a.psql(&apply_sql).unwrap(),
                apply_pid,
                "PG{major}: the fence left the apply session of its own role alone"
            );

            assert!(
                unfence(&agent, "owns app-eu", 4, "agent a", Permit::Unlimited)
                    .await
                    .unwrap()
            );
            app.batch_execute("INSERT INTO items VALUES (4, 'app on a')")
                .await
                .expect("app writes after unfence");
            wait_value(&on_b, ids, "1,2,3,4", "a's write after unfence on b").await;
        });
        support::live::wait_converged(&a, &b, &["items"], WAIT);
        for s in &mut sidecars {
            assert!(s.running(), "PG{major}: sidecar stopped:\n{}", s.log_text());
        }
    }
}

/// An agent on another host than its database: the server's clock 3 s ahead of the
/// agent's (libfaketime on the server). The write permit is written in the server's
/// clock through the measured offset, so it lasts what the agent meant; counted on the
/// agent's clock it would end 3 s early (the clock-skew drill's first runs saw a
/// region's writes refused that way).
#[test]
fn a_permit_lasts_what_the_agent_meant_when_the_servers_clock_is_ahead() {
    use pgmesh::control::fence::clock_offset_ms;
    let _turn = turn();
    for major in versions_under_test() {
        let (dir, clock) = support::live::shiftable_clock();
        clock.set_offset_ms(3_000).unwrap();
        let a = support::live::cluster_on(major, &clock);
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql(DDL).unwrap();
            c.psql(ROLES).unwrap();
        }
        let cfg = support::cli::write_config(dir.path(), &a, &b, "\"public.items\"");
        let out = pgmesh(&["setup"], &cfg);
        assert_eq!(
            out.status.code(),
            Some(0),
            "PG{major} setup: {}",
            text(&out)
        );
        support::runtime().block_on(async {
            let agent = session(&a, "postgres").await;
            let state = fence_state(&agent).await.unwrap();
            let offset = clock_offset_ms(state.server_now_ms, pgmesh::control::keys::now_ms());
            assert!(
                (2_500..=3_500).contains(&offset),
                "PG{major}: measured offset {offset} ms, the server is 3 s ahead"
            );
            for (offset, lasts) in [(0, 0..=1_200), (offset, 3_500..=4_000)] {
                unfence(
                    &agent,
                    "owns app-eu",
                    1,
                    "agent a",
                    Permit::until(4_000, offset),
                )
                .await
                .unwrap();
                let left = fence_state(&agent).await.unwrap().permit_left_ms.unwrap();
                assert!(
                    lasts.contains(&left),
                    "PG{major}: with offset {offset} ms a 4 s permit has {left} ms left"
                );
            }
            let app = session(&a, "app").await;
            app.batch_execute("INSERT INTO items VALUES (1, 'written')")
                .await
                .unwrap();
        });
    }
}
