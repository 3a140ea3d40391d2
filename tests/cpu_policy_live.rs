//! `[apply] cpu_policy` (`sidecar/scheduling.rs`) on a real `pgmesh run`: under `auto`
//! its threads run under `SCHED_BATCH` while the direction is behind and under the normal
//! policy once it caught up; while it discards a flood of changes from elsewhere (a
//! PostgreSQL 15 peer sends back what this node applied); under `batch` always.

mod support;

use std::time::{Duration, Instant};

use pgmesh::sidecar::scheduling::{process_policies, SCHED_BATCH, SCHED_OTHER};
use pgmesh::testkit::{versions_under_test, Cluster};
use support::live::{nodes_with_setup, turn, wait_apply_blocked, wait_for, Sidecar};

const WAIT: Duration = Duration::from_secs(60);

/// Waits until every thread of `pid` runs under `policy`.
fn wait_policy(pid: u32, policy: i32, what: &str, log: &Sidecar) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = process_policies(pid);
        if !now.is_empty() && now.iter().all(|&p| p == policy) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: thread policies {now:?}\n{}",
            log.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two nodes with table `t`, node b's `pgmesh run` (with `env`) and row 1 applied on b.
fn mesh_with_row_one(env: &[(String, String)]) -> (Cluster, Cluster, tempfile::TempDir, Sidecar) {
    // The policy does not depend on the server: the first version is enough.
    let major = versions_under_test()[0];
    let (a, b, dir, cfg) = nodes_with_setup(
        major,
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
        "\"public.t\"",
    );
    let sidecar = Sidecar::spawn_with_env(&cfg, "b", dir.path().join("b.log"), env);
    a.psql("INSERT INTO t VALUES (1, 'first')").unwrap();
    wait_for(
        &b,
        "SELECT v FROM t WHERE id = 1",
        "first",
        "b has row 1",
        WAIT,
    );
    (a, b, dir, sidecar)
}

#[test]
fn auto_runs_the_threads_under_batch_while_behind_and_normal_once_caught_up() {
    let _turn = turn();
    let (a, b, _dir, sidecar) = mesh_with_row_one(&[]);
    let pid = sidecar.pid();
    wait_policy(
        pid,
        SCHED_OTHER,
        "the threads run under the normal policy",
        &sidecar,
    );

    // A local transaction on b holds row 1: the direction falls behind on a's next
    // change of it while a goes on committing.
    let rt = support::runtime();
    let holder = rt.block_on(async {
        let c = support::client(&b.dsn()).await;
        c.batch_execute("BEGIN; SELECT 1 FROM t WHERE id = 1 FOR UPDATE")
            .await
            .unwrap();
        c
    });
    a.psql("UPDATE t SET v = 'second' WHERE id = 1").unwrap();
    a.psql("INSERT INTO t SELECT i, 'more' FROM generate_series(2, 100) i")
        .unwrap();
    wait_apply_blocked(&b, "the apply waits for row 1", WAIT);
    wait_policy(
        pid,
        SCHED_BATCH,
        "the threads run under SCHED_BATCH",
        &sidecar,
    );
    sidecar.wait_log(
        "catching up: the sidecar's threads run under SCHED_BATCH",
        WAIT,
    );

    rt.block_on(holder.batch_execute("COMMIT")).unwrap();
    wait_for(
        &b,
        "SELECT count(*) FROM t WHERE v = 'more'",
        "99",
        "b caught up",
        WAIT,
    );
    wait_policy(
        pid,
        SCHED_OTHER,
        "the threads run under the normal policy again",
        &sidecar,
    );
    sidecar.wait_log(
        "caught up: the sidecar's threads run under the normal policy",
        WAIT,
    );
    assert_eq!(
        b.psql("SELECT v FROM t WHERE id = 1").unwrap(),
        "second",
        "row 1 carries a's last write"
    );
}

#[test]
fn batch_runs_the_threads_under_batch_from_the_start() {
    let _turn = turn();
    let env = [("PGMESH_APPLY_CPU_POLICY".to_string(), "batch".to_string())];
    let (_a, _b, _dir, sidecar) = mesh_with_row_one(&env);
    wait_policy(
        sidecar.pid(),
        SCHED_BATCH,
        "the threads run under SCHED_BATCH",
        &sidecar,
    );
}

/// PostgreSQL 15 sends back what node b applied from a; node a's sidecar drops it (the
/// origin filter). A flood of those switches a's threads to `SCHED_BATCH` and, once it
/// is over, back.
#[test]
fn auto_runs_the_threads_under_batch_while_discarding_a_flood_from_elsewhere() {
    if !versions_under_test().contains(&15) {
        eprintln!("skipped: only PostgreSQL 15 sends changes back (PGMESH_TEST_PG has no 15)");
        return;
    }
    let _turn = turn();
    let (a, b, dir, cfg) = nodes_with_setup(
        15,
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
        "\"public.t\"",
    );
    let _into_b = Sidecar::spawn(&cfg, "b", dir.path().join("b.log"));
    let into_a = Sidecar::spawn(&cfg, "a", dir.path().join("a.log"));
    wait_policy(
        into_a.pid(),
        SCHED_OTHER,
        "a's threads run under the normal policy",
        &into_a,
    );
    // Rows in bursts until a's sidecar saw enough of them come back at once (the rate is
    // measured five times a second).
    const ENTERED: &str =
        "discarding changes from elsewhere: the sidecar's threads run under SCHED_BATCH";
    let deadline = Instant::now() + WAIT;
    let mut rows = 0;
    while !into_a.log_text().contains(ENTERED) {
        assert!(
            Instant::now() < deadline,
            "a's sidecar never switched while discarding {rows} rows applied on b:\n{}",
            into_a.log_text()
        );
        insert_rows(&a, rows + 1, rows + 50_000);
        rows += 50_000;
        wait_for(
            &b,
            "SELECT count(*) FROM t",
            &rows.to_string(),
            "b applied the burst",
            WAIT,
        );
    }
    into_a.wait_log(
        "done discarding changes from elsewhere: the sidecar's threads run under the normal policy",
        WAIT,
    );
    wait_policy(
        into_a.pid(),
        SCHED_OTHER,
        "a's threads run under the normal policy again",
        &into_a,
    );
    assert_eq!(
        a.psql("SELECT count(*) FROM t").unwrap(),
        rows.to_string(),
        "nothing came back into a"
    );
}

fn insert_rows(c: &Cluster, from: u32, to: u32) {
    c.psql(&format!(
        "INSERT INTO t SELECT i, 'x' FROM generate_series({from}, {to}) i"
    ))
    .unwrap();
}
