//! Crashes at named points (`src/failpoint.rs`, feature `failpoints`, on in `make test`):
//! the sidecar process aborts there, is started again, and nothing committed before the
//! crash is lost or applied twice.
#![cfg(feature = "failpoints")]

mod support;

use std::time::{Duration, Instant};

use pgmesh::testkit::versions_under_test;
use support::live::{self as cli, wait_converged, Sidecar};

const DDL: &str = "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE);";
const MINUTE: Duration = Duration::from_secs(60);

/// b's apply removes its own row that lost a unique value to a's newer row and queues the
/// decision for a in `pgmesh.outbox`, in the same transaction; the process dies right
/// after that COMMIT, before sending it. The next sidecar sends it first thing, and the
/// transaction is not applied again (one ledger row, not two).
#[test]
fn a_crash_between_an_apply_commit_and_sending_its_decisions_loses_nothing() {
    let _t = cli::turn();
    let Some(&major) = versions_under_test().first() else {
        return;
    };
    let (a, b, dir, cfg) = cli::nodes_with_setup(major, DDL, "\"public.users\"");
    b.psql("INSERT INTO users VALUES (28, 'z@x')").unwrap();
    std::thread::sleep(Duration::from_millis(5));
    a.psql("INSERT INTO users VALUES (27, 'z@x')").unwrap();
    let _sa = Sidecar::spawn(&cfg, "a", dir.path().join("a.log"));
    let mut sb = Sidecar::spawn_with_env(
        &cfg,
        "b",
        dir.path().join("b-crash.log"),
        &[(
            "PGMESH_FAILPOINTS".into(),
            pgmesh::failpoint::COMMITTED_BEFORE_OUTBOX.into(),
        )],
    );
    sb.wait_log("fail point apply.committed_before_outbox reached", MINUTE);
    let deadline = Instant::now() + MINUTE;
    while sb.running() {
        assert!(Instant::now() < deadline, "b's sidecar did not abort");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What the crashed transaction committed: the losing row gone, the decision queued.
    assert_eq!(
        b.psql("SELECT count(*) FROM users WHERE id = 28").unwrap(),
        "0"
    );
    assert_ne!(b.psql("SELECT count(*) FROM pgmesh.outbox").unwrap(), "0");
    let _sb = Sidecar::spawn(&cfg, "b", dir.path().join("b.log"));
    wait_converged(&a, &b, &["users"], MINUTE);
    cli::wait_for(
        &b,
        "SELECT count(*) FROM pgmesh.outbox",
        "0",
        "b's queued decision sent",
        MINUTE,
    );
    for c in [&a, &b] {
        assert_eq!(c.psql("SELECT id FROM users").unwrap(), "27");
    }
    assert_eq!(
        b.psql(
            "SELECT count(*) FROM pgmesh.conflicts
              WHERE kind = 'unique_exists' AND key->>'id' = '28'"
        )
        .unwrap(),
        "1",
        "the crashed transaction was applied once"
    );
}
