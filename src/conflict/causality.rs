//! Keeping last-writer-wins causal when a peer's clock is ahead of ours.
//!
//! Commit timestamps come from two clocks. Suppose the peer's runs `d` ahead: its write
//! of a row carries `T` = real time + `d`. Applied here at once, a local client can read
//! it and overwrite it a moment later, and that overwrite's commit time (our clock) is
//! below `T`. On the peer the overwrite then loses to the version it replaced — the peer
//! keeps its write, this node keeps the overwrite, and the two diverge for good.
//!
//! So a change becomes visible here (its downstream transaction commits) only once our
//! clock has passed its commit time: anything written here after it became visible is
//! then stamped later than it, on any clock (PostgreSQL BDR/PGD calls this
//! `maximum_clock_skew_action = wait`). Before that commit its rows are invisible, and a
//! local writer of one of them waits on the row lock and commits after it. With clocks
//! in step the commit time is always in our past when the change arrives and nothing
//! waits; with a peer `d` ahead, its changes show up `d` late here. A wait longer than a
//! few milliseconds happens before the transaction is applied (the batch before it
//! committed first, so no row lock is held while waiting); a shorter one at the batch's
//! commit, so that a peer clock a little ahead does not end every batch.
//!
//! The wait is bounded (`[replication] clock_wait_max`): a peer clock hours ahead
//! would otherwise stop the direction for hours. Past the bound the change is applied
//! at once and the sidecar says that overwrites of it may diverge until the clocks are
//! fixed.

use std::time::Duration;

use crate::protocol::pgoutput::PgTimestamp;

/// What to do before applying a change committed at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockWait {
    /// Its commit time is already in our past.
    Ready,
    /// Wait this long first.
    Wait(Duration),
    /// It is further ahead than the bound: apply now (it is this far ahead).
    TooFar(Duration),
}

/// How long to wait so that our clock (`now`, Unix µs) has passed `commit` (strictly:
/// a local commit in the same microsecond would tie, and ties go by node name, not by
/// what happened first). `max` zero turns waiting off.
#[must_use]
pub fn clock_wait(commit: PgTimestamp, now_unix_micros: i64, max: Duration) -> ClockWait {
    let Some(commit) = commit.to_unix_micros() else {
        return ClockWait::Ready;
    };
    let ahead_micros = commit.saturating_sub(now_unix_micros);
    if ahead_micros < 0 {
        return ClockWait::Ready;
    }
    // One microsecond past the commit time.
    let ahead = Duration::from_micros(ahead_micros.unsigned_abs() + 1);
    if max.is_zero() || ahead > max {
        ClockWait::TooFar(ahead)
    } else {
        ClockWait::Wait(ahead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_micros: i64) -> PgTimestamp {
        PgTimestamp::from_unix_micros(unix_micros).unwrap()
    }

    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn a_commit_in_our_past_is_applied_at_once() {
        assert_eq!(clock_wait(at(1_000), 1_001, MAX), ClockWait::Ready);
        assert_eq!(clock_wait(at(1_000), 5_000_000, MAX), ClockWait::Ready);
    }

    #[test]
    fn a_commit_ahead_of_our_clock_waits_until_just_past_it() {
        assert_eq!(
            clock_wait(at(3_000_000), 0, MAX),
            ClockWait::Wait(Duration::from_micros(3_000_001))
        );
        // The same microsecond would tie: one more.
        assert_eq!(
            clock_wait(at(7), 7, MAX),
            ClockWait::Wait(Duration::from_micros(1))
        );
    }

    #[test]
    fn beyond_the_bound_or_with_waiting_off_it_is_applied_at_once_and_said_so() {
        assert_eq!(
            clock_wait(at(20_000_000), 0, MAX),
            ClockWait::TooFar(Duration::from_micros(20_000_001))
        );
        assert_eq!(
            clock_wait(at(5), 0, Duration::ZERO),
            ClockWait::TooFar(Duration::from_micros(6))
        );
        assert_eq!(clock_wait(at(5), 9, Duration::ZERO), ClockWait::Ready);
    }
}
