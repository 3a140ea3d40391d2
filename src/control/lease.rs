//! The agent's etcd lease, as its own monotonic clock sees it.
//!
//! The fence deadline is `send time of the last successful renewal + TTL − safety margin`:
//! etcd restarts the lease's TTL when it *receives* the renewal, which is after we sent
//! it, so a deadline counted from the send time can only be early, never late. Past the
//! deadline the lease is treated as lost even if etcd might still hold it, and is never
//! used again: a new lease starts over, after a quarantine of one TTL in which nothing
//! new is taken (the peer's takeover or an operator's forced failover may be landing).
//!
//! **A renewal counts only once a quorum confirms its leader.** etcd 3.4 (before 3.4.25)
//! lets a leader that lost its quorum go on renewing leases until it steps down, while
//! the majority side elects a new leader whose clock for our lease started earlier. So a
//! renewal moves the deadline only when a linearizable read (which needs a quorum) sent
//! after it is answered in the same raft term: the renewing leader was still the leader
//! then, and any later leader restarts every lease's TTL when it takes over.

use std::time::{Duration, Instant};

/// What happened to the lease: granted, or lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    None,
    Granted(i64),
    /// The lease is gone: etcd said so, or our deadline passed.
    Lost {
        lease: i64,
        reason: String,
    },
}

/// The lease as the agent's decisions see it: a copy the keeper task publishes after each
/// step, with the same answers as [`LeaseState`] for that moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    id: Option<i64>,
    deadline: Option<Instant>,
    lost_at: Option<Instant>,
    /// When a lease was granted after one was lost: etcd had a quorum again then.
    regained_at: Option<Instant>,
    ttl: Duration,
}

impl LeaseView {
    /// The lease id while it is live by our clock.
    #[must_use]
    pub fn live(&self, now: Instant) -> Option<i64> {
        match (self.id, self.deadline) {
            (Some(id), Some(d)) if now < d => Some(id),
            _ => None,
        }
    }

    /// When the region must be fenced unless the lease is renewed.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.id.and(self.deadline)
    }

    /// Within one TTL of losing a lease, or of getting one again after a loss. The second
    /// matters after etcd had no quorum: an operator's forced failover to the peer is
    /// recorded only once the quorum is back (the peer claims it then), so a region that
    /// regains a lease must leave it that long before taking an endpoint without an owner.
    #[must_use]
    pub fn quarantined(&self, now: Instant) -> bool {
        self.lost_at.is_some_and(|t| now < t + self.ttl)
            || self.regained_at.is_some_and(|t| now < t + self.ttl)
    }

    /// A confirmed renewal of lease `id` moved its deadline to `deadline` (never back).
    pub fn extend(&mut self, id: i64, deadline: Instant) {
        if self.id == Some(id) {
            self.deadline = Some(self.deadline.map_or(deadline, |d| d.max(deadline)));
        }
    }
}

/// A renewal of lease `lease` sent at `sent`, answered by the leader of raft term `term`
/// for `ttl`, waiting for a quorum read in the same term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unconfirmed {
    pub lease: i64,
    pub sent: Instant,
    pub ttl: Duration,
    pub term: u64,
    pub margin: Duration,
}

impl Unconfirmed {
    /// The deadline the renewal earns if a quorum read answered in `read_term` (sent
    /// after the renewal was answered) confirms it: only in the same term.
    #[must_use]
    pub fn confirmed_by(&self, read_term: u64) -> Option<Instant> {
        (self.term == read_term && self.term != 0)
            .then(|| self.sent + self.ttl.saturating_sub(self.margin))
    }
}

/// The lease's life by our clock: granted, extended by confirmed renewals, lost at its
/// deadline or when etcd says it is gone. The I/O (grants, renewals through one or more
/// members) is the keeper's ([`super::lease_keeper`]); this only decides.
pub struct LeaseState {
    ttl: Duration,
    margin: Duration,
    id: Option<i64>,
    deadline: Option<Instant>,
    lost_at: Option<Instant>,
    regained_at: Option<Instant>,
    /// Leases we gave up on by our clock that etcd may still hold: revoked as soon as
    /// etcd answers, so the keys bound to them (our member key, endpoints we can no
    /// longer serve) go at once instead of a TTL later.
    stale: Vec<i64>,
}

impl LeaseState {
    #[must_use]
    pub fn new(ttl: Duration, margin: Duration) -> LeaseState {
        LeaseState {
            ttl,
            margin,
            id: None,
            deadline: None,
            lost_at: None,
            regained_at: None,
            stale: Vec::new(),
        }
    }

    /// The lease id while it is live by our clock.
    #[must_use]
    pub fn live(&self, now: Instant) -> Option<i64> {
        self.view().live(now)
    }

    /// The lease being kept (live or not yet found lost).
    #[must_use]
    pub fn id(&self) -> Option<i64> {
        self.id
    }

    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    #[must_use]
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// What the agent reads of the lease.
    #[must_use]
    pub fn view(&self) -> LeaseView {
        LeaseView {
            id: self.id,
            deadline: self.deadline,
            lost_at: self.lost_at,
            regained_at: self.regained_at,
            ttl: self.ttl,
        }
    }

    /// When the region must be fenced unless the lease is renewed.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.view().deadline()
    }

    /// Within one TTL of losing a lease.
    #[must_use]
    pub fn quarantined(&self, now: Instant) -> bool {
        self.view().quarantined(now)
    }

    fn lose(&mut self, now: Instant, reason: String) -> LeaseChange {
        let lease = self.id.take().unwrap_or(0);
        if lease != 0 {
            self.stale.push(lease);
        }
        self.deadline = None;
        self.lost_at = Some(now);
        LeaseChange::Lost { lease, reason }
    }

    /// A grant requested at `sent` answered with lease `id`: live until `sent + TTL −
    /// margin` unless renewed.
    pub fn granted(&mut self, id: i64, sent: Instant) -> LeaseChange {
        if self.id.is_some() {
            // Two grants raced; keep the first, the other expires unused.
            self.stale.push(id);
            return LeaseChange::None;
        }
        self.id = Some(id);
        self.deadline = Some(sent + self.ttl.saturating_sub(self.margin));
        if self.lost_at.is_some() {
            self.regained_at = Some(sent);
        }
        LeaseChange::Granted(id)
    }

    /// The lease is lost once its deadline passed without a confirmed renewal.
    pub fn expire(&mut self, now: Instant) -> LeaseChange {
        match (self.id, self.deadline) {
            (Some(_), Some(d)) if now >= d => {
                self.lose(now, "the fence deadline passed without a renewal".into())
            }
            _ => LeaseChange::None,
        }
    }

    /// etcd answered a renewal of `id` with "no such lease": it expired there.
    pub fn gone(&mut self, id: i64, now: Instant) -> LeaseChange {
        if self.id == Some(id) {
            self.lose(now, "etcd says the lease expired".into())
        } else {
            LeaseChange::None
        }
    }

    /// Leases given up on that etcd may still hold, taken out to be revoked.
    pub fn take_stale(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.stale)
    }

    /// A confirmed renewal of lease `id` moved its deadline to `deadline` (never back;
    /// nothing for a lease given up since).
    pub fn extend(&mut self, id: i64, deadline: Instant) {
        if self.id == Some(id) {
            self.deadline = Some(self.deadline.map_or(deadline, |d| d.max(deadline)));
        }
    }

    /// Gives the lease up on purpose (shutdown); returns it for revoking.
    pub fn give_up(&mut self) -> Option<i64> {
        self.deadline = None;
        self.id.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_moves_the_deadline_only_when_a_quorum_read_in_its_term_confirms_it() {
        let ttl = Duration::from_secs(3);
        let margin = Duration::from_secs(1);
        let t0 = Instant::now();
        let renewed = |term| Unconfirmed {
            lease: 7,
            sent: t0 + Duration::from_secs(1),
            ttl,
            term,
            margin,
        };
        // Renewed by the leader of term 5, but the next quorum read came from term 6.
        assert_eq!(renewed(5).confirmed_by(6), None);
        // Same term: the deadline moves to the renewal's send time + TTL - margin.
        assert_eq!(
            renewed(6).confirmed_by(6),
            Some(t0 + Duration::from_secs(3))
        );
        // A term of 0 (no header) confirms nothing.
        assert_eq!(renewed(0).confirmed_by(0), None);
    }

    #[test]
    fn a_lease_lives_from_its_grant_until_its_deadline_or_etcd_says_it_is_gone() {
        let ttl = Duration::from_secs(5);
        let margin = Duration::from_millis(1500);
        let mut l = LeaseState::new(ttl, margin);
        let t0 = Instant::now();
        assert_eq!(l.granted(7, t0), LeaseChange::Granted(7));
        assert_eq!(l.deadline(), Some(t0 + Duration::from_millis(3500)));
        // A second grant that raced the first is not used, and is revoked.
        assert_eq!(l.granted(8, t0), LeaseChange::None);
        assert_eq!(l.take_stale(), vec![8]);
        assert_eq!(l.expire(t0 + Duration::from_secs(3)), LeaseChange::None);
        assert!(matches!(
            l.expire(t0 + Duration::from_millis(3500)),
            LeaseChange::Lost { lease: 7, .. }
        ));
        assert!(l.quarantined(t0 + Duration::from_secs(4)));
        assert_eq!(l.take_stale(), vec![7]);
        assert!(l.take_stale().is_empty());
        assert_eq!(
            l.granted(9, t0 + Duration::from_secs(9)),
            LeaseChange::Granted(9)
        );
        // Regained after a loss (etcd had a quorum again): one more TTL of quarantine.
        assert!(l.quarantined(t0 + Duration::from_secs(10)));
        assert!(!l.quarantined(t0 + Duration::from_secs(14)));
        assert_eq!(l.gone(7, t0), LeaseChange::None, "an old lease's answer");
        assert!(matches!(l.gone(9, t0), LeaseChange::Lost { lease: 9, .. }));
        assert_eq!(l.id(), None);
    }

    #[test]
    fn a_confirmed_renewal_extends_only_its_own_lease_and_never_back() {
        let ttl = Duration::from_secs(5);
        let margin = Duration::from_millis(1500);
        let mut l = LeaseState::new(ttl, margin);
        let t0 = Instant::now();
        l.granted(7, t0 - Duration::from_millis(500));
        let u = Unconfirmed {
            lease: 7,
            sent: t0 + Duration::from_secs(1),
            ttl,
            term: 4,
            margin,
        };
        assert_eq!(
            u.confirmed_by(5),
            None,
            "a read from another term confirms nothing"
        );
        let d = u.confirmed_by(4).unwrap();
        assert_eq!(d, t0 + Duration::from_millis(4500));
        l.extend(8, d + Duration::from_secs(9));
        assert_eq!(
            l.deadline(),
            Some(t0 + Duration::from_secs(3)),
            "another lease"
        );
        l.extend(7, d);
        assert_eq!(l.deadline(), Some(d));
        l.extend(7, t0);
        assert_eq!(l.deadline(), Some(d), "never back");
        let mut v = l.view();
        v.extend(7, d + Duration::from_secs(1));
        assert_eq!(v.deadline(), Some(d + Duration::from_secs(1)));
    }
}
