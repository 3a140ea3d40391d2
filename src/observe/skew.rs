//! How far this node's clock is from its peer's, from what the replication stream already
//! carries. Last-writer-wins compares commit times taken on two clocks, so a skew of
//! seconds lets the node whose clock runs ahead win conflicts it should lose; operators
//! need the number, not a guess.
//!
//! Every keepalive (and XLogData) carries the peer's send time by its clock. Its arrival
//! here, by our clock, minus that time is `skew + one-way delay + queueing`. The smallest
//! such offset in a window has the least queueing; the delay is estimated as half the
//! smallest round trip of a status update the server answered at once (a status update
//! with `reply_requested`, answered by the walsender with a keepalive; matched in
//! [`crate::source::clock`]). So
//!
//! ```text
//! skew ≈ min(offset) − min(rtt) / 2      (± min(rtt) / 2 if the path is asymmetric)
//! ```
//!
//! Positive: our clock is ahead of the peer's. Pure: times are passed in.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The estimate: our clock minus the peer's, and how sure it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkewEstimate {
    /// Microseconds our clock is ahead of the peer's (negative: behind).
    pub skew_us: i64,
    /// Half the smallest round trip: the true skew is within `skew_us ± uncertainty_us`
    /// however asymmetric the path is.
    pub uncertainty_us: i64,
    /// Message offsets in the window, one per [`BUCKET`] (its least).
    pub samples: usize,
}

impl SkewEstimate {
    /// Whether the skew is surely beyond `bound` (the uncertainty counted in its favour).
    #[must_use]
    pub fn beyond(&self, bound: Duration) -> bool {
        let bound = i64::try_from(bound.as_micros()).unwrap_or(i64::MAX);
        self.skew_us.abs().saturating_sub(self.uncertainty_us) > bound
    }
}

/// Samples over a sliding window.
#[derive(Debug)]
pub struct SkewEstimator {
    window: Duration,
    offsets: VecDeque<(Instant, i64)>,
    rtts: VecDeque<(Instant, i64)>,
}

/// Samples kept at most per kind, whatever the window (a busy stream sends many).
const MAX_SAMPLES: usize = 4096;

/// Message offsets that arrive within this of the newest kept one are folded into it
/// (the least wins): a busy stream brings thousands of messages a second, and only the
/// least queued of them matters.
pub const BUCKET: Duration = Duration::from_millis(100);

impl SkewEstimator {
    #[must_use]
    pub fn new(window: Duration) -> SkewEstimator {
        SkewEstimator {
            window,
            offsets: VecDeque::new(),
            rtts: VecDeque::new(),
        }
    }

    /// A message the peer sent at `peer_us` (its clock, Unix µs) arrived at `local_us`
    /// (ours) at monotonic time `at`.
    pub fn observe_message(&mut self, at: Instant, peer_us: i64, local_us: i64) {
        let offset = local_us.saturating_sub(peer_us);
        if let Some((t, o)) = self.offsets.back_mut() {
            if at.saturating_duration_since(*t) < BUCKET {
                *o = (*o).min(offset);
                return;
            }
        }
        push(&mut self.offsets, at, offset);
        self.expire(at);
    }

    /// A status update that asked for a reply was answered after `rtt`.
    pub fn observe_rtt(&mut self, at: Instant, rtt: Duration) {
        push(
            &mut self.rtts,
            at,
            i64::try_from(rtt.as_micros()).unwrap_or(i64::MAX),
        );
        self.expire(at);
    }

    fn expire(&mut self, now: Instant) {
        let window = self.window;
        let old = |q: &mut VecDeque<(Instant, i64)>| {
            while q
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > window)
            {
                q.pop_front();
            }
        };
        old(&mut self.offsets);
        old(&mut self.rtts);
    }

    /// The estimate from the window, once there is at least one message and one round trip.
    #[must_use]
    pub fn estimate(&self) -> Option<SkewEstimate> {
        let offset = self.offsets.iter().map(|(_, o)| *o).min()?;
        let rtt = self.rtts.iter().map(|(_, r)| *r).min()?;
        let half = rtt / 2;
        Some(SkewEstimate {
            skew_us: offset.saturating_sub(half),
            uncertainty_us: half,
            samples: self.offsets.len(),
        })
    }
}

fn push(q: &mut VecDeque<(Instant, i64)>, at: Instant, v: i64) {
    if q.len() >= MAX_SAMPLES {
        q.pop_front();
    }
    q.push_back((at, v));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000;

    /// A peer whose clock is `skew` behind ours, `one_way` away, with `queue` extra delay
    /// on some messages.
    fn feed(e: &mut SkewEstimator, start: Instant, skew: i64, one_way: i64, queues: &[i64]) {
        for (i, q) in queues.iter().enumerate() {
            let at = start + Duration::from_millis(i as u64 * 100);
            let peer_send = 1_000_000_000 + i as i64 * 100 * MS;
            let local_recv = peer_send + skew + one_way + q;
            e.observe_message(at, peer_send, local_recv);
            e.observe_rtt(
                at,
                Duration::from_micros(u64::try_from(2 * one_way + q).unwrap()),
            );
        }
    }

    #[test]
    fn the_least_queued_message_and_round_trip_give_the_skew() {
        let mut e = SkewEstimator::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(e.estimate(), None, "nothing seen yet");
        // Our clock 2.5 s ahead, 35 ms away, queueing of up to 40 ms on most messages.
        feed(
            &mut e,
            start,
            2_500 * MS,
            35 * MS,
            &[40 * MS, 3 * MS, 0, 25 * MS, 12 * MS],
        );
        let est = e.estimate().unwrap();
        assert_eq!(est.skew_us, 2_500 * MS);
        assert_eq!(est.uncertainty_us, 35 * MS);
        assert!(est.beyond(Duration::from_secs(1)));
        assert!(!est.beyond(Duration::from_secs(3)));
    }

    #[test]
    fn a_clock_behind_is_negative_and_in_sync_clocks_are_within_the_uncertainty() {
        let start = Instant::now();
        let mut behind = SkewEstimator::new(Duration::from_secs(60));
        feed(&mut behind, start, -800 * MS, 5 * MS, &[0, 2 * MS]);
        assert_eq!(behind.estimate().unwrap().skew_us, -800 * MS);
        let mut synced = SkewEstimator::new(Duration::from_secs(60));
        feed(&mut synced, start, 0, 35 * MS, &[0, 10 * MS]);
        let est = synced.estimate().unwrap();
        assert!(est.skew_us.abs() <= est.uncertainty_us, "{est:?}");
        assert!(!est.beyond(Duration::from_millis(1)));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut e = SkewEstimator::new(Duration::from_secs(1));
        let start = Instant::now();
        // A jump of the peer's clock: the old, smaller offsets must not hide it for long.
        feed(&mut e, start, 0, MS, &[0; 5]);
        let later = start + Duration::from_secs(10);
        feed(&mut e, later, -3_000 * MS, MS, &[0; 5]);
        assert_eq!(e.estimate().unwrap().skew_us, -3_000 * MS);
        assert!(e.estimate().unwrap().samples <= 11);
    }

    #[test]
    fn messages_close_together_are_one_sample_holding_their_least_offset() {
        let mut e = SkewEstimator::new(Duration::from_secs(60));
        let start = Instant::now();
        e.observe_rtt(start, Duration::from_millis(2));
        // A burst of 1,000 messages within 10 ms, the least queued in the middle.
        for i in 0..1_000i64 {
            let at = start + Duration::from_micros(u64::try_from(i).unwrap() * 10);
            let queue = if i == 500 { 0 } else { 5 * MS };
            e.observe_message(
                at,
                1_000_000_000 + i * 10,
                1_000_000_000 + i * 10 + MS + queue,
            );
        }
        let est = e.estimate().unwrap();
        assert_eq!(est.samples, 1);
        assert_eq!(est.skew_us, 0, "{est:?}");
        e.observe_message(start + BUCKET, 0, 7 * MS);
        assert_eq!(e.estimate().unwrap().samples, 2);
    }
}
