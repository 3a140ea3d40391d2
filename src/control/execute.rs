//! Carrying out a [`Decision`]'s actions against PostgreSQL and etcd, in order, each
//! failure logged and retried by the next tick (decisions are recomputed from facts
//! every tick, so an action that did not happen is simply decided again).

use std::time::Instant;

use super::agent::{Agent, DrainProgress};
use super::db;
use super::decide::{Action, Decision, DrainCause};
use super::event::{EventKind, Rpo};
use super::fence::{fence, renew_permit, unfence, FenceRequest, Permit};
use super::keys::{now_ms, OwnerValue, SwitchoverValue};

/// A switchover stops writes only once the new owner is at most this far behind (bytes of
/// our WAL it has not confirmed): the pause then holds the last moments of replication,
/// not a backlog (a region that just came back may be seconds behind).
pub const CATCH_UP_BEFORE_STOP: u64 = 256 * 1024;

impl Agent {
    pub(super) async fn execute(&mut self, d: &Decision, lease: Option<i64>) {
        // Endpoints this decision stops serving stop answering `/owner/...` now, before
        // any action: a drain may hand the endpoint over within this very tick, and the new
        // owner may serve it before this tick's publish would have said we no longer do.
        {
            let mut p = self.shared.write().unwrap_or_else(|e| e.into_inner());
            p.serving.retain(|e| d.serving.contains(e));
            if !d.writable {
                p.writable = false;
            }
        }
        let active: Vec<(String, i64)> = d
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Drain {
                    endpoint, epoch, ..
                }
                | Action::HoldTraffic { endpoint, epoch } => Some((endpoint.clone(), *epoch)),
                _ => None,
            })
            .collect();
        self.drains.retain(|k, _| active.contains(k));
        if let Some(t) = self.traffic.as_mut() {
            t.retain_holds(&active);
        }
        let serving_others = !d.serving.is_empty();
        for action in &d.actions {
            if let Err(e) = self.act(action, lease, serving_others).await {
                // Decided again every tick: say it when it changes, else every 10 s.
                let now = Instant::now();
                let repeat = self.last_action_error.as_ref().is_some_and(|(m, t)| {
                    *m == e && now.duration_since(*t) < std::time::Duration::from_secs(10)
                });
                if !repeat {
                    tracing::warn!(node = %self.me, ?action, error = %e, "action failed; retried every tick");
                    self.last_action_error = Some((e, now));
                }
            }
        }
        if d.writable && self.db_fenced == Some(false) {
            self.renew_permit().await;
        }
    }

    /// The write permit the region may hold now: up to the lease deadline; unlimited
    /// while an operator's forced failover stands in for a lease; `None` past the deadline.
    pub(super) fn permit(&self) -> Option<Permit> {
        let now = Instant::now();
        match self.lease.deadline() {
            Some(d) if d > now => {
                let ms = u64::try_from(d.duration_since(now).as_millis()).unwrap_or(u64::MAX);
                let offset = self
                    .shared
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .db_clock_offset_ms;
                Some(Permit::until(ms, offset))
            }
            _ if !self.forced.is_empty() => Some(Permit::Unlimited),
            _ => None,
        }
    }

    /// Keeps the database's write permit in step with the lease: each renewal of the
    /// lease moves the deadline, and the permit with it.
    async fn renew_permit(&mut self) {
        // The keeper may have confirmed a renewal since the tick began (the lease
        // follower may have moved the permit already): never move it back.
        let fresh = self.keeper().view();
        let now = Instant::now();
        if fresh.live(now).is_some() && fresh.live(now) == self.lease.live(now) {
            self.lease = fresh;
        }
        let deadline = self.lease.deadline();
        if deadline.is_some() && deadline == self.permit_deadline {
            return;
        }
        let Some(permit) = self.permit() else { return };
        let Some(client) = self.local.get().await else {
            return;
        };
        match renew_permit(client, permit).await {
            Ok(true) => self.permit_deadline = deadline,
            Ok(false) => {
                tracing::info!(node = %self.me, "write permit not renewed: the fence is set")
            }
            Err(e) => tracing::warn!(node = %self.me, error = %e, "cannot renew the write permit"),
        }
    }

    async fn act(
        &mut self,
        action: &Action,
        lease: Option<i64>,
        serving_others: bool,
    ) -> Result<(), String> {
        let by = format!("agent {}", self.me);
        match action {
            Action::Fence { reason } => {
                let client = self
                    .local
                    .get()
                    .await
                    .ok_or("the local primary is unreachable")?;
                let started = Instant::now();
                let report = fence(
                    client,
                    &FenceRequest {
                        reason,
                        epoch: 0,
                        by: &by,
                        policy: &self.policy,
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
                self.db_fenced = Some(true);
                self.permit_deadline = None;
                if !report.was_fenced {
                    let ms = started.elapsed().as_millis();
                    self.event(
                        EventKind::Fenced,
                        None,
                        format!(
                            "{reason} (fenced in {ms} ms, {} session(s) ended)",
                            report.terminated.len()
                        ),
                    );
                }
            }
            Action::Unfence { reason } => {
                let permit = self
                    .permit()
                    .ok_or("the lease deadline passed before the fence could be lifted")?;
                let client = self
                    .local
                    .get()
                    .await
                    .ok_or("the local primary is unreachable")?;
                let was = unfence(client, reason, 0, &by, permit)
                    .await
                    .map_err(|e| e.to_string())?;
                self.db_fenced = Some(false);
                self.permit_deadline = self.lease.deadline();
                if was {
                    self.event(EventKind::Unfenced, None, reason.clone());
                }
            }
            Action::Release {
                endpoint,
                epoch,
                reason,
            } => {
                let store = self.store.clone().ok_or("etcd is not connected")?;
                if store
                    .release(endpoint, *epoch)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    let e = self.event(EventKind::Released, Some(endpoint), reason.clone());
                    e.epoch = Some(*epoch);
                }
            }
            Action::Acquire {
                endpoint,
                takeover_from,
                reason,
            } => {
                let store = self.store.clone().ok_or("etcd is not connected")?;
                let lease = lease.ok_or("no live lease")?;
                let value = OwnerValue {
                    node: self.me.clone(),
                    since_ms: now_ms(),
                    reason: reason.clone(),
                };
                if !store
                    .acquire(endpoint, lease, &value)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Ok(()); // someone was faster: the next view shows who
                }
                // Ours now: the next tick reads it back and serves, without a pause.
                self.again = true;
                let rpo = match takeover_from {
                    Some(from) => Some(self.rpo(from).await),
                    None => None,
                };
                let kind = if takeover_from.is_some() {
                    EventKind::Failover
                } else {
                    EventKind::Acquired
                };
                let e = self.event(kind, Some(endpoint), reason.clone());
                e.from = takeover_from.clone();
                e.to = Some(e.node.clone());
                e.rpo = rpo;
            }
            Action::ClaimForced { endpoint } => {
                let store = self.store.clone().ok_or("etcd is not connected")?;
                let lease = lease.ok_or("no live lease")?;
                let value = OwnerValue {
                    node: self.me.clone(),
                    since_ms: now_ms(),
                    reason: "forced failover (pgmesh failover --force)".into(),
                };
                store
                    .claim(endpoint, lease, &value)
                    .await
                    .map_err(|e| e.to_string())?;
                self.again = true;
                if let Some(c) = self.local.get().await {
                    db::clear_forced(c, endpoint).await?;
                }
                self.forced.retain(|f| f != endpoint);
                let e = self.event(
                    EventKind::ForcedFailover,
                    Some(endpoint),
                    "an operator forced this endpoint here while etcd had no quorum; recorded now"
                        .into(),
                );
                e.to = Some(e.node.clone());
            }
            Action::ClearForced { endpoint } => {
                if let Some(c) = self.local.get().await {
                    db::clear_forced(c, endpoint).await?;
                }
                self.forced.retain(|f| f != endpoint);
            }
            Action::Drain {
                endpoint,
                epoch,
                to,
                to_lease,
                cause,
            } => {
                self.drain(endpoint, *epoch, to, *to_lease, *cause, serving_others)
                    .await?;
            }
            Action::HoldTraffic { endpoint, epoch } => {
                if let Some(t) = self.traffic.as_mut() {
                    t.hold(endpoint, *epoch);
                }
            }
            Action::CatchUp { endpoint, to } => {
                let store = self.store.clone().ok_or("etcd is not connected")?;
                let client = self
                    .local
                    .get()
                    .await
                    .ok_or("the local primary is unreachable")?;
                let now = db::wal_lsn(client).await?;
                let (streaming, confirmed) = db::streaming_to(client, to).await?;
                let behind = now.0.saturating_sub(confirmed.unwrap_or(crate::Lsn(0)).0);
                // Its sidecar must be connected too: one that is waiting out a reconnect
                // backoff would leave the drain, and the write pause, waiting with it.
                if !streaming || behind > CATCH_UP_BEFORE_STOP {
                    return Ok(()); // still serving; the next tick looks again
                }
                let mut v = self
                    .switchover_value(endpoint)
                    .ok_or("no switchover record")?;
                v.state = "draining".into();
                store
                    .put_switchover(endpoint, &v)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(node = %self.me, endpoint, to, behind, "{to} caught up: stopping writes for {endpoint}");
            }
            Action::AbortSwitchover { endpoint, reason } => {
                let store = self.store.clone().ok_or("etcd is not connected")?;
                let mut value = self
                    .switchover_value(endpoint)
                    .ok_or("no switchover record")?;
                value.state = "aborted".into();
                value.detail = Some(reason.clone());
                store
                    .put_switchover(endpoint, &value)
                    .await
                    .map_err(|e| e.to_string())?;
                let e = self.event(EventKind::SwitchoverAborted, Some(endpoint), reason.clone());
                e.to = Some(value.to);
            }
            Action::ClearSwitchover { endpoint } => {
                let store = self.store.clone().ok_or("etcd is not connected")?;
                store
                    .delete_switchover(endpoint)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Action::RequestFailback {
                endpoint,
                from,
                epoch,
            } => {
                let store = self.store.clone().ok_or("etcd is not connected")?;
                let now = now_ms();
                let value = SwitchoverValue {
                    to: self.me.clone(),
                    from: from.clone(),
                    epoch: *epoch,
                    requested_at_ms: now,
                    deadline_ms: now
                        + i64::try_from(self.ctl.switchover_timeout.as_millis())
                            .unwrap_or(i64::MAX),
                    requested_by: format!("automatic failback by agent {}", self.me),
                    state: "requested".into(),
                    stop_lsn: None,
                    detail: None,
                };
                // A finished or aborted record of an earlier move would block the request.
                if self
                    .switchover_value(endpoint)
                    .is_some_and(|v| v.state != "requested" && v.state != "draining")
                {
                    store
                        .delete_switchover(endpoint)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if store
                    .request_switchover(endpoint, &value)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    self.event(
                        EventKind::Maintenance,
                        Some(endpoint),
                        format!("automatic failback requested from {from}"),
                    );
                }
            }
        }
        Ok(())
    }

    pub(super) fn switchover_value(&self, endpoint: &str) -> Option<SwitchoverValue> {
        self.snapshot
            .switchovers
            .iter()
            .find(|(e, _)| e == endpoint)
            .map(|(_, v)| v.clone())
    }

    /// One step of a planned move: note where writes stopped, then move the endpoint once
    /// `to` confirmed everything up to there on the slot it reads from us.
    async fn drain(
        &mut self,
        endpoint: &str,
        epoch: i64,
        to: &str,
        to_lease: i64,
        cause: DrainCause,
        serving_others: bool,
    ) -> Result<(), String> {
        let store = self.store.clone().ok_or("etcd is not connected")?;
        // Writes must have stopped first: the fence action ran earlier in this tick when
        // this was the last endpoint we served. With others still served the database
        // stays writable, and the endpoint's traffic layer holds its clients.
        if !serving_others && self.db_fenced != Some(true) {
            return Err("waiting for the fence before noting the stop position".into());
        }
        let record = self.switchover_value(endpoint);
        let client = self
            .local
            .get()
            .await
            .ok_or("the local primary is unreachable")?;
        let key = (endpoint.to_string(), epoch);
        let progress = self.drains.entry(key.clone()).or_insert(DrainProgress {
            stop_lsn: None,
            started: Instant::now(),
        });
        let stop = match progress.stop_lsn {
            Some(l) => l,
            None => {
                let l = db::wal_lsn(client).await?;
                progress.stop_lsn = Some(l);
                if let Some(mut v) = record.clone() {
                    v.state = "draining".into();
                    v.stop_lsn = Some(l.to_string());
                    let _ = store.put_switchover(endpoint, &v).await;
                }
                tracing::info!(node = %self.me, endpoint, %l, to, "writes stopped; waiting for {to} to apply up to here");
                l
            }
        };
        let started = progress.started;
        let confirmed = db::confirmed_by(client, to).await?;
        if confirmed.is_none_or(|c| c < stop) {
            return Ok(()); // not yet: next tick
        }
        let reason = match cause {
            DrainCause::Switchover => format!("switchover from {}", self.me),
            DrainCause::Maintenance => format!("{} is in maintenance", self.me),
        };
        let value = OwnerValue {
            node: to.to_string(),
            since_ms: now_ms(),
            reason: reason.clone(),
        };
        let switchover = record.map(|mut v| {
            v.state = "moved".into();
            v.stop_lsn = Some(stop.to_string());
            v.detail = Some(format!(
                "{to} applied up to {stop}; drained in {} ms",
                started.elapsed().as_millis()
            ));
            v
        });
        let moved = store
            .transfer(endpoint, epoch, to, to_lease, &value, switchover.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        if moved {
            self.drains.remove(&key);
            let e = self.event(
                EventKind::Switchover,
                Some(endpoint),
                format!(
                    "{reason}: {to} applied everything up to {stop} ({} ms)",
                    started.elapsed().as_millis()
                ),
            );
            e.from = Some(e.node.clone());
            e.to = Some(to.to_string());
            e.epoch = Some(epoch);
        }
        Ok(())
    }

    /// What a takeover from `from` may have lost: its last published WAL position vs
    /// what we applied of it.
    async fn rpo(&mut self, from: &str) -> Rpo {
        let status = self
            .snapshot
            .status
            .iter()
            .find(|s| s.node == from)
            .cloned();
        let applied = match self.local.get().await {
            Some(c) => db::applied_from(c, from).await.ok().flatten(),
            None => None,
        };
        let written = status
            .as_ref()
            .and_then(|s| s.wal_lsn.as_deref())
            .and_then(|t| t.parse::<crate::Lsn>().ok());
        Rpo {
            applied_lsn: applied.map(|l| l.to_string()),
            last_written_lsn: written.map(|l| l.to_string()),
            last_written_at_ms: status.map(|s| s.at_ms),
            bytes: match (written, applied) {
                (Some(w), Some(a)) => Some(w.0.saturating_sub(a.0)),
                _ => None,
            },
        }
    }
}
