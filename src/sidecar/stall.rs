//! Makes a stuck direction visible. The reading half and the writing half each mark the
//! step they are waiting in ([`Activity::enter`]); a watcher task per direction warns
//! when one step has lasted [`STALL_WARN`], and for the writer says what its apply backend
//! waits for and who blocks it (`pg_blocking_pids`). Without it, an apply waiting on a row
//! lock held by a forgotten local transaction stops the direction with nothing in the log:
//! the reader waits for room in the writer's queue and reads nothing more.
//!
//! The apply session's own `lock_timeout` ([`crate::apply::session`]) ends such a wait
//! after a while; this is what says why, meanwhile, while there is still a blocker to
//! find.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::observe::DirectionState;
use crate::sqlconn::{connect_sql, SqlConfig};

/// A step lasting this long is reported (and again each time as long again).
pub const STALL_WARN: Duration = Duration::from_secs(10);

/// How often the watcher looks.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// What a half of a direction is waiting in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Waiting {
    /// Nothing that can stall (reading the stream has its own idle timeout).
    Free = 0,
    /// The reader waits for room in the writer's queue.
    QueueingForWriter,
    /// The reader tells the peer what it may forget.
    SendingStatus,
    /// The reader stores the clock skew estimate locally.
    StoringClockSkew,
    /// The writer writes a chunk of changes into the local node.
    WritingChanges,
    /// The writer commits a downstream transaction.
    Committing,
    /// The writer applies a peer's TRUNCATE.
    Truncating,
    /// The writer applies a peer's unique-constraint decision.
    ApplyingDecision,
}

impl Waiting {
    const ALL: [Waiting; 8] = [
        Waiting::Free,
        Waiting::QueueingForWriter,
        Waiting::SendingStatus,
        Waiting::StoringClockSkew,
        Waiting::WritingChanges,
        Waiting::Committing,
        Waiting::Truncating,
        Waiting::ApplyingDecision,
    ];

    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Waiting::Free => "nothing",
            Waiting::QueueingForWriter => "waiting for the writer to take more changes",
            Waiting::SendingStatus => "sending its position to the peer",
            Waiting::StoringClockSkew => "storing the clock skew estimate",
            Waiting::WritingChanges => "writing changes into this node",
            Waiting::Committing => "committing applied changes on this node",
            Waiting::Truncating => "applying the peer's TRUNCATE",
            Waiting::ApplyingDecision => "applying the peer's unique-constraint decision",
        }
    }

    fn is_writer(self) -> bool {
        matches!(
            self,
            Waiting::WritingChanges
                | Waiting::Committing
                | Waiting::Truncating
                | Waiting::ApplyingDecision
        )
    }
}

/// The step one half is in and since when (milliseconds after `epoch`), in atomics: it
/// is set around every await that could stall, many times a second.
pub struct Activity {
    step: AtomicU8,
    since_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            step: AtomicU8::new(Waiting::Free as u8),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Activity {
    /// Marks `step` until the guard drops.
    #[must_use]
    pub fn enter(&self, step: Waiting) -> StepGuard<'_> {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since_ms.store(ms, Ordering::Relaxed);
        self.step.store(step as u8, Ordering::Relaxed);
        StepGuard(self)
    }

    /// The step under way and how long it has lasted; `None` when free.
    #[must_use]
    pub fn current(&self) -> Option<(Waiting, Duration)> {
        let step = Waiting::ALL
            .get(usize::from(self.step.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(Waiting::Free);
        if step == Waiting::Free {
            return None;
        }
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        Some((step, self.epoch.elapsed().saturating_sub(since)))
    }
}

/// Clears the step of an [`Activity`] when dropped.
pub struct StepGuard<'a>(&'a Activity);

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        self.0.step.store(Waiting::Free as u8, Ordering::Relaxed);
    }
}

/// Both halves of one direction.
#[derive(Default)]
pub struct DirectionActivity {
    pub reader: Activity,
    pub writer: Activity,
    /// The backend the writer's step runs in when it is not the apply session's (the
    /// session of a streamed transaction); 0 for the apply session.
    writer_backend: AtomicI32,
}

impl DirectionActivity {
    /// Marks the writer's next steps as running in backend `pid` (0: the apply session).
    pub fn writer_in(&self, pid: i32) {
        self.writer_backend.store(pid, Ordering::Relaxed);
    }

    /// The backend the writer's step runs in; `apply_pid` unless [`Self::writer_in`] said
    /// otherwise.
    fn writer_backend(&self, apply_pid: i32) -> i32 {
        match self.writer_backend.load(Ordering::Relaxed) {
            0 => apply_pid,
            pid => pid,
        }
    }
}

/// Which report a stalled step is due: the first at [`STALL_WARN`], then one per
/// [`STALL_WARN`] more. Returns the number of the report due now, if one is.
fn report_due(lasted: Duration, reported: u32) -> Option<u32> {
    let due = u32::try_from(lasted.as_millis() / STALL_WARN.as_millis()).unwrap_or(u32::MAX);
    (due > reported).then_some(due)
}

/// What the apply backend waits for, from `pg_stat_activity`, with its blockers.
const APPLY_WAIT_SQL: &str = "\
SELECT coalesce(a.wait_event_type || '/' || a.wait_event, 'no wait event (working)'),
       (SELECT string_agg(format('pid %s (%s, user %s, %s, transaction started %s: %s)',
                                 b.pid, coalesce(nullif(b.application_name, ''), 'no application_name'),
                                 b.usename, b.state, b.xact_start, left(b.query, 160)), '; ')
          FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid)))
  FROM pg_stat_activity a WHERE a.pid = $1";

/// Watches `activity` of the direction from `peer` until aborted; `apply_pid` is the
/// writer's apply backend on the local node (reached through `local` when it stalls;
/// a streamed transaction's steps name their own backend, [`DirectionActivity::writer_in`]).
pub async fn watch(
    activity: Arc<DirectionActivity>,
    local: SqlConfig,
    apply_pid: i32,
    peer: String,
    state: Arc<DirectionState>,
) {
    let mut seen: [(Option<Waiting>, u32); 2] = [(None, 0), (None, 0)];
    let mut diag: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
    let mut tick = tokio::time::interval(LOOK_EVERY);
    loop {
        tick.tick().await;
        for ((half, who), last) in [(&activity.reader, "reader"), (&activity.writer, "writer")]
            .into_iter()
            .zip(seen.iter_mut())
        {
            let Some((step, lasted)) = half.current() else {
                *last = (None, 0);
                continue;
            };
            // A new step (or the same kind again, but younger) starts its count anew.
            if last.0 != Some(step) || lasted < STALL_WARN * last.1 {
                *last = (Some(step), 0);
            }
            let Some(n) = report_due(lasted, last.1) else {
                continue;
            };
            last.1 = n;
            let detail = if step.is_writer() {
                apply_wait(&mut diag, &local, activity.writer_backend(apply_pid)).await
            } else {
                String::new()
            };
            let text = format!(
                "the direction from {peer} has been {} for {}s ({who}){detail}",
                step.describe(),
                lasted.as_secs()
            );
            tracing::warn!(step = ?step, lasted = ?lasted, "{text}");
            state.stalled(&text);
        }
    }
}

/// `: the apply backend (pid N) waits for X, blocked by …`, or why that is unknown.
async fn apply_wait(
    diag: &mut Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)>,
    local: &SqlConfig,
    pid: i32,
) -> String {
    if diag.as_ref().is_some_and(|(c, _)| c.is_closed()) {
        *diag = None;
    }
    if diag.is_none() {
        match tokio::time::timeout(Duration::from_secs(5), connect_sql(local)).await {
            Ok(Ok((client, task))) => {
                let _ = client
                    .batch_execute(
                        "SET application_name = 'pgmesh stall watch'; SET statement_timeout = '5s'",
                    )
                    .await;
                *diag = Some((client, task));
            }
            Ok(Err(e)) => return format!(": could not look at the apply backend (pid {pid}): {e}"),
            Err(_) => {
                return format!(
                    ": could not look at the apply backend (pid {pid}): no connection within 5 s"
                )
            }
        }
    }
    let Some((client, _)) = diag.as_ref() else {
        return String::new();
    };
    match client.query_opt(APPLY_WAIT_SQL, &[&pid]).await {
        Ok(Some(row)) => {
            let wait: String = row.get(0);
            match row.get::<_, Option<String>>(1) {
                Some(blockers) => format!(
                    ": the apply backend (pid {pid}) waits for {wait}, blocked by {blockers}"
                ),
                None => format!(": the apply backend (pid {pid}) waits for {wait}"),
            }
        }
        Ok(None) => format!(": the apply backend (pid {pid}) is gone"),
        Err(e) => format!(": could not look at the apply backend (pid {pid}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_come_once_per_stall_warn() {
        assert_eq!(report_due(Duration::from_secs(3), 0), None);
        assert_eq!(report_due(STALL_WARN, 0), Some(1));
        assert_eq!(report_due(STALL_WARN + Duration::from_secs(5), 1), None);
        assert_eq!(report_due(STALL_WARN * 2, 1), Some(2));
        // A watcher that looked late reports once, with the current count.
        assert_eq!(report_due(STALL_WARN * 5, 1), Some(5));
    }

    #[test]
    fn a_step_is_current_until_its_guard_drops() {
        let a = Activity::default();
        assert!(a.current().is_none());
        let g = a.enter(Waiting::Committing);
        std::thread::sleep(Duration::from_millis(30));
        let (step, lasted) = a.current().expect("a step");
        assert_eq!(step, Waiting::Committing);
        assert!(lasted >= Duration::from_millis(20), "{lasted:?}");
        drop(g);
        assert!(a.current().is_none());
    }
}
