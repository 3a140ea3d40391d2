//! The CPU scheduling policy of the sidecar's threads (`[apply] cpu_policy`, issue 15).
//!
//! The sidecar reads the peer's walsender as fast as it sends, so nearly every message
//! woke a sleeping reader thread, and under Linux's normal policy a woken thread preempts
//! the process that woke it when they share a CPU. Catching up 200k transactions on two
//! cores (walsender, sidecar and apply backend all busy) cost the walsender 53–67k
//! context switches (341 when native's apply worker reads it), the sidecar as many, and
//! both their caches. Under `SCHED_BATCH` a woken thread does not preempt: it takes a free
//! CPU or waits for the running process's slice, and then finds more to read at once.
//! Four interleaved pairs (BENCHMARKS.md): sidecar CPU −33 %, catch-up +9 %.
//!
//! Waiting for a slice costs latency when the sidecar is caught up, so `auto` (the
//! default) runs the threads under `SCHED_BATCH` only while a direction is behind by
//! more than [`ENTER_BEHIND`], and back under the normal policy once every direction is
//! within [`LEAVE_BEHIND`]. A direction reading a PostgreSQL 15 peer counts too while it
//! discards more than [`ENTER_DISCARDING`] changes a second (until it is below
//! [`LEAVE_DISCARDING`]): PostgreSQL 15 sends the changes this node applied back to it, to
//! be dropped here (`crate::filter::origin`), and no one waits for those. While the
//! other direction caught up, the reader of that stream woke for nearly every message:
//! the walsender decoding it switched 9–39k times per 200k changes. With this rule the
//! catch-up ran 6 % faster at 20 % less apply CPU (medians of four pairs, BENCHMARKS.md).
//! `SCHED_BATCH` is a time-sharing policy like the normal one
//! (nice values apply, no privilege is needed); only the wakeup preemption differs. The
//! agent (`pgmesh agent`), whose timing guards a fence, never runs under it.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

pub use crate::config::CpuPolicy;

/// Under `auto`, a direction whose oldest unapplied commit is this old is catching up.
pub const ENTER_BEHIND: Duration = Duration::from_millis(250);
/// Under `auto`, a direction catching up is caught up again within this.
pub const LEAVE_BEHIND: Duration = Duration::from_millis(50);
/// Under `auto`, a direction discarding this many changes a second (from elsewhere, on a
/// PostgreSQL 15 peer) is busy with work no one waits for.
pub const ENTER_DISCARDING: f64 = 10_000.0;
/// Under `auto`, a direction discarding changes stops counting below this rate.
pub const LEAVE_DISCARDING: f64 = 2_500.0;

/// Linux's numbers of the two policies (`sched(7)`).
pub const SCHED_OTHER: i32 = 0;
pub const SCHED_BATCH: i32 = 3;

/// Directions behind, under `auto`; `None` when `auto` is not in force.
static BEHIND: OnceLock<Mutex<usize>> = OnceLock::new();

/// Puts the process under `policy`: called once by `pgmesh run` on its main thread
/// before the async runtime starts (threads inherit the policy of the thread that creates
/// them). Under `auto` nothing changes yet; [`CatchUpVote`]s switch the threads later.
/// A process started under a policy other than the normal one (`chrt`, systemd's
/// `CPUSchedulingPolicy`) keeps it under `auto`: the operator chose.
pub fn init(policy: CpuPolicy) -> std::io::Result<()> {
    match policy {
        CpuPolicy::Normal => Ok(()),
        CpuPolicy::Batch => set_thread(0, SCHED_BATCH),
        CpuPolicy::Auto => {
            if thread_policy(None) == Some(SCHED_OTHER) {
                let _ = BEHIND.set(Mutex::new(0));
            } else {
                tracing::info!("cpu_policy auto: the process was started under another scheduling policy, which it keeps");
            }
            Ok(())
        }
    }
}

/// Whether a direction is behind, given whether it was and how old its oldest unapplied
/// commit is (`None`: nothing unapplied). Between the two thresholds it stays as it was,
/// so a lag near one of them does not switch the threads back and forth.
#[must_use]
pub fn behind_next(was_behind: bool, lag: Option<Duration>) -> bool {
    match lag {
        Some(l) if l >= ENTER_BEHIND => true,
        Some(l) if l > LEAVE_BEHIND => was_behind,
        _ => false,
    }
}

/// Whether a direction is busy discarding changes from elsewhere, given whether it was
/// and the rate at which it discarded them since the last look (changes a second).
#[must_use]
pub fn discarding_next(was_discarding: bool, per_second: f64) -> bool {
    if per_second >= ENTER_DISCARDING {
        true
    } else if per_second >= LEAVE_DISCARDING {
        was_discarding
    } else {
        false
    }
}

/// One direction's say in the policy under `auto`: the threads run under `SCHED_BATCH`
/// while at least one direction is behind or busy discarding.
#[derive(Debug, Default)]
pub struct CatchUpVote {
    behind: bool,
    discarding: bool,
    /// When the discard count was last seen, and its value then.
    seen: Option<(Instant, u64)>,
}

impl CatchUpVote {
    /// Records the direction's lag and its count of discarded changes so far (every
    /// progress report, a few times a second).
    pub fn observe(&mut self, lag: Option<Duration>, discarded: u64) {
        if BEHIND.get().is_none() {
            return;
        }
        let now = Instant::now();
        let rate = match self.seen.replace((now, discarded)) {
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64();
                #[allow(clippy::cast_precision_loss)]
                let n = discarded.saturating_sub(before) as f64;
                if secs > 0.0 {
                    n / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        let behind = behind_next(self.behind, lag);
        let discarding = discarding_next(self.discarding, rate);
        self.update(behind, discarding, lag, rate);
    }

    /// Records the age of the oldest upstream commit in a batch just handed to the
    /// writer. A sidecar started behind would otherwise wait for its first progress
    /// report (up to 200 ms, a third of some catch-ups) before it switches; this only
    /// ever switches to catching up: leaving is the progress report's call, which sees
    /// everything not yet applied.
    pub fn observe_handed_out(&mut self, age: Option<Duration>) {
        if BEHIND.get().is_none() || self.behind {
            return;
        }
        if age.is_some_and(|a| a >= ENTER_BEHIND) {
            self.update(true, self.discarding, age, 0.0);
        }
    }

    fn update(&mut self, behind: bool, discarding: bool, lag: Option<Duration>, rate: f64) {
        let Some(count) = BEHIND.get() else {
            return;
        };
        let (was_behind, was_discarding) = (self.behind, self.discarding);
        (self.behind, self.discarding) = (behind, discarding);
        let voting = self.behind || self.discarding;
        if voting != (was_behind || was_discarding) {
            let why = match (voting, self.behind, was_behind) {
                (true, true, _) => "catching up",
                (true, false, _) => "discarding changes from elsewhere",
                (false, _, true) => "caught up",
                (false, _, false) => "done discarding changes from elsewhere",
            };
            vote(count, voting, why, lag, rate);
        }
    }
}

impl Drop for CatchUpVote {
    fn drop(&mut self) {
        if let (true, Some(count)) = (self.behind || self.discarding, BEHIND.get()) {
            vote(count, false, "a direction ended", None, 0.0);
        }
    }
}

fn vote(count: &Mutex<usize>, behind: bool, why: &str, lag: Option<Duration>, discard_rate: f64) {
    let mut n = count.lock().unwrap_or_else(PoisonError::into_inner);
    let was = *n > 0;
    *n = if behind { *n + 1 } else { n.saturating_sub(1) };
    let now = *n > 0;
    if was == now {
        return;
    }
    // Under the lock: two directions switching at once must not leave the threads under
    // the policy of the one that lost the race.
    let policy = if now { SCHED_BATCH } else { SCHED_OTHER };
    match set_all_threads(policy) {
        Ok(threads) if now => {
            tracing::info!(
                ?lag,
                discard_rate = discard_rate.round(),
                threads,
                "{why}: the sidecar's threads run under SCHED_BATCH"
            );
        }
        Ok(threads) => tracing::info!(
            threads,
            "{why}: the sidecar's threads run under the normal policy"
        ),
        Err(e) => {
            tracing::warn!(error = %e, policy, "cannot change the sidecar's CPU scheduling policy")
        }
    }
}

/// Sets `policy` on every thread of this process; returns how many were set. A thread
/// that ended meanwhile is skipped.
fn set_all_threads(policy: i32) -> std::io::Result<usize> {
    let mut set = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        match set_thread(tid, policy) {
            Ok(()) => set += 1,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(set)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // one syscall with a plain struct; a measured need (see above)
fn set_thread(tid: i32, policy: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is an initialised sched_param that outlives the call, which only
    // reads it; `tid` 0 is the calling thread, any other a thread id of this process.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &raw const param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_thread(_tid: i32, _policy: i32) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCHED_BATCH exists on Linux only",
    ))
}

/// A thread's policy as Linux reports it in `/proc/…/sched` (the calling thread's for
/// `None`, else `/proc/<pid>/task/<tid>`).
#[must_use]
pub fn thread_policy(task: Option<(u32, u32)>) -> Option<i32> {
    let path = match task {
        None => "/proc/thread-self/sched".to_string(),
        Some((pid, tid)) => format!("/proc/{pid}/task/{tid}/sched"),
    };
    let sched = std::fs::read_to_string(path).ok()?;
    sched
        .lines()
        .find(|l| l.trim_start().starts_with("policy"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// The policies of every thread of process `pid`.
#[must_use]
pub fn process_policies(pid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|tid| thread_policy(Some((pid, tid))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn behind_from_250ms_until_within_50ms() {
        assert!(!behind_next(false, None));
        assert!(!behind_next(false, ms(249)));
        assert!(behind_next(false, ms(250)));
        // In between: as it was.
        assert!(behind_next(true, ms(100)));
        assert!(!behind_next(false, ms(100)));
        assert!(!behind_next(true, ms(50)));
        assert!(!behind_next(true, None));
    }

    #[test]
    fn discarding_from_10k_a_second_until_below_2500() {
        assert!(!discarding_next(false, 0.0));
        assert!(!discarding_next(false, 9_999.0));
        assert!(discarding_next(false, 10_000.0));
        // In between: as it was.
        assert!(discarding_next(true, 5_000.0));
        assert!(!discarding_next(false, 5_000.0));
        assert!(!discarding_next(true, 2_499.0));
    }

    #[test]
    fn a_thread_under_batch_starts_threads_under_batch() {
        // In a thread of its own: the test harness's threads keep their policy.
        let policies = std::thread::spawn(|| {
            set_thread(0, SCHED_BATCH).unwrap();
            let mine = thread_policy(None);
            let child = std::thread::spawn(|| thread_policy(None)).join().unwrap();
            (mine, child)
        })
        .join()
        .unwrap();
        assert_eq!(policies, (Some(SCHED_BATCH), Some(SCHED_BATCH)));
    }
}
