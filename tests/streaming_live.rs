//! Big transactions applied while they are still open on the peer (`[apply] stream_after`,
//! `apply::streamed`), against real clusters: the result is the one an unstreamed apply
//! gives (same rows, same ledger), small transactions keep flowing meanwhile, aborts
//! (whole and of a subtransaction) leave nothing, and what cannot be applied streamed is
//! read whole instead. Streaming is asked for from PostgreSQL 16 peers only.

mod support;

use std::time::{Duration, Instant};

use pgmesh::testkit::versions_under_test;
use support::{client, Mesh};

const DDL: &str = "CREATE TABLE items(id bigint PRIMARY KEY, name text, qty int, note text);";
const TABLES: &[(&str, &[&str])] = &[("public.items", &["id"])];

fn streaming_versions() -> Vec<u32> {
    versions_under_test()
        .into_iter()
        .filter(|v| *v >= 16)
        .collect()
}

/// Two nodes with 200 rows written on a and replicated, streaming big transactions past
/// 64 kB.
fn mesh(major: u32) -> Mesh {
    let mut m = Mesh::new(major, DDL, TABLES);
    m.stream_after = Some(64 << 10);
    m.start_sidecars();
    m.a.cluster
        .psql("INSERT INTO items SELECT g, 'n' || g, 0, null FROM generate_series(1, 200) g")
        .unwrap();
    m.wait_converged(&["items"], Duration::from_secs(60));
    m
}

/// Polls `query` on b until it returns `want`; panics naming `what` after a minute.
fn wait_on_b(m: &Mesh, query: &str, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.b.cluster.psql(query).unwrap() != want {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a pgmesh apply session on b holds a transaction that wrote `items`
/// (while the peer's transaction is open: only the stream session can).
fn wait_stream_session_writing(m: &Mesh) {
    wait_on_b(
        m,
        "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity s USING (pid) \
         WHERE s.application_name = 'pgmesh apply' AND l.relation = 'items'::regclass \
           AND l.mode = 'RowExclusiveLock' AND s.state = 'idle in transaction'",
        "t",
        "b's stream session never wrote the open transaction's rows",
    );
}

/// Opens a transaction on a that runs `sql` and stays open (the session is returned).
fn open_on_a(m: &Mesh, sql: &str) -> tokio_postgres::Client {
    let dsn = m.a.cluster.dsn();
    m.rt.block_on(async {
        let c = client(&dsn).await;
        c.batch_execute(&format!("BEGIN; {sql}")).await.unwrap();
        c
    })
}

/// Runs `sql` in a transaction `open_on_a` opened (its last statement ends it).
fn finish_on_a(m: &Mesh, c: &tokio_postgres::Client, sql: &str) {
    m.rt.block_on(async { c.batch_execute(sql).await.unwrap() });
}

/// Rows of b's conflict ledger.
fn ledger_rows_on_b(m: &Mesh) -> String {
    m.b.cluster
        .psql("SELECT count(*) FROM pgmesh.conflicts")
        .unwrap()
}

fn stream_origin_progress(m: &Mesh) -> String {
    m.b.cluster
        .psql("SELECT coalesce(pg_replication_origin_progress('pgmesh__stream_a', false), '0/0')")
        .unwrap()
}

#[test]
fn a_big_transaction_is_applied_while_open_with_the_result_of_a_whole_one() {
    for major in streaming_versions() {
        let mut m = mesh(major);
        // A local write on b: a's later update of that row is a decision (deferred to the
        // commit), recorded in b's ledger as for any transaction.
        m.b.cluster
            .psql("UPDATE items SET note = 'b local' WHERE id = 5")
            .unwrap();
        m.wait_converged(&["items"], Duration::from_secs(30));
        let big = open_on_a(
            &m,
            "INSERT INTO items SELECT g, 'big ' || g, 1, repeat('x', 50)
                   FROM generate_series(1000, 20999) g;
                 UPDATE items SET qty = qty + 1 WHERE id BETWEEN 1 AND 100;
                 DELETE FROM items WHERE id BETWEEN 101 AND 150;
                 SAVEPOINT gone;
                 INSERT INTO items SELECT g, 'rolled back', 9, null
                   FROM generate_series(50000, 52999) g;
                 UPDATE items SET name = 'rolled back' WHERE id BETWEEN 151 AND 160;
                 ROLLBACK TO SAVEPOINT gone;
                 INSERT INTO items SELECT g, 'after savepoint', 2, null
                   FROM generate_series(60000, 60999) g;
                 UPDATE items SET name = 'big' WHERE id = 5;",
        );
        wait_stream_session_writing(&m);
        // Small transactions that commit while it is open flow through meanwhile.
        m.a.cluster
            .psql(
                "INSERT INTO items SELECT g, 'small', 3, null FROM generate_series(90000, 90099) g",
            )
            .unwrap();
        wait_on_b(
            &m,
            "SELECT count(*) FROM items WHERE id >= 90000",
            "100",
            &format!("PG{major}: small transactions waited for the big one"),
        );
        finish_on_a(&m, &big, "COMMIT");
        m.wait_converged(&["items"], Duration::from_secs(120));
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FILTER (WHERE id >= 50000 AND id < 60000), count(*) FILTER (WHERE name = 'rolled back') FROM items")
                .unwrap(),
            "0|0",
            "PG{major}: the rolled-back subtransaction left nothing"
        );
        assert_eq!(
            m.b.cluster
                .psql("SELECT kind, winner FROM pgmesh.conflicts")
                .unwrap(),
            "update_origin_differs|remote",
            "PG{major}: one decision, over the row b wrote"
        );
        assert_ne!(
            stream_origin_progress(&m),
            "0/0",
            "PG{major}: committed under the stream origin"
        );
        // Rows it wrote are the peer's own: a's next changes to them need no decision.
        m.a.cluster
            .psql("UPDATE items SET qty = qty + 10 WHERE id IN (1, 2, 1000, 60000); DELETE FROM items WHERE id = 1001")
            .unwrap();
        m.wait_converged(&["items"], Duration::from_secs(60));
        assert_eq!(
            ledger_rows_on_b(&m),
            "1",
            "PG{major}: no decision over rows the streamed transaction wrote"
        );
        m.stop_sidecars();
    }
}

#[test]
fn an_aborted_big_transaction_leaves_nothing_and_the_next_one_streams() {
    for major in streaming_versions() {
        let mut m = mesh(major);
        let big = open_on_a(
            &m,
            "INSERT INTO items SELECT g, 'aborted', 1, repeat('x', 50)
                   FROM generate_series(1000, 15999) g;
                 DELETE FROM items WHERE id <= 100;",
        );
        wait_stream_session_writing(&m);
        finish_on_a(&m, &big, "ROLLBACK");
        m.a.cluster
            .psql(
                "INSERT INTO items SELECT g, 'kept', 2, repeat('y', 50)
                   FROM generate_series(30000, 44999) g",
            )
            .unwrap();
        m.wait_converged(&["items"], Duration::from_secs(120));
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FILTER (WHERE name = 'aborted'), count(*) FILTER (WHERE id <= 100), count(*) FILTER (WHERE name = 'kept') FROM items")
                .unwrap(),
            "0|100|15000",
            "PG{major}"
        );
        assert_eq!(ledger_rows_on_b(&m), "0", "PG{major}");
        assert_ne!(
            stream_origin_progress(&m),
            "0/0",
            "PG{major}: the second one streamed"
        );
        m.stop_sidecars();
    }
}

/// A streamed block that waits for a row a local transaction on b holds: the stall watch
/// names that session, as it does for whole transactions (it asks about the stream
/// session's backend, not the idle apply session's). One version: not version-specific.
#[test]
fn a_stalled_streamed_transaction_names_the_local_session_that_blocks_it() {
    let Some(&major) = streaming_versions().first() else {
        return;
    };
    let mut m = mesh(major);
    let (local, pid) = m.forgotten_transaction_on_b("UPDATE items SET note = note WHERE id = 5");
    let big = open_on_a(
        &m,
        "UPDATE items SET qty = qty + 1 WHERE id = 5;
         INSERT INTO items SELECT g, 'big', 1, repeat('x', 50) FROM generate_series(1000, 15999) g;",
    );
    m.wait_blocked_by_forgotten(pid);
    m.rt.block_on(local.batch_execute("ROLLBACK")).unwrap();
    finish_on_a(&m, &big, "COMMIT");
    m.wait_converged(&["items"], Duration::from_secs(120));
    assert_eq!(
        m.b.cluster
            .psql("SELECT qty FROM items WHERE id = 5")
            .unwrap(),
        "1"
    );
    m.stop_sidecars();
}

/// The walsender of a's slot for b: a restarted stream (a transaction read whole
/// instead) gets a new one.
fn walsender_for_b(m: &Mesh) -> String {
    m.a.cluster
        .psql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'pgmesh_b'")
        .unwrap()
}

/// Two big transactions open at once are both streamed by the peer: the first is applied
/// open, the second kept whole until its commit (`txn::spool`), whichever commits first,
/// with a rolled-back subtransaction inside the kept one, and without restarting the
/// stream.
#[test]
fn two_big_transactions_at_once_apply_one_open_and_keep_the_other_whole() {
    for major in streaming_versions() {
        let mut m = mesh(major);
        wait_on_b(
            &m,
            "SELECT count(*) FROM items",
            "200",
            "the first rows never arrived",
        );
        let walsender = walsender_for_b(&m);
        for (round, kept_commits_first) in [(1, true), (2, false)] {
            let (open_tag, kept_tag) = (format!("open{round}"), format!("kept{round}"));
            let base = round * 100_000;
            let open = open_on_a(
                &m,
                &format!(
                    "INSERT INTO items SELECT g, '{open_tag}', 1, repeat('x', 50)
                       FROM generate_series({base}, {base} + 9999) g"
                ),
            );
            wait_stream_session_writing(&m);
            let applied_open_before = stream_origin_progress(&m);
            let kept = open_on_a(
                &m,
                &format!(
                    "INSERT INTO items SELECT g, '{kept_tag}', 2, repeat('y', 50)
                       FROM generate_series({base} + 20000, {base} + 29999) g;
                     SAVEPOINT gone;
                     INSERT INTO items SELECT g, 'rolled back', 9, repeat('z', 50)
                       FROM generate_series({base} + 40000, {base} + 42999) g;
                     UPDATE items SET name = 'rolled back' WHERE id BETWEEN 1 AND 20;
                     ROLLBACK TO SAVEPOINT gone;
                     INSERT INTO items SELECT g, '{kept_tag}', 3, null
                       FROM generate_series({base} + 50000, {base} + 50999) g;
                     UPDATE items SET qty = qty + 1 WHERE id BETWEEN 21 AND 40"
                ),
            );
            let kept_rows = format!("SELECT count(*) FROM items WHERE name = '{kept_tag}'");
            if kept_commits_first {
                // Committed while the first is still open on both nodes: applied whole
                // at once, not after the open one.
                finish_on_a(&m, &kept, "COMMIT");
                wait_on_b(
                    &m,
                    &kept_rows,
                    "11000",
                    &format!("PG{major}: the kept transaction waited for the open one"),
                );
                finish_on_a(&m, &open, "COMMIT");
            } else {
                finish_on_a(&m, &open, "COMMIT");
                finish_on_a(&m, &kept, "COMMIT");
            }
            m.wait_converged(&["items"], Duration::from_secs(120));
            assert_eq!(m.b.cluster.psql(&kept_rows).unwrap(), "11000", "PG{major}");
            assert_ne!(
                stream_origin_progress(&m),
                applied_open_before,
                "PG{major}: the first transaction was not applied open"
            );
        }
        let summary =
            "SELECT count(*), sum(qty), count(*) FILTER (WHERE name = 'rolled back') FROM items";
        assert_eq!(
            m.b.cluster.psql(summary).unwrap(),
            m.a.cluster.psql(summary).unwrap(),
            "PG{major}"
        );
        assert_eq!(
            m.b.cluster.psql(summary).unwrap(),
            "42200|66040|0",
            "PG{major}"
        );
        assert_eq!(
            walsender_for_b(&m),
            walsender,
            "PG{major}: the stream restarted (a transaction was read whole instead)"
        );
        assert_eq!(ledger_rows_on_b(&m), "0", "PG{major}");
        m.stop_sidecars();
    }
}

/// The sidecar dies while one big transaction is applied open and a second one is kept
/// whole: both go with it, the peer sends both again after the restart, and each is
/// applied exactly once.
#[test]
fn a_crash_while_a_second_big_transaction_is_kept_loses_nothing() {
    for major in streaming_versions() {
        let mut m = mesh(major);
        let open = open_on_a(
            &m,
            "INSERT INTO items SELECT g, 'open', 1, repeat('x', 50)
               FROM generate_series(1000, 10999) g",
        );
        wait_stream_session_writing(&m);
        let kept = open_on_a(
            &m,
            "INSERT INTO items SELECT g, 'kept', 2, repeat('y', 50)
               FROM generate_series(20000, 29999) g;
             UPDATE items SET qty = qty + 5 WHERE id <= 100",
        );
        // Both are being streamed to b's sidecar (the second one kept there).
        support::live::wait_for(
            &m.a.cluster,
            "SELECT stream_txns >= 2 FROM pg_stat_replication_slots WHERE slot_name = 'pgmesh_b'",
            "t",
            &format!("PG{major}: the peer streaming the second transaction"),
            Duration::from_secs(60),
        );
        m.kill_sidecars();
        finish_on_a(&m, &kept, "COMMIT");
        finish_on_a(
            &m,
            &open,
            "UPDATE items SET qty = qty + 1 WHERE id <= 50; COMMIT",
        );
        m.start_sidecars();
        m.wait_converged(&["items"], Duration::from_secs(120));
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FILTER (WHERE name = 'open'), count(*) FILTER (WHERE name = 'kept'), sum(qty) FILTER (WHERE id <= 100) FROM items")
                .unwrap(),
            "10000|10000|550",
            "PG{major}"
        );
        assert_eq!(ledger_rows_on_b(&m), "0", "PG{major}");
        m.stop_sidecars();
    }
}

/// The sidecar dies while the stream session holds half a big transaction: the open
/// downstream transaction goes with it, and after a restart the peer sends the
/// transaction again from its first block; it is applied exactly once.
#[test]
fn a_crash_in_the_middle_of_a_streamed_transaction_loses_nothing() {
    for major in streaming_versions() {
        let mut m = mesh(major);
        let big = open_on_a(
            &m,
            "INSERT INTO items SELECT g, 'big', 1, repeat('x', 50)
                   FROM generate_series(1000, 15999) g;
                 UPDATE items SET qty = qty + 5 WHERE id <= 100;",
        );
        wait_stream_session_writing(&m);
        m.kill_sidecars();
        finish_on_a(
            &m,
            &big,
            "INSERT INTO items SELECT g, 'big', 1, null FROM generate_series(16000, 16999) g;
             COMMIT",
        );
        m.start_sidecars();
        m.wait_converged(&["items"], Duration::from_secs(120));
        assert_eq!(
            m.b.cluster
                .psql("SELECT count(*) FILTER (WHERE name = 'big'), sum(qty) FILTER (WHERE id <= 100) FROM items")
                .unwrap(),
            "16000|500",
            "PG{major}"
        );
        assert_eq!(ledger_rows_on_b(&m), "0", "PG{major}");
        m.stop_sidecars();
    }
}
