//! The agent's etcd lease, as its own monotonic clock sees it.
//!
//! The fence deadline is `send time of the last successful renewal + TTL − safety margin`:
//! etcd restarts the lease's TTL when it *receives* the renewal, which is after we sent
//! it, so a deadline counted from the send time can only be early, never late. Past the
//! deadline the lease is treated as lost even if etcd might still hold it, and is never
//! used again: a new lease starts over, after a quarantine of one TTL in which nothing
//! new is taken (the peer's takeover or an operator's forced failover may be landing).

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

pub struct LeaseState {
    ttl: Duration,
    margin: Duration,
    id: Option<i64>,
    renewer: Option<Renewer>,
    deadline: Option<Instant>,
    last_sent: Option<Instant>,
    lost_at: Option<Instant>,
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
            lost_at: None,
            last_error: None,
        }
    }

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

    fn lose(&mut self, now: Instant, reason: String) -> LeaseChange {
        let lease = self.id.take().unwrap_or(0);
        self.renewer = None;
        self.deadline = None;
        self.lost_at = Some(now);
        LeaseChange::Lost { lease, reason }
    }

    /// Renews when due (every TTL/3, and every tick after a failure), grants a new lease
    /// when there is none; never blocks longer than the store's timeout per call.
    pub async fn tick(&mut self, store: &Store) -> LeaseChange {
        let now = Instant::now();
        if let (Some(_), Some(d)) = (self.id, self.deadline) {
            if now >= d {
                return self.lose(now, "the fence deadline passed without a renewal".into());
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
                .is_none_or(|t| now.duration_since(t) >= self.ttl / 3);
        if !due {
            return LeaseChange::None;
        }
        match self.renew(store, id).await {
            Ok(Some((sent, ttl))) => {
                self.deadline = Some(sent + ttl.saturating_sub(self.margin));
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
    ) -> Result<Option<(Instant, Duration)>, StoreError> {
        if self.renewer.is_none() {
            self.renewer = Some(store.keeper(id).await?);
        }
        let sent = Instant::now();
        let Some(renewer) = self.renewer.as_mut() else {
            return Ok(None);
        };
        Ok(renewer.renew().await?.map(|ttl| (sent, ttl)))
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
