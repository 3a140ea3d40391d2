//! A slot PostgreSQL invalidated: node b's sidecar is down while node a writes on, and a's
//! WAL passes `max_slot_wal_keep_size`, so PostgreSQL invalidates slot `pgmesh_b` on a
//! (`wal_status = lost`). b's sidecar, started again, must stop that direction naming the
//! slot and the recovery (not retry for ever); `pgmesh setup --check` reports the slot;
//! `pgmesh setup` drops it and creates it again; after the sidecar restarts, `pgmesh
//! repair` brings over the rows written while it was lost, and new writes flow again.
//! Through the binary, as an operator would, on every version in `PGMESH_TEST_PG`.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use pgmesh::testkit::{versions_under_test, Cluster};
use support::cli::{pgmesh, text};
use support::live::{nodes_with_setup, turn, wait_converged_or_show, wait_for, Sidecar};

const DDL: &str = "CREATE TABLE items (id int PRIMARY KEY, v text)";
const WAIT: Duration = Duration::from_secs(30);
const SLOT_STATUS: &str =
    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgmesh_b'";

/// Pushes a's WAL past the slot's cap until PostgreSQL invalidates `pgmesh_b`: WAL nothing
/// replicated reads (a non-transactional logical message), segment switches, and a
/// checkpoint (where slots are invalidated).
fn invalidate_slot(a: &Cluster, major: u32) {
    a.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .unwrap();
    a.psql("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + WAIT;
    while a.psql(SLOT_STATUS).unwrap() != "lost" {
        assert!(
            Instant::now() < deadline,
            "PG{major}: slot pgmesh_b on a was not invalidated: {}",
            a.psql(
                "SELECT wal_status, restart_lsn, pg_current_wal_lsn() FROM pg_replication_slots"
            )
            .unwrap_or_default()
        );
        for _ in 0..3 {
            a.psql("SELECT pg_logical_emit_message(false, 'test', repeat('x', 200000))")
                .unwrap();
            a.psql("SELECT pg_switch_wal()").unwrap();
        }
        a.psql("CHECKPOINT").unwrap();
    }
}

/// Waits until the sidecar exits by itself.
fn wait_exit(s: &mut Sidecar, major: u32) {
    let deadline = Instant::now() + WAIT;
    while s.running() {
        assert!(
            Instant::now() < deadline,
            "PG{major}: b's sidecar did not stop:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_ok(args: &[&str], cfg: &Path, major: u32) -> String {
    let out = pgmesh(args, cfg);
    assert_eq!(
        out.status.code(),
        Some(0),
        "PG{major}: pgmesh {}: {}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_invalidated_slot_stops_the_direction_and_setup_recovers_it() {
    let _t = turn();
    for major in versions_under_test() {
        let (a, b, dir, cfg) = nodes_with_setup(major, DDL, "\"public.items\"");
        let log = |name: &str| dir.path().join(format!("{name}.log"));
        let sa = Sidecar::spawn(&cfg, "a", log("a"));
        let mut sb = Sidecar::spawn(&cfg, "b", log("b-1"));
        a.psql("INSERT INTO items SELECT g, 'before' FROM generate_series(1, 10) g")
            .unwrap();
        wait_converged_or_show(&a, &b, &["items"], WAIT, &[&sa, &sb]);

        // b's sidecar is down while a writes rows, and a's WAL outgrows the slot's cap.
        drop(sb);
        wait_for(
            &a,
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgmesh_b'",
            "f",
            "b's walsender on a to go",
            WAIT,
        );
        a.psql("INSERT INTO items SELECT g, 'while lost' FROM generate_series(11, 20) g")
            .unwrap();
        invalidate_slot(&a, major);

        // Started again, b's sidecar stops the direction for good, saying how to recover.
        sb = Sidecar::spawn(&cfg, "b", log("b-2"));
        wait_exit(&mut sb, major);
        let stopped = sb.log_text();
        for needle in [
            "slot pgmesh_b on node a was invalidated by PostgreSQL (its WAL passed max_slot_wal_keep_size)",
            "will never reach node b through it, so this direction stopped",
            "run `pgmesh setup` (it drops the invalidated slot and creates it again), restart this sidecar, then `pgmesh verify` and `pgmesh repair`",
        ] {
            assert!(
                stopped.contains(needle),
                "PG{major}: {needle:?} not in\n{stopped}"
            );
        }
        // One attempt, not a retry loop.
        assert_eq!(
            stopped.matches("stopped for good").count(),
            1,
            "PG{major}:\n{stopped}"
        );

        // Preflight names the lost slot as a warning (setup itself is the fix).
        let check = run_ok(&["setup", "--check", "--json"], &cfg, major);
        let v: serde_json::Value = serde_json::from_str(&check).unwrap();
        let finding = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["what"].as_str().unwrap_or("").contains("pgmesh_b"))
            .unwrap_or_else(|| panic!("PG{major}: no finding on pgmesh_b: {v:#}"));
        assert_eq!(finding["node"], "a", "{v:#}");
        assert_eq!(finding["severity"], "warning", "{v:#}");
        assert!(
            finding["what"]
                .as_str()
                .unwrap()
                .contains("slot pgmesh_b was invalidated by PostgreSQL"),
            "{v:#}"
        );
        assert!(
            finding["fix"].as_str().unwrap().contains("pgmesh setup"),
            "{v:#}"
        );

        // The recovery the message names: lift the cap, setup, the sidecar, repair.
        a.psql("ALTER SYSTEM RESET max_slot_wal_keep_size").unwrap();
        a.psql("SELECT pg_reload_conf()").unwrap();
        let done = run_ok(&["setup"], &cfg, major);
        assert!(
            done.contains(
                "node a: dropped slot pgmesh_b (invalidated: its WAL was removed, past max_slot_wal_keep_size) and created it again"
            ),
            "PG{major}: {done}"
        );
        assert!(done.contains("pgmesh repair"), "PG{major}: {done}");
        assert_eq!(a.psql(SLOT_STATUS).unwrap(), "reserved", "PG{major}");
        // Once recreated, the slot is fine: setup again changes nothing.
        let again = run_ok(&["setup", "-q"], &cfg, major);
        assert!(!again.contains("pgmesh_b"), "PG{major}: {again}");

        sb = Sidecar::spawn(&cfg, "b", log("b-3"));
        sb.wait_log("streaming from peer", WAIT);
        // The rows written while the slot was lost never reached b through it.
        assert_eq!(
            b.psql("SELECT count(*) FROM items").unwrap(),
            "10",
            "PG{major}"
        );
        let out = pgmesh(&["verify"], &cfg);
        assert_eq!(out.status.code(), Some(1), "PG{major}: {}", text(&out));
        run_ok(&["repair", "--yes"], &cfg, major);
        run_ok(&["verify"], &cfg, major);
        assert_eq!(
            b.psql("SELECT count(*) FILTER (WHERE v = 'while lost') FROM items")
                .unwrap(),
            "10",
            "PG{major}"
        );

        // New writes on a reach b through the new slot.
        a.psql("INSERT INTO items VALUES (21, 'after')").unwrap();
        wait_for(
            &b,
            "SELECT v FROM items WHERE id = 21",
            "after",
            "a's new row on b",
            WAIT,
        );
        wait_converged_or_show(&a, &b, &["items"], WAIT, &[&sa, &sb]);
        assert!(sb.running(), "PG{major}: {}", sb.log_text());
    }
}
