//! The lease renewed in a task of its own. The agent's tick reads etcd, probes, fences
//! and publishes, one call after another; across a WAN each etcd call is a round trip or
//! two, and a 1.3 s tick let a 3 s lease lapse between renewals (the cross-region lab
//! showed it: a lost lease every few seconds with nothing wrong). Here the renewal and
//! the quorum read that confirms it run every [`KEEP_EVERY`], whatever the tick does;
//! the agent reads the latest [`LeaseView`] and the changes (granted, lost) to record.
//!
//! Safety is unchanged: the deadline still moves only on a renewal confirmed in its
//! raft term ([`LeaseState::confirm`]), and the watchdog still fences at the last
//! deadline when the process freezes.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::lease::{LeaseChange, LeaseState, LeaseView};
use super::store::Store;

/// How often the keeper looks (it renews every TTL/6, and at once after a failure).
const KEEP_EVERY: Duration = Duration::from_millis(100);

/// The agent's end of the keeper task.
pub struct LeaseKeeper {
    view: watch::Receiver<LeaseView>,
    changes: mpsc::UnboundedReceiver<LeaseChange>,
    store: watch::Sender<Option<Store>>,
    revoke: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts the task (inside a runtime).
    #[must_use]
    pub fn spawn(ttl: Duration, margin: Duration) -> LeaseKeeper {
        let lease = LeaseState::new(ttl, margin);
        let (view_tx, view) = watch::channel(lease.view());
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let (store, store_rx) = watch::channel(None);
        let (revoke, revoke_rx) = oneshot::channel();
        let task = tokio::spawn(keep(lease, view_tx, changes_tx, store_rx, revoke_rx));
        LeaseKeeper {
            view,
            changes,
            store,
            revoke: Some(revoke),
            task,
        }
    }

    /// The lease now.
    #[must_use]
    pub fn view(&self) -> LeaseView {
        *self.view.borrow()
    }

    /// A receiver that wakes when the view changes (the watchdog's heartbeat task).
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<LeaseView> {
        self.view.clone()
    }

    /// The etcd client to renew through (`None` while the agent has none).
    pub fn use_store(&self, store: Option<Store>) {
        self.store.send_replace(store);
    }

    /// Grants and losses since the last call.
    pub fn changes(&mut self) -> Vec<LeaseChange> {
        let mut v = Vec::new();
        while let Ok(c) = self.changes.try_recv() {
            v.push(c);
        }
        v
    }

    /// Gives the lease up on purpose (shutdown) and stops the task.
    pub async fn revoke(&mut self) {
        if let Some(tx) = self.revoke.take() {
            let (done_tx, done) = oneshot::channel();
            if tx.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            }
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(
    mut lease: LeaseState,
    view: watch::Sender<LeaseView>,
    changes: mpsc::UnboundedSender<LeaseChange>,
    store: watch::Receiver<Option<Store>>,
    mut revoke: oneshot::Receiver<oneshot::Sender<()>>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(KEEP_EVERY) => {}
            done = &mut revoke => {
                let current = store.borrow().clone();
                if let Some(s) = current {
                    lease.revoke(&s).await;
                }
                view.send_replace(lease.view());
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
        let current = store.borrow().clone();
        let Some(s) = current else {
            // No client: nothing renews, the deadline still applies (the view's
            // `live` says so by itself).
            continue;
        };
        let change = lease.tick(&s).await;
        if lease.unconfirmed() {
            if let Ok(term) = s.term().await {
                lease.confirm(term);
            }
        }
        if change != LeaseChange::None {
            let _ = changes.send(change);
        }
        view.send_if_modified(|v| {
            let next = lease.view();
            let changed = *v != next;
            *v = next;
            changed
        });
    }
}
