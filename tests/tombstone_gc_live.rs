//! Tombstone pruning by the sidecar (`sidecar/tombstone_gc.rs`): a tombstone goes once
//! every peer direction into its node has applied the peer past it (plus the retention
//! margin), and stays while a peer is unreachable.

mod support;

use pgmesh::testkit::{versions_under_test, Cluster};
use std::time::{Duration, Instant};
use support::cli::{pgmesh, text, write_config_with};
use support::dump;
use support::live::Sidecar;

/// The maintenance task's passes are logged at debug: counting them is how the test
/// knows a pass ran (and kept a tombstone) rather than guessing with a sleep.
const PASS_LOG: &[(&str, &str)] = &[("RUST_LOG", "pgmesh=info,pgmesh::sidecar::maintenance=debug")];

/// Tombstone passes the sidecar logged so far.
fn passes(s: &Sidecar) -> usize {
    s.log_text()
        .lines()
        .filter(|l| {
            l.contains("no tombstone to prune")
                || l.contains("tombstone pruning waits")
                || l.contains("pruned tombstones every peer is past")
        })
        .count()
}

const LEDGER: &str = "[ledger]\nprune_interval = \"1s\"\ntombstone_retention = \"1s\"\n";

fn tombstones(c: &Cluster) -> i64 {
    c.psql("SELECT count(*) FROM pgmesh.tombstones")
        .unwrap()
        .parse()
        .unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tombstones_go_once_every_peer_is_past_them_and_stay_while_one_is_away() {
    for major in versions_under_test() {
        let a = Cluster::start(major).unwrap();
        let b = Cluster::start(major).unwrap();
        for c in [&a, &b] {
            c.psql("CREATE TABLE t (id int PRIMARY KEY, v text)")
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config_with(dir.path(), &a, &b, "\"public.t\"", LEDGER);
        let out = pgmesh(&["setup", "-q"], &cfg);
        assert_eq!(out.status.code(), Some(0), "PG{major}: {}", text(&out));
        let env: Vec<(String, String)> = PASS_LOG
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let sidecar_a = Sidecar::spawn_with_env(&cfg, "a", dir.path().join("a.log"), &env);
        let _sidecar_b = Sidecar::spawn_with_env(&cfg, "b", dir.path().join("b.log"), &env);

        a.psql("INSERT INTO t SELECT i, 'x' FROM generate_series(1, 100) i")
            .unwrap();
        wait_until("b has the rows", || dump(&a, "t") == dump(&b, "t"));
        a.psql("DELETE FROM t WHERE id <= 50").unwrap();
        wait_until("b applied the deletes", || dump(&a, "t") == dump(&b, "t"));
        assert_eq!((tombstones(&a), tombstones(&b)), (50, 50), "PG{major}");

        // Later writes on both nodes carry each direction past the deletes.
        std::thread::sleep(Duration::from_millis(1500));
        a.psql("INSERT INTO t VALUES (1000, 'later on a')").unwrap();
        b.psql("INSERT INTO t VALUES (2000, 'later on b')").unwrap();
        wait_until("both nodes pruned their tombstones", || {
            tombstones(&a) == 0 && tombstones(&b) == 0
        });

        // With b unreachable, a's direction from b stands still: a keeps what it deletes.
        b.stop().unwrap();
        a.psql("DELETE FROM t WHERE id BETWEEN 51 AND 60").unwrap();
        // Two passes logged after the deletes: the second started a whole
        // prune_interval (1 s = the retention) after the first ended, so past the
        // retention; had pruning ignored the missing peer, the tombstones were gone.
        let before = passes(&sidecar_a);
        wait_until("two tombstone passes ran on a while b was away", || {
            passes(&sidecar_a) >= before + 2
        });
        assert_eq!(tombstones(&a), 10, "PG{major}: pruned while b was away");
        b.start_again().unwrap();
        wait_until("b caught up", || dump(&a, "t") == dump(&b, "t"));
        std::thread::sleep(Duration::from_millis(1500));
        b.psql("INSERT INTO t VALUES (2001, 'back')").unwrap();
        wait_until("a pruned once b was back", || tombstones(&a) == 0);
        // The key is free again: re-inserting a deleted key on b reaches a as a plain
        // insert.
        b.psql("INSERT INTO t VALUES (5, 'again')").unwrap();
        wait_until("a has the re-inserted key", || {
            dump(&a, "t") == dump(&b, "t")
        });
        assert_eq!(
            a.psql("SELECT count(*) FROM pgmesh.conflicts").unwrap(),
            "0",
            "PG{major}"
        );
    }
}
