//! Reconnecting after transient failures.
//!
//! [`Backoff`] is the pure policy: exponential delays (100 ms doubling to 30 s) with
//! "equal jitter" (each delay is uniformly in `[d/2, d]`, so peers that failed together do
//! not reconnect together), reset once a connection stayed healthy for a while.
//!
//! [`ReconnectingStream`] uses it: it connects, starts streaming from the caller's flushed
//! LSN, and on a transient error reconnects and resumes from the flushed LSN again,
//! yielding [`ReplicationEvent::Reconnected`] so the caller drops any partially received
//! transaction (the server resends it whole). Errors that need an operator or are bugs
//! are returned to the caller, who decides; the stream keeps its position.

use std::time::Duration;

use tokio::time::Instant;

use super::config::SourceConfig;
use super::connection::ReplicationConnection;
use super::error::SourceError;
use super::stream::{ReplicationEvent, ReplicationStream, StreamConfig};
use crate::Lsn;

/// Parameters of the exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A connection that stayed up this long resets the delay to `initial`.
    pub healthy_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// Backoff state: how many consecutive failures, and since when we are connected.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
    connected_at: Option<Instant>,
    rng: u64,
}

impl Backoff {
    /// Jitter seeded from the clock (cheap; no need for cryptographic randomness).
    #[must_use]
    pub fn new(policy: BackoffPolicy) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(std::process::id()).rotate_left(32);
        Self::with_seed(policy, seed)
    }

    /// Deterministic jitter, for tests.
    #[must_use]
    pub fn with_seed(policy: BackoffPolicy, seed: u64) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            connected_at: None,
            rng: seed | 1,
        }
    }

    /// Consecutive failures counted so far.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A connection succeeded at `now`; the delay resets once it stays up `healthy_after`.
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The un-jittered delay after `failures` consecutive failures.
    #[must_use]
    pub fn base_delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// A failure happened at `now`: how long to wait before the next attempt.
    pub fn next_delay(&mut self, now: Instant) -> Duration {
        if let Some(since) = self.connected_at.take() {
            if now.saturating_duration_since(since) >= self.policy.healthy_after {
                self.failures = 0;
            }
        }
        let base = self.base_delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        let half = base / 2;
        let span = (base - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_rand() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Connects and starts a stream from `from` (helper for one attempt).
pub async fn connect_and_start(
    source: &SourceConfig,
    cfg: &StreamConfig,
    from: Lsn,
) -> Result<ReplicationStream, SourceError> {
    let conn = ReplicationConnection::connect(source).await?;
    ReplicationStream::start(conn, cfg, from).await
}

/// A stream that survives transient failures by reconnecting from the flushed LSN.
#[derive(Debug)]
pub struct ReconnectingStream {
    source: SourceConfig,
    cfg: StreamConfig,
    backoff: Backoff,
    stream: Option<ReplicationStream>,
    flushed: Lsn,
    started_once: bool,
}

impl ReconnectingStream {
    /// Nothing happens until the first [`ReconnectingStream::next_event`].
    #[must_use]
    pub fn new(
        source: SourceConfig,
        cfg: StreamConfig,
        from: Lsn,
        policy: BackoffPolicy,
    ) -> ReconnectingStream {
        ReconnectingStream {
            source,
            cfg,
            backoff: Backoff::new(policy),
            stream: None,
            flushed: from,
            started_once: false,
        }
    }

    /// Everything up to `lsn` is durable downstream (see [`ReplicationStream::set_flushed`]).
    pub fn set_flushed(&mut self, lsn: Lsn) {
        if lsn > self.flushed {
            self.flushed = lsn;
        }
        if let Some(s) = self.stream.as_mut() {
            s.set_flushed(lsn);
        }
    }

    #[must_use]
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Consecutive transient failures since the last healthy period.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// The next event. Transient errors are logged and retried with backoff (forever);
    /// other errors are returned (calling again retries).
    pub async fn next_event(&mut self) -> Result<ReplicationEvent, SourceError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                match connect_and_start(&self.source, &self.cfg, self.flushed).await {
                    Ok(mut s) => {
                        s.set_flushed(self.flushed);
                        self.backoff.connected(Instant::now());
                        self.stream = Some(s);
                        if self.started_once {
                            tracing::info!(slot = %self.cfg.slot, from = %self.flushed,
                                "replication stream reconnected");
                            return Ok(ReplicationEvent::Reconnected { from: self.flushed });
                        }
                        self.started_once = true;
                        continue;
                    }
                    Err(e) => {
                        self.fail(e).await?;
                        continue;
                    }
                }
            };
            match stream.next_event().await {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {
                    self.stream = None;
                    let e = SourceError::Closed {
                        target: self.source.target(),
                    };
                    self.fail(e).await?;
                }
                Err(e) => {
                    self.stream = None;
                    self.fail(e).await?;
                }
            }
        }
    }

    /// Waits out the backoff for a transient error; returns any other error.
    async fn fail(&mut self, e: SourceError) -> Result<(), SourceError> {
        if !e.is_transient() {
            return Err(e);
        }
        let delay = self.backoff.next_delay(Instant::now());
        tracing::warn!(slot = %self.cfg.slot, error = %e, ?delay,
            failures = self.backoff.failures(), "replication stream failed; reconnecting");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Acknowledges the flushed position and stops streaming cleanly.
    pub async fn shutdown(mut self) -> Result<(), SourceError> {
        if let Some(s) = self.stream.take() {
            s.shutdown().await?.close().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_to_30s_cap() {
        let b = Backoff::with_seed(BackoffPolicy::default(), 1);
        let ms: Vec<u128> = (0..12).map(|n| b.base_delay(n).as_millis()).collect();
        assert_eq!(
            ms,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let mut b = Backoff::with_seed(BackoffPolicy::default(), 42);
        let now = Instant::now();
        for n in 0..40 {
            let base = b.base_delay(n);
            let d = b.next_delay(now);
            assert!(d >= base / 2 && d <= base, "attempt {n}: {d:?} vs {base:?}");
        }
        // Not constant: jitter actually varies.
        let mut b = Backoff::with_seed(BackoffPolicy::default(), 7);
        let ds: Vec<Duration> = (0..10)
            .map(|_| {
                b.failures = 9;
                b.next_delay(now)
            })
            .collect();
        assert!(ds.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn resets_after_a_healthy_period_only() {
        let policy = BackoffPolicy::default();
        let mut b = Backoff::with_seed(policy, 3);
        let t0 = Instant::now();
        for _ in 0..5 {
            b.next_delay(t0);
        }
        assert_eq!(b.failures(), 5);
        // Connected but failed again quickly: keeps growing.
        b.connected(t0);
        b.next_delay(t0 + Duration::from_secs(1));
        assert_eq!(b.failures(), 6);
        // Stayed up past healthy_after: starts over at 100 ms.
        b.connected(t0);
        let d = b.next_delay(t0 + policy.healthy_after);
        assert_eq!(b.failures(), 1);
        assert!(d <= Duration::from_millis(100));
    }
}
