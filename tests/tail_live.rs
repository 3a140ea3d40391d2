//! `pgmesh tail` end to end against real servers: one JSON line per committed transaction,
//! no gap and no repeat across a server crash-restart, position acknowledged on Ctrl-C,
//! origin filtering on PG15 (client side) and PG16+ (server side).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pgmesh::testkit::{versions_under_test, Cluster};
use serde_json::Value;

struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn spawn(c: &Cluster, extra: &[&str]) -> Tail {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgmesh"))
            .args(["tail", "--dsn", &c.dsn(), "--slot", "tail_slot"])
            .args(["--publication", "tail_pub"])
            .args(extra)
            .env("RUST_LOG", "pgmesh=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pgmesh tail");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tail { child, lines: rx }
    }

    /// Next transaction line, or a panic naming what was awaited after `deadline`.
    fn next_txn(&self, what: &str) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no transaction line from tail while waiting for {what}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
    }

    fn interrupt_and_wait(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "tail did not exit on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until tail has created its slot, so writes after this are streamed.
fn wait_for_slot(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tail_slot'")
        .unwrap()
        != "1"
    {
        assert!(Instant::now() < deadline, "tail did not create its slot");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn inserted_id(txn: &Value) -> i64 {
    txn["changes"][0]["new"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an insert with an id in {txn}"))
}

#[test]
fn tail_survives_restart_without_gaps_or_repeats() {
    for major in versions_under_test() {
        let c = Cluster::start(major).unwrap();
        c.psql(
            "CREATE TABLE ev(id bigint primary key, body text, ok boolean, doc jsonb);
             CREATE PUBLICATION tail_pub FOR TABLE ev;",
        )
        .unwrap();
        let tail = Tail::spawn(&c, &["--create-slot"]);
        wait_for_slot(&c);
        for i in 1..=5 {
            c.psql(&format!(
                "INSERT INTO ev VALUES ({i}, 'row {i}', true, '{{\"n\": {i}}}')"
            ))
            .unwrap();
        }
        let first = tail.next_txn("insert 1");
        assert_eq!(inserted_id(&first), 1, "PG{major}: {first}");
        assert_eq!(first["changes"][0]["op"], "insert");
        assert_eq!(first["changes"][0]["table"], "public.ev");
        assert_eq!(first["changes"][0]["new"]["ok"], true);
        assert_eq!(first["changes"][0]["new"]["doc"]["n"], 1);
        assert!(first["xid"].as_u64().is_some());
        assert!(first["commit_time"].as_str().unwrap().ends_with('Z'));
        let mut seen = vec![1];
        for _ in 2..=5 {
            seen.push(inserted_id(&tail.next_txn("inserts 2-5")));
        }
        // Crash the server under the running tail; it must reconnect and resume.
        c.restart_immediate().unwrap();
        for i in 6..=10 {
            c.psql(&format!(
                "INSERT INTO ev VALUES ({i}, 'row {i}', false, null)"
            ))
            .unwrap();
        }
        for _ in 6..=10 {
            seen.push(inserted_id(&tail.next_txn("inserts after restart")));
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "PG{major}");
        // Other kinds of change.
        update_delete_then_interrupt(&c, tail, &format!("PG{major}"));

        // A new tail resumes after the acknowledged position: nothing is repeated.
        c.psql("INSERT INTO ev VALUES (11, 'after', true, null)")
            .unwrap();
        let tail = Tail::spawn(&c, &[]);
        let next = tail.next_txn("insert 11 after resume");
        assert_eq!(inserted_id(&next), 11, "PG{major}: {next}");
    }
}

#[test]
fn tail_filters_transactions_with_an_origin() {
    for major in versions_under_test() {
        let c = Cluster::start(major).unwrap();
        c.psql(
            "CREATE TABLE ev(id bigint primary key);
             CREATE PUBLICATION tail_pub FOR TABLE ev;
             SELECT pg_replication_origin_create('peer_x');",
        )
        .unwrap();
        let all = Tail::spawn(&c, &["--create-slot"]);
        wait_for_slot(&c);
        c.psql(
            // The origin is stamped at commit: commit before resetting the session.
            "SELECT pg_replication_origin_session_setup('peer_x');
             BEGIN; INSERT INTO ev VALUES (1); COMMIT;
             SELECT pg_replication_origin_session_reset();",
        )
        .unwrap();
        c.psql("INSERT INTO ev VALUES (2)").unwrap();
        let t1 = all.next_txn("origin txn");
        assert_eq!(t1["origin"]["name"], "peer_x", "PG{major}: {t1}");
        assert_eq!(inserted_id(&t1), 1);
        let t2 = all.next_txn("local txn");
        assert!(t2["origin"].is_null(), "{t2}");
        assert!(all.interrupt_and_wait().success());

        c.psql("SELECT pg_replication_slot_advance('tail_slot', pg_current_wal_lsn())")
            .unwrap();
        let filtered = Tail::spawn(&c, &["--origin", "none"]);
        c.psql(
            // The origin is stamped at commit: commit before resetting the session.
            "SELECT pg_replication_origin_session_setup('peer_x');
             BEGIN; INSERT INTO ev VALUES (3); COMMIT;
             SELECT pg_replication_origin_session_reset();",
        )
        .unwrap();
        c.psql("INSERT INTO ev VALUES (4)").unwrap();
        let t = filtered.next_txn("local txn after filtered one");
        assert_eq!(
            inserted_id(&t),
            4,
            "PG{major}: origin txn must be dropped: {t}"
        );
        assert!(filtered.interrupt_and_wait().success());
    }
}

/// `--plugin wal2json` (packaged for PostgreSQL 15 here): the same lines as pgoutput's,
/// acknowledged the same way, across a server crash-restart, and `--origin none` drops
/// what carries an origin.
#[test]
fn tail_reads_a_wal2json_slot_with_the_same_output() {
    let c = Cluster::start(15).unwrap();
    c.psql("CREATE TABLE ev(id bigint primary key, body text, ok boolean, doc jsonb, n numeric)")
        .unwrap();
    let tail = Tail::spawn(
        &c,
        &["--plugin", "wal2json", "--create-slot", "--origin", "none"],
    );
    wait_for_slot(&c);
    assert_eq!(
        c.psql("SELECT plugin FROM pg_replication_slots WHERE slot_name = 'tail_slot'")
            .unwrap(),
        "wal2json"
    );
    c.psql(r#"INSERT INTO ev VALUES (1, 'one', true, '{"n": 1}', 12345678901234567890.5)"#)
        .unwrap();
    let first = tail.next_txn("the insert");
    assert_eq!(inserted_id(&first), 1, "{first}");
    let new = &first["changes"][0]["new"];
    assert_eq!(first["changes"][0]["table"], "public.ev");
    assert_eq!(
        (new["body"].as_str(), new["ok"].as_bool()),
        (Some("one"), Some(true))
    );
    assert_eq!(new["doc"]["n"], 1);
    assert_eq!(
        new["n"], "12345678901234567890.5",
        "numeric keeps its digits"
    );
    assert!(
        first["commit_time"].as_str().unwrap().ends_with('Z'),
        "{first}"
    );
    // A transaction applied under a replication origin (as pgmesh's apply does) is
    // dropped; the one after it is not.
    c.psql(
        "SELECT pg_replication_origin_create('pgmesh_x');
         SELECT pg_replication_origin_session_setup('pgmesh_x');
         INSERT INTO ev VALUES (2, 'replicated', false, null, null);",
    )
    .unwrap();
    c.restart_immediate().unwrap();
    update_delete_then_interrupt(&c, tail, "wal2json");
}

/// Updates row 1 and deletes row 2 of `ev` in one transaction, checks tail's line for
/// it, then stops tail with SIGINT and checks it exited 0 and acknowledged the line.
fn update_delete_then_interrupt(c: &Cluster, tail: Tail, what: &str) {
    c.psql("UPDATE ev SET body = 'changed' WHERE id = 1; DELETE FROM ev WHERE id = 2;")
        .unwrap();
    let upd = tail.next_txn("update+delete");
    assert_eq!(upd["changes"][0]["op"], "update", "{what}: {upd}");
    assert_eq!(upd["changes"][0]["new"]["body"], "changed");
    assert_eq!(upd["changes"][1]["op"], "delete", "{what}: {upd}");
    assert_eq!(upd["changes"][1]["key"]["id"], 2);
    let last_end = upd["end_lsn"].as_str().unwrap().to_string();
    let status = tail.interrupt_and_wait();
    assert!(status.success(), "{what}: tail exit {status}");
    let ok = c
        .psql(&format!(
            "SELECT confirmed_flush_lsn >= '{last_end}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'tail_slot'"
        ))
        .unwrap();
    assert_eq!(ok, "t", "{what}: position acknowledged on Ctrl-C");
}
