//! Faults that need an operator stop one direction with its position kept and resume by
//! themselves once fixed: a column missing on one node, a dropped slot. Writes made while
//! a direction is stopped are not lost (except, necessarily, while its slot is gone).

mod support;

use std::time::{Duration, Instant};

use pgmesh::testkit::{versions_under_test, Cluster};
use support::Mesh;

const TABLES: &[(&str, &[&str])] = &[("public.items", &["id"])];
/// How long a direction may take to meet a fault and report it.
const STOP: Duration = Duration::from_secs(30);

fn wait_for(c: &Cluster, sql: &str, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if c.psql(sql).ok().as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn missing_column_stops_the_direction_until_added() {
    for major in versions_under_test() {
        let mut m = Mesh::new(
            major,
            "CREATE TABLE items(id int PRIMARY KEY, v text)",
            TABLES,
        );
        m.a.cluster
            .psql("ALTER TABLE items ADD COLUMN extra text")
            .unwrap();
        m.start_sidecars();
        m.a.cluster
            .psql("INSERT INTO items VALUES (1, 'one', 'more')")
            .unwrap();
        m.b.cluster
            .psql("INSERT INTO items VALUES (2, 'two')")
            .unwrap();
        // b → a flows (a has every column b sends); a → b is held, nothing applied half.
        wait_for(
            &m.a.cluster,
            "SELECT count(*) FROM items",
            "2",
            "b's row on a",
        );
        // The direction into b stopped on the column, saying so, and applied nothing.
        m.wait_direction("b", "stopped on the missing column", STOP, |r| {
            r.last_error.as_deref().is_some_and(|e| e.contains("extra"))
        });
        assert_eq!(
            m.b.cluster.psql("SELECT count(*) FROM items").unwrap(),
            "1",
            "PG{major}"
        );
        // The fix: add the column; the held row then arrives with it.
        m.b.cluster
            .psql("ALTER TABLE items ADD COLUMN extra text")
            .unwrap();
        wait_for(
            &m.b.cluster,
            "SELECT extra FROM items WHERE id = 1",
            "more",
            "a's row on b after the fix",
        );
        m.stop_sidecars();
    }
}

#[test]
fn dropped_slot_stops_the_direction_until_recreated() {
    for major in versions_under_test() {
        let mut m = Mesh::new(
            major,
            "CREATE TABLE items(id int PRIMARY KEY, v text)",
            TABLES,
        );
        m.start_sidecars();
        m.a.cluster
            .psql("INSERT INTO items VALUES (1, 'before')")
            .unwrap();
        wait_for(
            &m.b.cluster,
            "SELECT count(*) FROM items",
            "1",
            "row 1 on b",
        );
        // Drop the slot b reads on a (its walsender is terminated first, and again if the
        // sidecar reconnects in between).
        let deadline = Instant::now() + Duration::from_secs(30);
        while m
            .a
            .cluster
            .psql(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                  WHERE slot_name = 'pgmesh_b' AND active_pid IS NOT NULL;
                 SELECT pg_drop_replication_slot('pgmesh_b');",
            )
            .is_err()
        {
            assert!(Instant::now() < deadline, "could not drop the slot");
            std::thread::sleep(Duration::from_millis(20));
        }
        m.wait_direction("b", "stopped on the dropped slot", STOP, |r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("pgmesh_b"))
        });
        // Recreate it (what `pgmesh setup` does); streaming resumes from the new slot.
        m.a.cluster
            .psql("SELECT pg_create_logical_replication_slot('pgmesh_b', 'pgoutput')")
            .unwrap();
        m.a.cluster
            .psql("INSERT INTO items VALUES (2, 'after')")
            .unwrap();
        wait_for(
            &m.b.cluster,
            "SELECT v FROM items WHERE id = 2",
            "after",
            "row 2 on b after the slot came back",
        );
        // The other direction never stopped.
        m.b.cluster
            .psql("INSERT INTO items VALUES (3, 'from b')")
            .unwrap();
        wait_for(
            &m.a.cluster,
            "SELECT v FROM items WHERE id = 3",
            "from b",
            "row 3 on a",
        );
        m.stop_sidecars();
    }
}

#[test]
fn missing_table_stops_the_direction_until_created() {
    for major in versions_under_test() {
        let mut m = Mesh::new(
            major,
            "CREATE TABLE items(id int PRIMARY KEY, v text)",
            TABLES,
        );
        // A table published on a that b does not have.
        m.a.cluster
            .psql("CREATE TABLE other(id int PRIMARY KEY, v text); ALTER PUBLICATION pgmesh ADD TABLE other")
            .unwrap();
        m.start_sidecars();
        m.a.cluster
            .psql("BEGIN; INSERT INTO other VALUES (1, 'x'); INSERT INTO items VALUES (1, 'held'); COMMIT")
            .unwrap();
        m.wait_direction("b", "stopped on the missing table", STOP, |r| {
            r.last_error.as_deref().is_some_and(|e| e.contains("other"))
        });
        // Nothing of that transaction is applied half: items waits with it.
        assert_eq!(
            m.b.cluster.psql("SELECT count(*) FROM items").unwrap(),
            "0",
            "PG{major}"
        );
        m.b.cluster
            .psql("CREATE TABLE other(id int PRIMARY KEY, v text)")
            .unwrap();
        wait_for(
            &m.b.cluster,
            "SELECT v FROM items WHERE id = 1",
            "held",
            "the held transaction on b",
        );
        assert_eq!(m.b.cluster.psql("SELECT v FROM other").unwrap(), "x");
        m.stop_sidecars();
    }
}

/// Both directions running on the first version under test, with a's row 1 (`one`) on
/// b: for the faults that are not version-specific.
fn replicating_one_row() -> Option<Mesh> {
    let &major = versions_under_test().first()?;
    let mut m = Mesh::new(
        major,
        "CREATE TABLE items(id int PRIMARY KEY, v text)",
        TABLES,
    );
    m.start_sidecars();
    m.a.cluster
        .psql("INSERT INTO items VALUES (1, 'one')")
        .unwrap();
    wait_for(&m.b.cluster, "SELECT v FROM items", "one", "a's row on b");
    Some(m)
}

/// A local transaction left open on a row the peer changes: the apply waits for its lock.
/// The direction says who blocks it (the stall watch, after 10 s), gives up the wait after
/// the apply's lock_timeout (30 s) and retries from its kept position, and once the local
/// transaction ends both nodes hold the later write. Not version-specific: one version.
#[test]
fn an_apply_blocked_by_a_local_transaction_names_it_and_retries() {
    let Some(mut m) = replicating_one_row() else {
        return;
    };
    let (local, pid) = m.forgotten_transaction_on_b("UPDATE items SET v = 'held' WHERE id = 1");
    m.a.cluster
        .psql("UPDATE items SET v = 'from a' WHERE id = 1")
        .unwrap();
    let r = m.wait_blocked_by_forgotten(pid);
    assert_eq!(r.reconnects, 0, "{r:?}");
    // The lock wait ends with lock_timeout; the retry waits again.
    let r = m.wait_direction("b", "gave up the lock wait", Duration::from_secs(60), |r| {
        r.reconnects >= 1
    });
    assert!(
        r.last_error.as_deref().is_some_and(|e| e.contains("55P03")),
        "{r:?}"
    );
    // The local transaction commits later than a's update: it wins on both nodes.
    m.rt.block_on(local.batch_execute("COMMIT")).unwrap();
    m.wait_converged(&["items"], Duration::from_secs(60));
    assert_eq!(m.a.cluster.psql("SELECT v FROM items").unwrap(), "held");
    assert_eq!(
        m.b.cluster
            .psql("SELECT kind || '|' || winner FROM pgmesh.conflicts WHERE table_name = 'public.items'")
            .unwrap(),
        "update_origin_differs|local"
    );
    m.stop_sidecars();
}

/// Data from the peer that cannot be pgmesh's (here a unique-constraint decision message
/// that does not parse) is a bug, not something to retry: the direction stops saying so,
/// with its position kept (the transaction that carried it is not applied), instead of
/// retrying the same bytes every few seconds.
#[test]
fn unreadable_data_from_the_peer_stops_the_direction_as_a_bug() {
    let Some(mut m) = replicating_one_row() else {
        return;
    };
    m.a.cluster
        .psql(
            "BEGIN; INSERT INTO items VALUES (2, 'two');
             SELECT pg_logical_emit_message(true, 'pgmesh.kill', 'not a decision');
             COMMIT;",
        )
        .unwrap();
    let r = m.wait_direction("b", "stopped on the bug", STOP, |r| {
        r.state == pgmesh::observe::Phase::Failed
    });
    let e = r.last_error.unwrap_or_default();
    assert!(
        e.contains("looks like a bug in pgmesh")
            && e.contains("unique-constraint decision")
            && e.contains("position is kept"),
        "{e}"
    );
    assert_eq!(
        m.b.cluster.psql("SELECT count(*) FROM items").unwrap(),
        "1",
        "nothing of the transaction that carried it was applied"
    );
    m.stop_sidecars();
}
