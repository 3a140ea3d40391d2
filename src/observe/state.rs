//! What each direction shows to `/readyz`: its phase, positions, lag and last error.
//! Written by the direction's tasks with plain atomics (the error text behind a mutex,
//! taken only when an error happens), read by the HTTP handler.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::metrics::DirectionMetrics;
use super::skew::SkewEstimate;
use crate::protocol::pgoutput::PgTimestamp;
use crate::Lsn;

/// Where a direction is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// Opening the apply session and the stream (first attempt).
    Connecting,
    /// Streaming from the peer, apply session connected.
    Streaming,
    /// Waiting to retry after an error.
    Reconnecting,
    /// Stopped on request (shutdown).
    Stopped,
    /// Stopped for good: an operator must act (see the error).
    Failed,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Connecting,
        Phase::Streaming,
        Phase::Reconnecting,
        Phase::Stopped,
        Phase::Failed,
    ];

    fn from_u8(v: u8) -> Phase {
        Phase::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(Phase::Failed)
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Streaming => "streaming",
            Phase::Reconnecting => "reconnecting",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
}

/// Shared state of one direction (changes of `peer` applied into this node).
pub struct DirectionState {
    peer: String,
    phase: AtomicU8,
    /// Committed here (the origin position the writer last set).
    applied: AtomicU64,
    /// Read and done with: applied, or skipped while nothing was in flight.
    done: AtomicU64,
    /// The peer's current WAL position, last time it was asked.
    peer_wal: AtomicU64,
    /// What the peer's slot has confirmed (at least: where streaming starts).
    peer_confirmed: AtomicU64,
    lag_micros: AtomicU64,
    /// Unix microseconds when the direction last stopped streaming; 0 while streaming.
    down_since: AtomicI64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Peer time (PgTimestamp micros) such that every change of the peer not applied here
    /// yet commits after it; `i64::MIN` until known. What tombstone pruning waits for.
    horizon: AtomicI64,
    /// This node's clock minus the peer's (µs); `i64::MIN` until estimated.
    skew_us: AtomicI64,
    skew_uncertainty_us: AtomicI64,
    skew_samples: AtomicU64,
    /// The skew is surely beyond `[replication] clock_skew_warn`.
    skew_beyond: AtomicBool,
    /// Downstream transactions committed, and those of them sent in one message.
    commits: AtomicU64,
    one_message_commits: AtomicU64,
    pub metrics: DirectionMetrics,
}

/// A snapshot for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct DirectionReport {
    pub peer: String,
    pub state: Phase,
    pub applied_lsn: String,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// This node's clock against the peer's; `None` until estimated.
    pub clock_skew: Option<ClockSkewReport>,
    /// Downstream transactions that committed a batch of the peer's transactions, since
    /// the sidecar started.
    pub commits: u64,
    /// Of `commits`, those written and committed in one message (nothing needed a
    /// decision; `apply::one_message`).
    pub one_message_commits: u64,
}

/// The clock skew estimate of a direction ([`super::skew`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClockSkewReport {
    /// This node's clock minus the peer's (positive: ours is ahead).
    pub skew_seconds: f64,
    /// The true skew is within `skew_seconds ± uncertainty_seconds`.
    pub uncertainty_seconds: f64,
    /// Message offsets it rests on (one per 100 ms of stream).
    pub samples: u64,
    /// Surely beyond `[replication] clock_skew_warn`.
    pub beyond_warn: bool,
}

impl DirectionState {
    #[must_use]
    pub fn new(peer: &str) -> Arc<DirectionState> {
        Arc::new(DirectionState {
            peer: peer.to_string(),
            phase: AtomicU8::new(Phase::Connecting as u8),
            applied: AtomicU64::new(0),
            done: AtomicU64::new(0),
            peer_wal: AtomicU64::new(0),
            peer_confirmed: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            down_since: AtomicI64::new(crate::pgtime::unix_micros_now()),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            horizon: AtomicI64::new(i64::MIN),
            skew_us: AtomicI64::new(i64::MIN),
            skew_uncertainty_us: AtomicI64::new(0),
            skew_samples: AtomicU64::new(0),
            skew_beyond: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            one_message_commits: AtomicU64::new(0),
            metrics: DirectionMetrics::new(peer),
        })
    }

    #[must_use]
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Everything of the peer up to its time `ts` is applied here: a batch whose last
    /// upstream transaction committed at `ts` is committed, or the stream is idle with
    /// nothing pending at a keepalive the peer sent at `ts`.
    pub fn passed_peer_time(&self, ts: PgTimestamp) {
        self.horizon.fetch_max(ts.0, Ordering::Relaxed);
    }

    /// See [`DirectionState::passed_peer_time`]; `None` before the first batch or idle
    /// keepalive of this process.
    #[must_use]
    pub fn horizon(&self) -> Option<PgTimestamp> {
        let h = self.horizon.load(Ordering::Relaxed);
        (h != i64::MIN).then_some(PgTimestamp(h))
    }

    /// The latest clock skew estimate, and whether it is surely beyond the warning bound.
    pub fn clock_skew(&self, est: &SkewEstimate, beyond_warn: bool) {
        self.skew_us.store(est.skew_us, Ordering::Relaxed);
        self.skew_uncertainty_us
            .store(est.uncertainty_us, Ordering::Relaxed);
        self.skew_samples
            .store(est.samples as u64, Ordering::Relaxed);
        self.skew_beyond.store(beyond_warn, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        self.metrics
            .clock_skew(est.skew_us as f64 / 1e6, est.uncertainty_us as f64 / 1e6);
    }

    #[must_use]
    pub fn clock_skew_report(&self) -> Option<ClockSkewReport> {
        let skew = self.skew_us.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        (skew != i64::MIN).then(|| ClockSkewReport {
            skew_seconds: skew as f64 / 1e6,
            uncertainty_seconds: self.skew_uncertainty_us.load(Ordering::Relaxed) as f64 / 1e6,
            samples: self.skew_samples.load(Ordering::Relaxed),
            beyond_warn: self.skew_beyond.load(Ordering::Relaxed),
        })
    }

    #[must_use]
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    pub fn set_phase(&self, phase: Phase) {
        let was = Phase::from_u8(self.phase.swap(phase as u8, Ordering::Relaxed));
        let streaming = phase == Phase::Streaming;
        self.metrics
            .streaming
            .set(if streaming { 1.0 } else { 0.0 });
        if streaming {
            self.down_since.store(0, Ordering::Relaxed);
        } else if was == Phase::Streaming {
            self.down_since
                .store(crate::pgtime::unix_micros_now(), Ordering::Relaxed);
        }
    }

    /// The stream stopped on `error` and will be retried.
    pub fn retrying(&self, error: &str) {
        self.set_error(error);
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.metrics.reconnects.increment(1);
        self.set_phase(Phase::Reconnecting);
    }

    /// The direction stopped for good on `error`.
    pub fn failed(&self, error: &str) {
        self.set_error(error);
        self.set_phase(Phase::Failed);
    }

    /// A step of the direction has lasted long ([`crate::sidecar`]'s stall watch): shown
    /// as its last error until another replaces it.
    pub fn stalled(&self, what: &str) {
        self.set_error(what);
    }

    fn set_error(&self, error: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.to_string());
        }
    }

    /// The writer committed up to `end`.
    pub fn applied(&self, end: Lsn) {
        self.applied.fetch_max(end.0, Ordering::Relaxed);
    }

    /// Everything up to `done` needs nothing more; the oldest transaction received but not
    /// applied committed `lag` ago (`None`: nothing pending).
    pub fn progress(&self, done: Lsn, lag: Option<Duration>) {
        self.done.store(done.0, Ordering::Relaxed);
        let lag = lag.unwrap_or_default();
        self.lag_micros.store(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.metrics.lag_seconds.set(lag.as_secs_f64());
        self.update_lag_bytes();
    }

    /// The peer's WAL is at `lsn` now, and its slot for this direction has confirmed
    /// `confirmed` (`None`: no such slot).
    pub fn peer_wal(&self, lsn: Lsn, confirmed: Option<Lsn>) {
        self.peer_wal.store(lsn.0, Ordering::Relaxed);
        self.peer_confirmed
            .store(confirmed.map_or(0, |c| c.0), Ordering::Relaxed);
        self.update_lag_bytes();
        // While the stream is down nothing new arrives to date: the lag is at least the
        // time since it went down (when the peer has anything to send).
        let down = self.down_since.load(Ordering::Relaxed);
        if down != 0 && self.lag_bytes() > 0 {
            let micros =
                u64::try_from(crate::pgtime::unix_micros_now().saturating_sub(down)).unwrap_or(0);
            let lag = self.lag_micros.load(Ordering::Relaxed).max(micros);
            self.lag_micros.store(lag, Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)]
            self.metrics.lag_seconds.set(lag as f64 / 1e6);
        }
    }

    fn lag_bytes(&self) -> u64 {
        // Nothing before the slot's confirmed position is ever sent again: a fresh slot
        // with nothing applied yet is not behind by the peer's whole WAL.
        let done = self
            .done
            .load(Ordering::Relaxed)
            .max(self.applied.load(Ordering::Relaxed))
            .max(self.peer_confirmed.load(Ordering::Relaxed));
        let peer = self.peer_wal.load(Ordering::Relaxed);
        if peer == 0 {
            0
        } else {
            peer.saturating_sub(done)
        }
    }

    fn update_lag_bytes(&self) {
        #[allow(clippy::cast_precision_loss)]
        self.metrics.lag_bytes.set(self.lag_bytes() as f64);
    }

    /// A downstream transaction committed; `in_one_message` when it went as one message.
    pub fn committed(&self, in_one_message: bool) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        if in_one_message {
            self.one_message_commits.fetch_add(1, Ordering::Relaxed);
            self.metrics.one_message_commits.increment(1);
        }
    }

    #[must_use]
    pub fn report(&self) -> DirectionReport {
        #[allow(clippy::cast_precision_loss)]
        let lag_seconds = self.lag_micros.load(Ordering::Relaxed) as f64 / 1e6;
        DirectionReport {
            peer: self.peer.clone(),
            state: self.phase(),
            applied_lsn: Lsn(self.applied.load(Ordering::Relaxed)).to_string(),
            lag_bytes: self.lag_bytes(),
            lag_seconds,
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            clock_skew: self.clock_skew_report(),
            commits: self.commits.load(Ordering::Relaxed),
            one_message_commits: self.one_message_commits.load(Ordering::Relaxed),
        }
    }
}

/// How long ago a peer's commit time was; a peer clock ahead of ours reads as no lag,
/// never as a negative one.
#[must_use]
pub fn age(ts: PgTimestamp) -> Option<Duration> {
    let committed = ts.to_system_time()?;
    Some(
        SystemTime::now()
            .duration_since(committed)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_lag_follows_positions() {
        let s = DirectionState::new("a");
        assert_eq!(s.phase(), Phase::Connecting);
        for p in Phase::ALL {
            s.set_phase(p);
            assert_eq!(s.phase(), p);
        }
        s.set_phase(Phase::Streaming);
        s.peer_wal(Lsn(1000), None);
        assert_eq!(s.report().lag_bytes, 1000);
        s.peer_wal(Lsn(1000), Some(Lsn(200)));
        assert_eq!(s.report().lag_bytes, 800);
        s.applied(Lsn(400));
        s.progress(Lsn(300), Some(Duration::from_millis(1500)));
        let r = s.report();
        assert_eq!(r.lag_bytes, 600, "applied wins over an older done");
        assert!((r.lag_seconds - 1.5).abs() < 1e-9);
        s.progress(Lsn(1000), None);
        assert_eq!(s.report().lag_bytes, 0);
        s.retrying("connection refused");
        let r = s.report();
        assert_eq!(r.state, Phase::Reconnecting);
        assert_eq!(r.reconnects, 1);
        assert_eq!(r.last_error.as_deref(), Some("connection refused"));
        assert_eq!(r.applied_lsn, "0/190");
        assert_eq!(r.clock_skew, None, "not estimated yet");
        let est = SkewEstimate {
            skew_us: -1_203_000,
            uncertainty_us: 4_000,
            samples: 12,
        };
        s.clock_skew(&est, true);
        let c = s.report().clock_skew.unwrap();
        assert!((c.skew_seconds + 1.203).abs() < 1e-9, "{c:?}");
        assert!((c.uncertainty_seconds - 0.004).abs() < 1e-9, "{c:?}");
        assert_eq!((c.samples, c.beyond_warn), (12, true));
    }
}
