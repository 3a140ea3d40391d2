//! Clock facts the stream carries, for the skew estimate ([`crate::observe::skew`]).
//!
//! Every XLogData and keepalive carries the walsender's send time; a [`ClockSample`] pairs
//! it with our clocks at arrival. A standby status update that asks for a reply
//! (`reply_requested`) is answered by the walsender at once with a keepalive
//! (`ProcessStandbyReplyMessage`); [`RoundTrips`] matches the two into a round trip.
//!
//! A keepalive the walsender sent on its own, before our request reached it, would pass
//! for a round trip shorter than the real one (and shrink the uncertainty below the
//! truth). So a match counts only when
//! - the first frame after the request is a keepalive: data in between means the
//!   walsender was sending, and then it also sends keepalives of its own; and
//! - by the walsender's clock at least as much time passed between the frame before the
//!   request and the answer as passed here between that frame's arrival and the request.
//!   The answer leaves after the request arrives, so it always passes; a keepalive sent
//!   before the request arrived often does not. Only clock *rates* are compared here,
//!   never the two clocks' readings, so the check needs no skew.
//!
//! A round trip measured too long (the walsender busy decoding) only widens the
//! uncertainty, and the estimator keeps the least one in its window.
//!
//! Pure: times are passed in.

use std::time::Duration;

use tokio::time::Instant;

/// One frame's times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSample {
    /// Our monotonic clock at arrival.
    pub at: Instant,
    /// Our wall clock at arrival (PostgreSQL epoch, µs).
    pub local_us: i64,
    /// The walsender's send time by its clock (PostgreSQL epoch, µs).
    pub peer_us: i64,
    /// This frame answered our request for a reply after this long.
    pub round_trip: Option<Duration>,
}

/// Matches requests for a reply with their answers.
#[derive(Debug, Default)]
pub struct RoundTrips {
    /// The last frame received: arrival, and its send time by the peer's clock (µs).
    last: Option<(Instant, i64)>,
    /// A request waiting for its answer: when it left, and the frame before it.
    pending: Option<(Instant, Option<(Instant, i64)>)>,
    last_request: Option<Instant>,
}

impl RoundTrips {
    /// A status update asking for a reply leaves now (`at`: just before it is written, so
    /// a round trip is never measured short). A request still waiting for its answer is
    /// kept: the next answer belongs to it.
    pub fn requested(&mut self, at: Instant) {
        if self.pending.is_none() {
            self.pending = Some((at, self.last));
        }
        self.last_request = Some(at);
    }

    /// How long since the last request for a reply (`None`: never asked).
    #[must_use]
    pub fn since_request(&self, now: Instant) -> Option<Duration> {
        self.last_request.map(|t| now.saturating_duration_since(t))
    }

    /// A frame sent at `peer_us` (peer's clock) arrived at `at`; the round trip when it
    /// is the answer to the pending request.
    pub fn arrived(&mut self, at: Instant, peer_us: i64, keepalive: bool) -> Option<Duration> {
        let pending = self.pending.take();
        self.last = Some((at, peer_us));
        let (sent, before) = pending?;
        if !keepalive {
            return None;
        }
        if let Some((prev_at, prev_peer)) = before {
            let here = i64::try_from(sent.saturating_duration_since(prev_at).as_micros())
                .unwrap_or(i64::MAX);
            if peer_us.saturating_sub(prev_peer) < here {
                return None;
            }
        }
        Some(at.saturating_duration_since(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn us(d: Duration) -> i64 {
        i64::try_from(d.as_micros()).unwrap()
    }

    /// The peer's clock is 3 s behind ours; the path is 10 ms each way.
    const SKEW: i64 = 3_000_000;
    const ONE_WAY: Duration = Duration::from_millis(10);

    fn peer_time(start: Instant, t: Instant) -> i64 {
        1_000_000_000 + us(t - start) - SKEW
    }

    #[test]
    fn a_request_answered_by_a_keepalive_is_a_round_trip() {
        let start = Instant::now();
        let mut r = RoundTrips::default();
        assert_eq!(r.since_request(start), None);
        // A keepalive sent at start arrives; 500 ms later we ask; the answer leaves when
        // the request arrives.
        let sent_prev = start;
        assert_eq!(
            r.arrived(sent_prev + ONE_WAY, peer_time(start, sent_prev), true),
            None
        );
        let ask = start + 500 * MS;
        r.requested(ask);
        let answer_sent = ask + ONE_WAY;
        let rtt = r.arrived(answer_sent + ONE_WAY, peer_time(start, answer_sent), true);
        assert_eq!(rtt, Some(2 * ONE_WAY));
        assert_eq!(r.since_request(ask + 5 * MS), Some(5 * MS));
        // Answered once: a later keepalive is no round trip.
        assert_eq!(r.arrived(ask + 900 * MS, peer_time(start, ask), true), None);
    }

    #[test]
    fn a_keepalive_sent_before_the_request_arrived_is_no_round_trip() {
        let start = Instant::now();
        let mut r = RoundTrips::default();
        r.arrived(start + ONE_WAY, peer_time(start, start), true);
        // We ask 500 ms after that frame arrived; the walsender had sent a keepalive of
        // its own 100 ms after the first one, delayed on the way.
        let ask = start + 510 * MS;
        r.requested(ask);
        let own = start + 100 * MS;
        assert_eq!(r.arrived(ask + MS, peer_time(start, own), true), None);
    }

    #[test]
    fn data_after_the_request_voids_it_and_a_second_request_keeps_the_first() {
        let start = Instant::now();
        let mut r = RoundTrips::default();
        r.requested(start);
        assert_eq!(r.arrived(start + 5 * MS, 0, false), None, "XLogData first");
        assert_eq!(
            r.arrived(start + 6 * MS, 1, true),
            None,
            "no request pending"
        );
        // Two requests before an answer: the answer is measured from the first.
        let first = start + 100 * MS;
        r.requested(first);
        r.requested(first + 3 * MS);
        let rtt = r.arrived(first + 20 * MS, 1 + us(100 * MS), true);
        assert_eq!(rtt, Some(20 * MS));
        assert_eq!(r.since_request(first + 20 * MS), Some(17 * MS));
    }
}
