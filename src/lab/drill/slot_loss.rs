//! The slot-invalidated drill: region b's sidecar is down while region a writes on, and
//! a's WAL passes `max_slot_wal_keep_size`, so PostgreSQL invalidates the slot b reads
//! (`pgmesh_b`, `wal_status = lost`). The changes a wrote since can no longer reach b
//! through it. What must happen: b's sidecar, started again, stops that direction and
//! says so and how to recover (it must not retry for ever or skip silently); the
//! recovery the message names — `pgmesh setup` (creates the slot again), the sidecar,
//! `pgmesh repair` — brings every acknowledged write to b; `app-eu` never moves.

use std::time::Duration;

use super::super::regions::{tail, LabError, RegionsLab};
use super::super::topology::Site;

/// The slot on region a that region b's sidecar reads.
const SLOT: &str = "pgmesh_b";
/// How long PostgreSQL and the sidecar get for each step.
const STEP: Duration = Duration::from_secs(60);

/// Stops b's sidecar, makes a's WAL outgrow the slot's cap until PostgreSQL invalidates
/// it, starts the sidecar again and waits until it stopped the direction, naming the
/// invalidated slot and the recovery.
pub fn invalidate(lab: &mut RegionsLab) -> Result<(), LabError> {
    lab.kill_sidecar(Site::B)?;
    let a = lab.postgres(Site::A);
    // ALTER SYSTEM cannot run inside the transaction psql -c wraps several statements in.
    a.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")?;
    a.psql("SELECT pg_reload_conf()")?;
    let lost = format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{SLOT}'");
    lab.wait_for("PostgreSQL to invalidate slot pgmesh_b on a", STEP, |l| {
        let a = l.postgres(Site::A);
        if a.psql(&lost).is_ok_and(|s| s.trim() == "lost") {
            return true;
        }
        // WAL past the cap: a non-transactional message (nothing replicated reads it),
        // a segment switch, and a checkpoint, which is where slots are invalidated.
        for _ in 0..3 {
            let _ = a.psql("SELECT pg_logical_emit_message(false, 'drill', repeat('x', 200000))");
            let _ = a.psql("SELECT pg_switch_wal()");
        }
        let _ = a.psql("CHECKPOINT");
        false
    })?;
    let before = lab.log("sidecar", Site::B).len();
    lab.start_sidecar(Site::B)?;
    lab.wait_for(
        "region b's sidecar to stop the direction from a, naming the invalidated slot and `pgmesh setup`",
        STEP,
        |l| {
            let log = l.log("sidecar", Site::B);
            let new = log.get(before..).unwrap_or(&log);
            new.contains(SLOT) && new.contains("invalidated") && new.contains("pgmesh setup")
        },
    )
    .map_err(|e| match e {
        LabError::NotReady { what, .. } => LabError::NotReady {
            what,
            log: tail(&lab.log("sidecar", Site::B), 20),
        },
        other => other,
    })?;
    Ok(())
}

/// The recovery the sidecar's message names: lift the cap, `pgmesh setup` (creates the
/// slot again), the sidecar, `pgmesh repair` for the rows written while it was lost.
pub fn recover(lab: &mut RegionsLab) -> Result<(), LabError> {
    let a = lab.postgres(Site::A);
    a.psql("ALTER SYSTEM RESET max_slot_wal_keep_size")?;
    a.psql("SELECT pg_reload_conf()")?;
    lab.kill_sidecar(Site::B)?;
    run(lab, &["setup"])?;
    lab.start_sidecar(Site::B)?;
    run(lab, &["repair", "--yes", "--wait-timeout", "60"])?;
    Ok(())
}

fn run(lab: &RegionsLab, args: &[&str]) -> Result<(), LabError> {
    let out = lab.pgmesh_here(args)?;
    if out.status.success() {
        return Ok(());
    }
    Err(LabError::Setup(format!(
        "pgmesh {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}
