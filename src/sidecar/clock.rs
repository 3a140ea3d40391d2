//! How far this node's clock is from the peer's, for one direction: the stream's clock
//! samples ([`crate::source::clock`]) go into the estimator ([`crate::observe::skew`]);
//! the estimate goes to `/readyz` and the metrics at every acknowledgement tick, to
//! `pgmesh.clock_skew` (read by `pgmesh status`) when it moved by [`STORE_CHANGE_US`]
//! (at most every [`STORE_INTERVAL`]) or at least every [`STORE_REFRESH`], and to the log
//! as a warning at most every [`WARN_INTERVAL`] while it is surely beyond
//! `[replication] clock_skew_warn`.
//!
//! The estimator lives as long as the direction, across reconnects: a reconnect changes
//! neither clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::observe::skew::{SkewEstimate, SkewEstimator};
use crate::observe::{format_skew, DirectionState};
use crate::source::clock::ClockSample;

/// Samples older than this leave the estimate (a stepped clock shows within it).
pub const WINDOW: Duration = Duration::from_secs(300);
/// The estimate is written to `pgmesh.clock_skew` at most this often...
pub const STORE_INTERVAL: Duration = Duration::from_secs(10);
/// ...when it moved by this much (µs, skew or uncertainty) since it was last written...
pub const STORE_CHANGE_US: i64 = 1_000;
/// ...and at least this often, so `pgmesh status` sees it is current (it shows an
/// estimate older than a minute with its age). Each write is a commit record in the WAL.
pub const STORE_REFRESH: Duration = Duration::from_secs(30);
/// A skew beyond the bound is logged at most this often.
pub const WARN_INTERVAL: Duration = Duration::from_secs(300);

const UPSERT: &str = "\
INSERT INTO pgmesh.clock_skew AS c (peer, skew_us, uncertainty_us, samples, measured_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (peer) DO UPDATE
   SET skew_us = excluded.skew_us, uncertainty_us = excluded.uncertainty_us,
       samples = excluded.samples, measured_at = excluded.measured_at";

/// What to do with the estimate now (pure; see [`ClockWatch::due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub estimate: SkewEstimate,
    pub beyond: bool,
    pub warn: bool,
    pub store: bool,
}

/// One direction's clock watch.
#[derive(Debug)]
pub struct ClockWatch {
    estimator: SkewEstimator,
    bound: Duration,
    warned: Option<Instant>,
    stored: Option<(Instant, SkewEstimate)>,
    /// Writing to `pgmesh.clock_skew` failed; when, so it is retried (and logged) rarely.
    store_failed: Option<Instant>,
}

impl ClockWatch {
    #[must_use]
    pub fn new(bound: Duration) -> ClockWatch {
        ClockWatch {
            estimator: SkewEstimator::new(WINDOW),
            bound,
            warned: None,
            stored: None,
            store_failed: None,
        }
    }

    /// One frame's times (called per XLogData or keepalive: a few comparisons).
    pub fn observe(&mut self, s: ClockSample) {
        self.estimator.observe_message(s.at, s.peer_us, s.local_us);
        if let Some(rtt) = s.round_trip {
            self.estimator.observe_rtt(s.at, rtt);
        }
    }

    /// The estimate, and whether to warn and to store it now; records that it did.
    pub fn due(&mut self, now: Instant) -> Option<Due> {
        let estimate = self.estimator.estimate()?;
        let beyond = estimate.beyond(self.bound);
        let warn = beyond
            && self
                .warned
                .is_none_or(|t| now.saturating_duration_since(t) >= WARN_INTERVAL);
        if warn {
            self.warned = Some(now);
        }
        let retry = self
            .store_failed
            .is_none_or(|t| now.saturating_duration_since(t) >= WARN_INTERVAL);
        let store = retry
            && self.stored.is_none_or(|(t, last)| {
                let age = now.saturating_duration_since(t);
                let moved = (estimate.skew_us - last.skew_us).abs() >= STORE_CHANGE_US
                    || (estimate.uncertainty_us - last.uncertainty_us).abs() >= STORE_CHANGE_US;
                age >= STORE_REFRESH || (age >= STORE_INTERVAL && moved)
            });
        if store {
            self.stored = Some((now, estimate));
        }
        Some(Due {
            estimate,
            beyond,
            warn,
            store,
        })
    }

    /// Publishes the estimate (state, metrics), logs and stores it when due. Never fails
    /// the direction: a failed write is logged and retried after [`WARN_INTERVAL`].
    pub async fn tick(
        &mut self,
        node: &str,
        peer: &str,
        state: &DirectionState,
        catalog: &tokio_postgres::Client,
    ) {
        let now = Instant::now();
        let Some(due) = self.due(now) else {
            return;
        };
        let est = due.estimate;
        state.clock_skew(&est, due.beyond);
        if due.warn {
            tracing::warn!(skew = %format_skew_us(&est),
                bound = ?self.bound, samples = est.samples,
                "node {node}'s clock is off node {peer}'s by more than [replication] clock_skew_warn: last-writer-wins favours writes of the node whose clock is ahead; sync both clocks (chrony/NTP)");
        }
        if !due.store {
            return;
        }
        let samples = i32::try_from(est.samples).unwrap_or(i32::MAX);
        let stored = catalog
            .execute(
                UPSERT,
                &[&peer, &est.skew_us, &est.uncertainty_us, &samples],
            )
            .await;
        match stored {
            Ok(_) => self.store_failed = None,
            Err(e) => {
                self.store_failed = Some(now);
                tracing::warn!(error = %crate::sqlconn::pg_message(&e),
                    "cannot record the clock skew in pgmesh.clock_skew (pgmesh status will not show it): run `pgmesh setup` (migration V8) and grant SELECT, INSERT, UPDATE on it to the sidecar's role");
            }
        }
    }
}

fn format_skew_us(est: &SkewEstimate) -> String {
    #[allow(clippy::cast_precision_loss)]
    format_skew(est.skew_us as f64 / 1e6, est.uncertainty_us as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, offset_us: i64, rtt: Option<Duration>) -> ClockSample {
        ClockSample {
            at,
            local_us: 1_000_000_000 + offset_us,
            peer_us: 1_000_000_000,
            round_trip: rtt,
        }
    }

    #[test]
    fn nothing_is_due_before_a_message_and_a_round_trip() {
        let start = Instant::now();
        let mut w = ClockWatch::new(Duration::from_millis(500));
        assert_eq!(w.due(start), None);
        w.observe(sample(start, 1_000, None));
        assert_eq!(w.due(start), None, "no round trip yet");
        w.observe(sample(start, 1_000, Some(Duration::from_micros(400))));
        let d = w.due(start).unwrap();
        assert_eq!(d.estimate.skew_us, 800);
        assert!(!d.beyond && !d.warn && d.store, "{d:?}");
    }

    #[test]
    fn a_skew_beyond_the_bound_warns_once_per_interval_and_stores_every_few_seconds() {
        let start = Instant::now();
        let mut w = ClockWatch::new(Duration::from_millis(500));
        // Our clock 1.2 s ahead, 4 ms round trip.
        w.observe(sample(start, 1_202_000, Some(Duration::from_millis(4))));
        let at = |s: u64| start + Duration::from_millis(s);
        let first = w.due(at(0)).unwrap();
        assert_eq!(format_skew_us(&first.estimate), "+1.200 s ± 0.002 s");
        assert!(first.beyond && first.warn && first.store, "{first:?}");
        let soon = w.due(at(200)).unwrap();
        assert!(soon.beyond && !soon.warn && !soon.store, "{soon:?}");
        // Unchanged: written again only after the refresh interval.
        assert!(!w.due(at(10_000)).unwrap().store);
        assert!(w.due(at(30_000)).unwrap().store);
        // Moved by 2 ms: written once the minimum interval passed.
        w.observe(sample(
            at(31_000),
            1_200_000,
            Some(Duration::from_millis(4)),
        ));
        assert!(!w.due(at(35_000)).unwrap().store);
        let moved = w.due(at(40_000)).unwrap();
        assert!(moved.store && !moved.warn, "{moved:?}");
        assert_eq!(moved.estimate.skew_us, 1_198_000);
        // Still beyond after the interval (the samples keep coming): warned again.
        w.observe(sample(
            at(299_000),
            1_202_000,
            Some(Duration::from_millis(4)),
        ));
        assert!(w.due(at(300_000)).unwrap().warn);
    }

    #[test]
    fn within_the_uncertainty_is_not_beyond() {
        let start = Instant::now();
        let mut w = ClockWatch::new(Duration::from_millis(500));
        // 0.6 s off but the round trip is 400 ms: surely beyond only 0.4 s.
        w.observe(sample(start, 800_000, Some(Duration::from_millis(400))));
        let d = w.due(start).unwrap();
        assert_eq!(d.estimate.skew_us, 600_000);
        assert!(!d.beyond && !d.warn, "{d:?}");
    }
}
