//! Named places where a test can crash the process on purpose, to prove that what was
//! committed before is neither lost nor applied twice. Only with the `failpoints` feature
//! (the test build, `make test`); without it [`hit`] is an empty inline function.
//!
//! `PGMESH_FAILPOINTS=name[,name…]` makes the process abort (SIGABRT: no cleanup, no
//! destructors, open connections just drop, like a crash) when it reaches a listed point.

/// Between the apply's COMMIT of a transaction that queued unique-constraint decisions
/// for the peer (`pgmesh.outbox`) and their sending.
pub const COMMITTED_BEFORE_OUTBOX: &str = "apply.committed_before_outbox";

/// Aborts the process if `name` is listed in `PGMESH_FAILPOINTS`.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    static LISTED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let listed = LISTED.get_or_init(|| {
        std::env::var("PGMESH_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if listed.iter().any(|l| l == name) {
        eprintln!("pgmesh: fail point {name} reached: aborting");
        std::process::abort();
    }
}

/// Does nothing: fail points are compiled only with the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
