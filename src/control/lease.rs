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

use super::store::{Renewer, Store, StoreError};

/// What happened to the lease in one [`LeaseState::tick`].
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

    /// Within one TTL of losing a lease.
    #[must_use]
    pub fn quarantined(&self, now: Instant) -> bool {
        self.lost_at.is_some_and(|t| now < t + self.ttl)
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

pub struct LeaseState {
    ttl: Duration,
    margin: Duration,
    id: Option<i64>,
    renewer: Option<Renewer>,
    deadline: Option<Instant>,
    last_sent: Option<Instant>,
    /// A renewal waiting for a quorum read in its term: (sent, ttl, raft term).
    unconfirmed: Option<(Instant, Duration, u64)>,
    lost_at: Option<Instant>,
    /// A lease we gave up on by our clock that etcd may still hold: revoked as soon as
    /// etcd answers, so the keys bound to it (our member key, endpoints we can no longer
    /// serve) go at once instead of a TTL later.
    stale: Option<i64>,
    pub last_error: Option<String>,
}

impl LeaseState {
    #[must_use]
    pub fn new(ttl: Duration, margin: Duration) -> LeaseState {
        LeaseState {
            ttl,
            margin,
            id: None,
            renewer: None,
            deadline: None,
            last_sent: None,
            unconfirmed: None,
            lost_at: None,
            stale: None,
            last_error: None,
        }
    }

    /// The lease id while it is live by our clock.
    #[must_use]
    pub fn live(&self, now: Instant) -> Option<i64> {
        self.view().live(now)
    }

    /// Whether a renewal waits for a quorum read to confirm it.
    #[must_use]
    pub fn unconfirmed(&self) -> bool {
        self.unconfirmed.is_some()
    }

    /// What the agent reads of the lease.
    #[must_use]
    pub fn view(&self) -> LeaseView {
        LeaseView {
            id: self.id,
            deadline: self.deadline,
            lost_at: self.lost_at,
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
        self.stale = Some(lease);
        self.renewer = None;
        self.deadline = None;
        self.unconfirmed = None;
        self.lost_at = Some(now);
        LeaseChange::Lost { lease, reason }
    }

    /// Renews when due (every TTL/6, and at every call after a failure: the keeper task calls it every 100 ms, and a renewal plus its confirming read take two to four WAN round trips), grants a new lease
    /// when there is none; never blocks longer than the store's timeout per call.
    pub async fn tick(&mut self, store: &Store) -> LeaseChange {
        let now = Instant::now();
        if let (Some(_), Some(d)) = (self.id, self.deadline) {
            if now >= d {
                return self.lose(now, "the fence deadline passed without a renewal".into());
            }
        }
        if let Some(old) = self.stale {
            match store.revoke(old).await {
                Ok(()) => self.stale = None,
                // Expired already: nothing left to revoke.
                Err(e) if e.message.contains("not found") => self.stale = None,
                Err(_) => {}
            }
        }
        let Some(id) = self.id else {
            let sent = Instant::now();
            return match store.grant(self.ttl).await {
                Ok(id) => {
                    self.id = Some(id);
                    self.deadline = Some(sent + self.ttl - self.margin);
                    self.last_sent = Some(sent);
                    self.last_error = None;
                    LeaseChange::Granted(id)
                }
                Err(e) => {
                    self.last_error = Some(e.to_string());
                    LeaseChange::None
                }
            };
        };
        let due = self.last_error.is_some()
            || self
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= self.ttl / 6);
        if !due {
            return LeaseChange::None;
        }
        match self.renew(store, id).await {
            Ok(Some((sent, ttl, term))) => {
                self.unconfirmed = Some((sent, ttl, term));
                self.last_sent = Some(sent);
                self.last_error = None;
                LeaseChange::None
            }
            Ok(None) => self.lose(Instant::now(), "etcd says the lease expired".into()),
            Err(e) => {
                self.renewer = None;
                self.last_error = Some(e.to_string());
                LeaseChange::None
            }
        }
    }

    async fn renew(
        &mut self,
        store: &Store,
        id: i64,
    ) -> Result<Option<(Instant, Duration, u64)>, StoreError> {
        if self.renewer.is_none() {
            self.renewer = Some(store.keeper(id).await?);
        }
        let sent = Instant::now();
        let Some(renewer) = self.renewer.as_mut() else {
            return Ok(None);
        };
        Ok(renewer.renew().await?.map(|(ttl, term)| (sent, ttl, term)))
    }

    /// Forgets the keep-alive stream (it is bound to the client being replaced).
    pub fn drop_renewer(&mut self) {
        self.renewer = None;
    }

    /// The renewal waiting for its confirming read, taken out (the keeper reads in a
    /// task of its own, so the next renewal need not wait for it).
    pub fn take_unconfirmed(&mut self) -> Option<Unconfirmed> {
        let (sent, ttl, term) = self.unconfirmed.take()?;
        Some(Unconfirmed {
            lease: self.id?,
            sent,
            ttl,
            term,
            margin: self.margin,
        })
    }

    /// A confirmed renewal of lease `id` moved its deadline to `deadline` (never back;
    /// nothing for a lease given up since).
    pub fn extend(&mut self, id: i64, deadline: Instant) {
        if self.id == Some(id) {
            self.deadline = Some(self.deadline.map_or(deadline, |d| d.max(deadline)));
        }
    }

    /// A linearizable read in raft term `term` succeeded after the last renewal was
    /// answered: the renewal now moves the deadline (if the terms match).
    pub fn confirm(&mut self, term: u64) {
        if let Some(u) = self.take_unconfirmed() {
            match u.confirmed_by(term) {
                Some(d) => self.extend(u.lease, d),
                None => tracing::info!(renewed_in = u.term, read_in = term, "lease renewal not confirmed by a quorum read in its raft term; not extending the deadline"),
            }
        }
    }

    /// Gives the lease up on purpose (shutdown): its keys go at once.
    pub async fn revoke(&mut self, store: &Store) {
        if let Some(id) = self.id.take() {
            let _ = store.revoke(id).await;
        }
        self.renewer = None;
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_moves_the_deadline_only_when_a_quorum_read_in_its_term_confirms_it() {
        let ttl = Duration::from_secs(3);
        let mut l = LeaseState::new(ttl, Duration::from_secs(1));
        let t0 = Instant::now();
        l.id = Some(7);
        l.deadline = Some(t0 + Duration::from_secs(2));
        // Renewed by the leader of term 5, but the next quorum read came from term 6.
        l.unconfirmed = Some((t0 + Duration::from_secs(1), ttl, 5));
        l.confirm(6);
        assert_eq!(l.deadline, Some(t0 + Duration::from_secs(2)));
        assert!(l.unconfirmed.is_none());
        // Same term: the deadline moves to the renewal's send time + TTL - margin.
        l.unconfirmed = Some((t0 + Duration::from_secs(1), ttl, 6));
        l.confirm(6);
        assert_eq!(l.deadline, Some(t0 + Duration::from_secs(3)));
        // An older renewal confirmed late never moves the deadline back.
        l.unconfirmed = Some((t0, ttl, 6));
        l.confirm(6);
        assert_eq!(l.deadline, Some(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn a_renewal_confirmed_in_a_task_extends_only_its_own_lease_and_never_back() {
        let ttl = Duration::from_secs(5);
        let margin = Duration::from_millis(1500);
        let mut l = LeaseState::new(ttl, margin);
        let t0 = Instant::now();
        l.id = Some(7);
        l.deadline = Some(t0 + Duration::from_secs(3));
        l.unconfirmed = Some((t0 + Duration::from_secs(1), ttl, 4));
        let u = l.take_unconfirmed().unwrap();
        assert!(l.take_unconfirmed().is_none());
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
