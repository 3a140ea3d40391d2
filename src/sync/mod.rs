//! Initial copy of existing rows into the nodes that lack them (`pgmesh setup`).
//!
//! [`plan`] decides (pure) which tables go from which node to which; [`snapshot`] pins,
//! on each source, a snapshot that matches a slot position; [`copy`] moves the rows.
//!
//! Why the copy cannot lose or resurrect a row while both nodes take writes:
//! - the source's rows are read under a snapshot exported by a replication slot created
//!   *after* the table joined the publication: every change the snapshot misses is in the
//!   stream the target's sidecar applies;
//! - copied rows are written with a replication origin of their own (so they are not
//!   streamed back) and a commit time older than any real write (so any streamed change
//!   of the same row wins over the copy, in whatever order the two arrive);
//! - the copy only inserts keys the target holds neither as a row nor as a tombstone, and
//!   it locks the table against writes and locking reads while it checks, so a delete
//!   applied meanwhile is never undone.

pub mod copy;
mod error;
pub mod plan;
pub mod progress;
pub mod snapshot;

pub use error::SyncError;
pub use plan::{plan, CopyJob, CopyMode, ExistingData};

use crate::config::{names, Config};
use copy::{CopyStats, SourceSession, TargetSession};
use progress::Progress;
use snapshot::PinnedSnapshot;
use std::collections::BTreeSet;

/// One finished copy, for setup's report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Copied {
    pub table: String,
    pub source: String,
    pub target: String,
    pub mode: &'static str,
    #[serde(flatten)]
    pub stats: CopyStats,
}

/// The (source, target) pairs of `jobs`, each needing one pinned snapshot.
#[must_use]
pub fn pairs(jobs: &[CopyJob]) -> BTreeSet<(String, String)> {
    jobs.iter()
        .map(|j| (j.source.clone(), j.target.clone()))
        .collect()
}

/// Slots that pinning will create when missing: `pgmesh_<target>` on each source. Setup
/// leaves them to [`run`], which creates them with an exported snapshot.
#[must_use]
pub fn slots_made_by_copy(jobs: &[CopyJob]) -> BTreeSet<(String, String)> {
    pairs(jobs)
        .into_iter()
        .map(|(s, t)| (s, names::slot_name(&t)))
        .collect()
}

/// What [`run`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub copied: Vec<Copied>,
    /// (node, slot): permanent slots created to export their snapshot.
    pub slots_created: Vec<(String, String)>,
}

/// Pins a snapshot per pair, then copies every job's table under its pair's snapshot.
/// Pins come first, all of them, so a merge's copies in both directions read data from
/// before either copy wrote.
pub async fn run(cfg: &Config, jobs: &[CopyJob], quiet: bool) -> Result<SyncReport, SyncError> {
    let mut pins = Vec::new();
    let mut report = SyncReport::default();
    for (source, target) in pairs(jobs) {
        let node = cfg.node(&source).map_err(SyncError::Config)?;
        let pin = PinnedSnapshot::pin(node, &target).await?;
        if pin.created_permanent {
            report
                .slots_created
                .push((source.clone(), pin.slot.clone()));
        }
        pins.push((source, target.clone(), pin));
    }
    let mut result = Ok(());
    for (source, target, pin) in &pins {
        result = copy_pair(cfg, jobs, source, target, pin, quiet, &mut report.copied).await;
        if result.is_err() {
            break;
        }
    }
    for (_, _, pin) in pins {
        pin.release().await;
    }
    result.map(|()| report)
}

async fn copy_pair(
    cfg: &Config,
    jobs: &[CopyJob],
    source: &str,
    target: &str,
    pin: &PinnedSnapshot,
    quiet: bool,
    done: &mut Vec<Copied>,
) -> Result<(), SyncError> {
    let src = SourceSession::open(cfg.node(source).map_err(SyncError::Config)?, pin).await?;
    let dst = TargetSession::open(cfg.node(target).map_err(SyncError::Config)?).await?;
    for job in jobs
        .iter()
        .filter(|j| j.source == source && j.target == target)
    {
        let expected = src.estimated_rows(&job.table).await?;
        let label = format!("copy {} {}→{}", job.table, job.source, job.target);
        let mut progress = Progress::new(label, expected, quiet);
        let stats = copy::copy_table(&src, &dst, job, pin.consistent_point, &mut progress).await?;
        progress.finish();
        done.push(Copied {
            table: job.table.clone(),
            source: job.source.clone(),
            target: job.target.clone(),
            mode: job.mode.as_str(),
            stats,
        });
    }
    src.finish().await
}
