//! `[apply] cpu_policy` (`sidecar/scheduling.rs`) on a real `pgmesh run`: under `auto`
//! its threads run under `SCHED_BATCH` while the direction is behind and under the normal
//! policy once it caught up; under `batch` always.

mod support;

use std::time::{Duration, Instant};

use pgmesh::sidecar::scheduling::{process_policies, SCHED_BATCH, SCHED_OTHER};
use pgmesh::testkit::versions_under_test;
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
fn mesh_with_row_one(
    env: &[(String, String)],
) -> (
    pgmesh::testkit::Cluster,
    pgmesh::testkit::Cluster,
    tempfile::TempDir,
    Sidecar,
) {
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
