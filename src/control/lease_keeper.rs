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

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::lease::{LeaseChange, LeaseState, LeaseView};
use super::store::Store;

/// How often the keeper looks (it renews every TTL/6, and at once after a failure).
const KEEP_EVERY: Duration = Duration::from_millis(100);
/// The least time between two connects after failures.
const RECONNECT_EVERY: Duration = Duration::from_millis(300);
/// How often the keeper looks for the leader again (etcd moves it; a member that is not
/// the leader costs every renewal a round trip more).
const FOLLOW_LEADER_EVERY: Duration = Duration::from_secs(10);

/// Where the keeper's own etcd client connects (the nearest member, see
/// [`Store::connect_nearest`]).
#[derive(Clone, Debug)]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    pub cluster: String,
    pub timeout: Duration,
}

/// The agent's end of the keeper task.
pub struct LeaseKeeper {
    view: watch::Receiver<LeaseView>,
    changes: mpsc::UnboundedReceiver<LeaseChange>,
    revoke: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts the task (inside a runtime).
    #[must_use]
    pub fn spawn(ttl: Duration, margin: Duration, etcd: EtcdTarget) -> LeaseKeeper {
        let lease = LeaseState::new(ttl, margin);
        let (view_tx, view) = watch::channel(lease.view());
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let (revoke, revoke_rx) = oneshot::channel();
        let task = tokio::spawn(keep(lease, view_tx, changes_tx, etcd, revoke_rx));
        LeaseKeeper {
            view,
            changes,
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
    etcd: EtcdTarget,
    mut revoke: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let mut store: Option<Store> = None;
    let mut last_connect: Option<tokio::time::Instant> = None;
    // Confirming reads run in tasks of their own and report here: the next renewal is
    // sent without waiting for the last one's read (over a slow WAN a renewal and its
    // read take two round trips each; one after the other they outlast the margin).
    let (confirmed_tx, mut confirmed) = mpsc::unbounded_channel::<Confirmation>();
    loop {
        tokio::select! {
            () = tokio::time::sleep(KEEP_EVERY) => {}
            Some(c) = confirmed.recv() => {
                if apply(&mut lease, c) {
                    store = None;
                }
                publish(&view, &lease);
                continue;
            }
            done = &mut revoke => {
                if let Some(s) = &store {
                    lease.revoke(s).await;
                }
                view.send_replace(lease.view());
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
        if store.is_some() && last_connect.is_some_and(|t| t.elapsed() >= FOLLOW_LEADER_EVERY) {
            store = None;
        }
        if store.is_none() && last_connect.is_none_or(|t| t.elapsed() >= RECONNECT_EVERY) {
            last_connect = Some(tokio::time::Instant::now());
            store = Store::connect_nearest(&etcd.endpoints, &etcd.cluster, etcd.timeout)
                .await
                .ok();
            // The keep-alive stream belongs to the old client.
            lease.drop_renewer();
        }
        // Without a client nothing renews; the deadline still applies (the view's `live`
        // says so by itself).
        let Some(s) = store.clone() else {
            publish(&view, &lease);
            continue;
        };
        // Reads that confirm while a renewal is under way go to the view at once; the
        // lease itself takes them when the renewal is done.
        let mut early = Vec::new();
        let tick_began = Instant::now();
        let change = {
            let tick = lease.tick(&s);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    change = &mut tick => break change,
                    Some(c) = confirmed.recv() => {
                        if let Confirmation::Confirmed { lease: id, deadline } = c {
                            view.send_if_modified(|v| {
                                let before = *v;
                                v.extend(id, deadline);
                                *v != before
                            });
                        }
                        early.push(c);
                    }
                }
            }
        };
        for c in early {
            if apply(&mut lease, c) {
                store = None;
            }
        }
        if let Some(why) = lease.last_error.clone() {
            tracing::info!(error = %why, "lease renewal failed; reconnecting to the etcd leader or the nearest member that has one");
            store = None;
        }
        if let Some(u) = lease.take_unconfirmed() {
            tracing::debug!(renew_ms = tick_began.elapsed().as_millis(), "lease renewed");
            let (s, tx) = (s.clone(), confirmed_tx.clone());
            tokio::spawn(async move {
                let c = match s.term().await {
                    Ok(term) => match u.confirmed_by(term) {
                        Some(deadline) => Confirmation::Confirmed {
                            lease: u.lease,
                            deadline,
                        },
                        None => Confirmation::OtherTerm {
                            renewed_in: u.term,
                            read_in: term,
                        },
                    },
                    Err(e) => Confirmation::Failed(e.to_string()),
                };
                let _ = tx.send(c);
            });
        }
        if change != LeaseChange::None {
            let _ = changes.send(change);
        }
        publish(&view, &lease);
    }
}

/// What a confirming read found.
enum Confirmation {
    Confirmed { lease: i64, deadline: Instant },
    OtherTerm { renewed_in: u64, read_in: u64 },
    Failed(String),
}

/// Applies a confirmation; true when the client should be replaced.
fn apply(lease: &mut LeaseState, c: Confirmation) -> bool {
    match c {
        Confirmation::Confirmed {
            lease: id,
            deadline,
        } => {
            lease.extend(id, deadline);
            tracing::debug!(
                left_ms = lease
                    .deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()).as_millis()),
                "lease renewal confirmed"
            );
            false
        }
        Confirmation::OtherTerm {
            renewed_in,
            read_in,
        } => {
            tracing::info!(renewed_in, read_in, "lease renewal not confirmed by a quorum read in its raft term; not extending the deadline");
            false
        }
        Confirmation::Failed(why) => {
            tracing::info!(error = %why, "the read confirming a lease renewal failed; reconnecting");
            true
        }
    }
}

fn publish(view: &watch::Sender<LeaseView>, lease: &LeaseState) {
    view.send_if_modified(|v| {
        let next = lease.view();
        let changed = *v != next;
        *v = next;
        changed
    });
}
