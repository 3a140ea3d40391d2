//! `pgmesh agent`: the control-plane loop of one region.
//!
//! Every tick (100 ms) it renews its lease when due, reads the whole cluster view from
//! etcd, probes health when due (`probe_interval`), reads its primary's fence flag, asks
//! [`decide`] what to do, carries the actions out ([`super::execute`]), publishes its state
//! to etcd and to the HTTP endpoint, and tells the watchdog until when the region may
//! write. Each call has a timeout shorter than the safety margin, so a hung etcd or
//! PostgreSQL costs one tick, never the deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::db::{self, Conn};
use super::decide::{decide, ClusterView, Decision, Observation};
use super::event::{Event, EventKind};
use super::fence::FencePolicy;
use super::health::{self, HealthState, HealthTracker, Signal, SignalStatus};
use super::keys::{now_ms, MemberValue};
use super::lease::{LeaseChange, LeaseView};
use super::lease_keeper::{EtcdTarget, LeaseKeeper};
use super::probe;
use super::store::{Leader, Snapshot, Store};
use super::traffic::{SharedTraffic, TrafficDriver, TrafficStatus};
use super::watchdog::Heartbeat;
use crate::config::{Config, ControlConfig, Failback};
use crate::Lsn;

/// How often the loop runs; probes run every `probe_interval`.
pub const TICK: Duration = Duration::from_millis(100);
/// How long past its deadline a permit is still treated as possibly valid: the server
/// counted it from when our statement arrived, a little after we measured.
const PERMIT_SLACK: Duration = Duration::from_millis(200);
/// A new etcd client after this long without an answer.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// The loop's pace while a switchover involves this region.
pub const FAST_TICK: Duration = Duration::from_millis(10);
/// A tick longer than this is logged: decisions (and renewals) wait on it.
const SLOW_TICK: Duration = Duration::from_secs(1);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("node {0:?} is not in the config")]
    UnknownNode(String),
}

/// The region's state as `/health`, `/writable` and `/owner/...` serve it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Published {
    pub node: String,
    pub writable: bool,
    pub why: String,
    pub serving: Vec<String>,
    pub lease: Option<i64>,
    /// Milliseconds until the fence deadline when the answer was built.
    pub lease_remaining_ms: Option<u64>,
    pub fenced: Option<bool>,
    pub health: String,
    pub score: f64,
    pub failed_probes_in_a_row: u32,
    pub signals: Vec<Signal>,
    pub etcd_ok: bool,
    pub etcd_error: Option<String>,
    /// What pgbouncer, DNS and planned-move pauses show (only with `[traffic]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficStatus>,
    #[serde(skip)]
    pub deadline: Option<Instant>,
    /// Forced writable by an operator: no lease deadline applies.
    #[serde(skip)]
    pub forced: bool,
    /// Whether the lease follower may move the database's write permit: open only
    /// between a decision that keeps writing and the next decision. The decision loop
    /// closes it before it reads `permit_until` and decides, so the permit it counts
    /// on having run out (before it gives an endpoint up) is never moved behind its back.
    #[serde(skip)]
    pub permit_gate: bool,
    /// The latest permit the follower wrote (recorded before it writes).
    #[serde(skip)]
    pub permit_until: Option<Instant>,
    /// How far the database server's clock is ahead of this agent's (a lower bound, ms;
    /// [`super::fence::clock_offset_ms`]): permits are written in the server's clock.
    #[serde(skip)]
    pub db_clock_offset_ms: i64,
}

impl Published {
    /// Whether the region may take writes at `now`: writable, not fenced, and (unless an
    /// operator forced it) before the lease deadline.
    #[must_use]
    pub fn writable_at(&self, now: Instant) -> bool {
        self.writable
            && self.fenced == Some(false)
            && (self.forced || self.deadline.is_some_and(|d| now < d))
    }
}

pub type SharedState = Arc<RwLock<Published>>;

/// A switchover being drained by this agent: where writes stopped.
pub(super) struct DrainProgress {
    pub stop_lsn: Option<Lsn>,
    pub started: Instant,
}

/// Everything the loop carries from tick to tick.
pub struct Agent {
    pub(super) me: String,
    pub(super) cfg: Arc<Config>,
    pub(super) ctl: ControlConfig,
    pub(super) store: Option<Store>,
    /// The lease as its keeper task last published it (read at the start of each tick).
    pub(super) lease: LeaseView,
    keeper: Option<LeaseKeeper>,
    /// The session the lease follower renews the database's write permit on.
    permit_conn: Option<Conn>,
    pub(super) local: Conn,
    peers: Vec<(String, Conn)>,
    tracker: HealthTracker,
    pub(super) health: HealthState,
    score: f64,
    signals: Vec<Signal>,
    last_probe: Option<Instant>,
    pub(super) wal_lsn: Option<String>,
    apply_lag: Option<u64>,
    caught_up_since: Option<Instant>,
    pub(super) snapshot: Snapshot,
    fresh: bool,
    etcd_error: Option<String>,
    etcd_failing_since: Option<Instant>,
    pub(super) db_fenced: Option<bool>,
    pub(super) forced: Vec<String>,
    /// Endpoints the peers' databases list as forced onto them (endpoint → peer), as
    /// last read from each (kept while a peer cannot be read), after
    /// [`super::decide::resolve_forced`]; with when each was forced (Unix ms).
    forced_elsewhere: BTreeMap<String, String>,
    forced_elsewhere_at: BTreeMap<String, (String, i64)>,
    pub(super) drains: HashMap<(String, i64), DrainProgress>,
    /// Regions seen without a live agent, since when (all of them count from our start).
    absent_since: BTreeMap<String, Instant>,
    /// Endpoints whose owner we saw disappear, until someone owns them again.
    vanished: BTreeSet<String>,
    /// The last action error logged, and when (repeats are logged every 10 s).
    pub(super) last_action_error: Option<(String, Instant)>,
    /// The lease deadline the database's write permit was last set to.
    pub(super) permit_deadline: Option<Instant>,
    /// How long each step of the last tick took (logged when the tick was slow).
    phases: Vec<(&'static str, Duration)>,
    /// Wakes the watchdog's heartbeat task when the published deadline may have moved.
    deadline_moved: watch::Sender<()>,
    pub(super) policy: FencePolicy,
    seq: u64,
    pending_events: Vec<Event>,
    http: reqwest::Client,
    pub(super) shared: SharedState,
    last_writable: Option<bool>,
    last_published: Option<Instant>,
    /// The write of this region's state and events to etcd, running on its own: across a
    /// WAN it takes a round trip to the leader and one of raft (0.2-1.4 s in the lab),
    /// and a tick waiting for it reacted that much later to an owner key going away.
    publishing: Option<tokio::task::JoinHandle<PublishDone>>,
    /// Set when this tick changed what the region owns: the next tick runs at once, so
    /// the region serves (or stops) without waiting a pause and a slow tick more.
    pub(super) again: bool,
    /// pgbouncer, DNS, hooks, Alertmanager: started at the first tick (they spawn tasks).
    pub(super) traffic: Option<TrafficDriver>,
    traffic_status: Option<SharedTraffic>,
}

impl Agent {
    pub fn new(cfg: Arc<Config>, me: &str) -> Result<Agent, AgentError> {
        let ctl = cfg.control()?.clone();
        let node = cfg
            .nodes
            .get(me)
            .ok_or_else(|| AgentError::UnknownNode(me.to_string()))?;
        let io_timeout = io_timeout(&ctl);
        let local = Conn::new(node.sql_config()?, io_timeout);
        let permit_conn = Some(Conn::new(node.sql_config()?, io_timeout));
        let mut peers = Vec::new();
        for p in cfg.peers(me) {
            peers.push((p.name.clone(), Conn::new(p.sql_config()?, io_timeout)));
        }
        // The roles pgmesh itself uses (sidecars and agents log in with the nodes' dsn
        // users) are never fenced: the sidecar must keep applying, the agent must probe.
        let mut exempt = ctl.fence_exempt.clone();
        for n in cfg.nodes.values() {
            if let Some(user) = n.sql_config()?.pg.get_user() {
                if !exempt.iter().any(|e| e == user) {
                    exempt.push(user.to_string());
                }
            }
        }
        let policy = FencePolicy {
            roles: ctl.fence_roles.clone(),
            exempt,
        };
        Ok(Agent {
            me: me.to_string(),
            lease: LeaseView::default(),
            keeper: None,
            permit_conn,
            tracker: HealthTracker::new(ctl.failed_after),
            ctl,
            cfg,
            store: None,
            local,
            peers,
            health: HealthState::Degraded,
            score: 0.0,
            signals: Vec::new(),
            last_probe: None,
            wal_lsn: None,
            apply_lag: None,
            caught_up_since: None,
            snapshot: Snapshot::default(),
            fresh: false,
            etcd_error: None,
            etcd_failing_since: None,
            db_fenced: None,
            forced: Vec::new(),
            forced_elsewhere: BTreeMap::new(),
            forced_elsewhere_at: BTreeMap::new(),
            drains: HashMap::new(),
            absent_since: BTreeMap::new(),
            vanished: BTreeSet::new(),
            permit_deadline: None,
            phases: Vec::new(),
            deadline_moved: watch::channel(()).0,
            last_action_error: None,
            policy,
            seq: 0,
            pending_events: Vec::new(),
            http: reqwest::Client::new(),
            shared: Arc::new(RwLock::new(Published {
                node: me.to_string(),
                why: "starting".into(),
                ..Published::default()
            })),
            last_writable: None,
            last_published: None,
            publishing: None,
            again: false,
            traffic: None,
            traffic_status: None,
        })
    }

    /// The roles this region's fence holds and spares (also the watchdog's).
    #[must_use]
    pub fn fence_policy(&self) -> FencePolicy {
        self.policy.clone()
    }

    #[must_use]
    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    /// Runs until `stop` flips; then revokes the lease (endpoints move at once) and
    /// leaves the primary fenced.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, heartbeat: Option<Heartbeat>) {
        // The watchdog hears from its own task, at once when the deadline moves and at
        // least every HEARTBEAT_EVERY: a tick slowed by a far etcd leader must not let it
        // fence a region whose lease is renewed. A stuck tick cannot extend anything (the
        // deadline only moves on a confirmed renewal), and a frozen process beats no more.
        let (beats_stop, beats_stop_rx) = watch::channel(false);
        let lease_watch = self.keeper().watch();
        let beats = tokio::spawn(follow_lease(
            heartbeat,
            self.permit_conn.take(),
            self.shared.clone(),
            lease_watch,
            self.deadline_moved.subscribe(),
            beats_stop_rx,
        ));
        let placement = self.ctl.etcd_leader.clone().map(|name| {
            tokio::spawn(super::placement::keep_leader(
                self.ctl.etcd.clone(),
                name,
                io_timeout(&self.ctl),
                super::placement::Limits {
                    settle: super::placement::SETTLE,
                    max_round_trip: self.ctl.lease_ttl / 16,
                },
                stop.clone(),
            ))
        });
        loop {
            // A planned move in progress is watched closely: its write pause is made of
            // these ticks (the old owner's drain check, the new owner's first serve).
            let moving = !self.drains.is_empty()
                || self
                    .snapshot
                    .view
                    .switchovers
                    .values()
                    .any(|s| s.to == self.me || s.from == self.me);
            let pause = if std::mem::take(&mut self.again) {
                Duration::ZERO
            } else if moving {
                FAST_TICK
            } else {
                TICK
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                break;
            }
            let began = Instant::now();
            let decision = self.tick().await;
            let took = began.elapsed();
            if took > SLOW_TICK {
                // The watchdog fences when ticks outlast the deadline's slack: say so.
                let phases = self
                    .phases
                    .iter()
                    .map(|(p, d)| format!("{p} {} ms", d.as_millis()))
                    .collect::<Vec<_>>()
                    .join(", ");
                tracing::warn!(node = %self.me, took_ms = took.as_millis(), %phases, "slow agent tick");
            }
            let _ = decision;
            self.deadline_moved.send_replace(());
        }
        let _ = beats_stop.send(true);
        if let Some(p) = placement {
            p.abort();
        }
        let mut heartbeat = beats.await.ok().flatten();
        tracing::info!(node = %self.me, "agent stopping: fencing and giving the lease up");
        if let Some(c) = self.local.get().await {
            let _ = super::fence::fence(
                c,
                &super::fence::FenceRequest {
                    reason: "agent stopped",
                    epoch: 0,
                    by: &format!("agent {}", self.me),
                    policy: &self.policy,
                },
            )
            .await;
        }
        if let Some(k) = self.keeper.as_mut() {
            k.revoke().await;
        }
        if let Some(hb) = heartbeat.as_mut() {
            hb.beat(None, "agent stopped").await;
        }
    }

    /// The lease keeper, started on first use (inside the runtime).
    pub(super) fn keeper(&mut self) -> &mut LeaseKeeper {
        let (ttl, margin) = (self.ctl.lease_ttl, self.ctl.safety_margin);
        let etcd = EtcdTarget {
            endpoints: self.ctl.etcd.clone(),
            cluster: self.ctl.cluster.clone(),
            // Until the deadline: a renewal or probe through a member that is not the
            // leader waits there for one and is answered as soon as an election ends
            // (the witness-lost and region-isolated drills lost the lease of the region
            // that should keep it when every call gave up after TTL/3 and reconnected).
            timeout: ttl.saturating_sub(margin),
        };
        self.keeper
            .get_or_insert_with(|| LeaseKeeper::spawn(ttl, margin, etcd))
    }

    /// One round: observe, decide, act, publish.
    pub async fn tick(&mut self) -> Option<Decision> {
        let now = Instant::now();
        if self.traffic.is_none() && !self.cfg.traffic.is_empty() {
            let homes = self
                .ctl
                .endpoints
                .values()
                .map(|e| (e.name.clone(), e.home.clone()))
                .collect();
            let t = TrafficDriver::start(
                &self.me,
                &self.ctl.cluster,
                self.cfg.traffic.clone(),
                &homes,
            );
            self.traffic_status = Some(t.status());
            self.traffic = Some(t);
        }
        if self.store.is_none() {
            // One member, the leader if it answers: a client spread over every member
            // kept sending a share of its calls to a dead region's member (each failing
            // a tick) and the rest through another region on to the leader.
            let found = Store::connect_ranked(
                &self.ctl.etcd,
                &self.ctl.cluster,
                etcd_timeout(&self.ctl),
                (1, Leader::Required),
            )
            .await;
            match found.into_iter().next() {
                Some(r) => self.store = Some(r.store),
                None => {
                    self.etcd_error =
                        Some("no etcd member answered with a leader (no quorum?)".into());
                }
            }
        }
        let store = self.store.clone();
        self.phases.clear();
        for change in self.keeper().changes() {
            match change {
                LeaseChange::Granted(id) => {
                    tracing::info!(node = %self.me, lease = id, "lease granted");
                }
                LeaseChange::Lost { lease, reason } => {
                    self.event(
                        EventKind::LeaseLost,
                        None,
                        format!("lease {lease:x} lost: {reason}"),
                    );
                }
                LeaseChange::None => {}
            }
        }
        self.lease = self.keeper().view();
        // The etcd read (a WAN round trip or two) and the health probes run side by side.
        let reading = store.map(|store| {
            tokio::spawn(async move {
                let phase = Instant::now();
                (store.snapshot().await, phase.elapsed())
            })
        });
        if self
            .last_probe
            .is_none_or(|t| now.duration_since(t) >= self.ctl.probe_interval)
        {
            self.last_probe = Some(now);
            let phase = Instant::now();
            self.probe().await;
            self.phases.push(("probe", phase.elapsed()));
        }
        if let Some(reading) = reading {
            let (snapshot, took) = match reading.await {
                Ok(r) => r,
                Err(e) => (
                    Err(super::store::StoreError {
                        op: "read",
                        message: e.to_string(),
                    }),
                    Duration::ZERO,
                ),
            };
            self.phases.push(("snapshot", took));
            match snapshot {
                Ok(s) => {
                    self.track_presence(&s, now);
                    self.snapshot = s;
                    self.fresh = true;
                    self.etcd_error = None;
                }
                Err(e) => {
                    self.fresh = false;
                    self.etcd_error = Some(e.to_string());
                    // A client whose connections all broke can stay in its reconnect
                    // backoff for long after etcd is back: start a new one.
                    let since = *self.etcd_failing_since.get_or_insert(now);
                    if now.duration_since(since) > RECONNECT_AFTER {
                        tracing::info!(node = %self.me, "etcd unreachable for {RECONNECT_AFTER:?}: reconnecting");
                        self.store = None;
                        self.etcd_failing_since = None;
                    }
                }
            }
            if self.fresh {
                self.etcd_failing_since = None;
            }
        } else {
            // Without a store the lease cannot be renewed: its deadline still applies.
            self.fresh = false;
        }
        let phase = Instant::now();
        self.read_fence().await;
        self.phases.push(("read_fence", phase.elapsed()));

        // The keeper renewed while this tick read etcd and probed (over a slow WAN that
        // takes seconds): decide on the lease as it is now, not as the tick found it.
        self.lease = self.keeper().view();
        {
            let mut p = self.shared.write().unwrap_or_else(|e| e.into_inner());
            p.permit_gate = false;
            if p.permit_until > self.permit_deadline && self.db_fenced == Some(false) {
                self.permit_deadline = p.permit_until;
            }
        }
        let lease = self.usable_lease(Instant::now());
        let view: ClusterView = self.snapshot.view.clone();
        let caught_up = self.caught_up();
        let traffic_unheld = self
            .traffic
            .as_mut()
            .map(TrafficDriver::unheld)
            .unwrap_or_default();
        let absent_for: BTreeMap<String, Duration> = self
            .absent_since
            .iter()
            .map(|(n, t)| (n.clone(), now.duration_since(*t)))
            .collect();
        let decision = decide(&Observation {
            me: &self.me,
            config: &self.ctl,
            lease,
            quarantine: self.lease.quarantined(Instant::now()),
            view: &view,
            fresh: self.fresh,
            health: self.health,
            db_fenced: self.db_fenced,
            forced: &self.forced,
            forced_elsewhere: &self.forced_elsewhere,
            caught_up,
            now_ms: now_ms(),
            absent_for: &absent_for,
            vanished: &self.vanished,
            permit_outstanding: self.db_fenced != Some(true)
                && self
                    .permit_deadline
                    .is_some_and(|d| Instant::now() < d + PERMIT_SLACK),
            traffic_unheld: &traffic_unheld,
        });
        if self.last_writable != Some(decision.writable) {
            tracing::info!(node = %self.me, writable = decision.writable, why = %decision.why, "region write state");
            self.last_writable = Some(decision.writable);
        }
        let phase = Instant::now();
        self.execute(&decision, lease).await;
        self.phases.push(("execute", phase.elapsed()));
        if let Some(t) = self.traffic.as_mut() {
            t.follow(&self.snapshot.view, &decision.serving);
            t.events(&self.pending_events);
        }
        let phase = Instant::now();
        self.publish(&decision).await;
        self.phases.push(("publish", phase.elapsed()));
        Some(decision)
    }

    /// Which regions have no live agent (since when), and which endpoints lost their owner
    /// while we watched: the difference between a peer that died and one still starting.
    fn track_presence(&mut self, next: &Snapshot, now: Instant) {
        for node in self.cfg.nodes.keys() {
            if next.view.members.contains_key(node) {
                self.absent_since.remove(node);
            } else {
                self.absent_since.entry(node.clone()).or_insert(now);
            }
        }
        for e in self.ctl.endpoints.keys() {
            let had = self.snapshot.view.owners.contains_key(e);
            if next.view.owners.contains_key(e) {
                self.vanished.remove(e);
            } else if had {
                self.vanished.insert(e.clone());
            }
        }
    }

    /// The lease, when live by our clock and our `member/<me>` key is on it (else another
    /// agent process of this node may hold the member key: we must not act).
    fn usable_lease(&self, now: Instant) -> Option<i64> {
        let id = self.lease.live(now)?;
        match self.snapshot.view.members.get(&self.me) {
            Some(m) if m.lease == id => Some(id),
            _ => None,
        }
    }

    fn caught_up(&mut self) -> bool {
        let Failback::Auto { max_lag, after } = self.ctl.failback else {
            return false;
        };
        match self.apply_lag {
            Some(l) if l <= max_lag.0 => {
                let since = *self.caught_up_since.get_or_insert_with(Instant::now);
                since.elapsed() >= after
            }
            _ => {
                self.caught_up_since = None;
                false
            }
        }
    }

    async fn probe(&mut self) {
        let h = &self.ctl.health;
        let t = io_timeout(&self.ctl);
        let mut signals = Vec::new();
        let (pg, facts) =
            probe::postgres(self.local.get().await, &self.me, h.weight_postgres, t).await;
        if pg.status == SignalStatus::Fail {
            self.local.drop_session();
        }
        let mut pg = pg;
        if pg.status == SignalStatus::Ok {
            // A replicated table without the fence trigger would stay writable while
            // fenced: say so where people look, with the fix.
            if let Some(c) = self.local.get().await {
                match super::fence::unguarded_tables(c).await {
                    Ok(t) if t.is_empty() => {}
                    Ok(t) => {
                        pg.status = SignalStatus::Warn;
                        pg.detail = format!(
                            "{}; not held by the fence: {} (run pgmesh setup)",
                            pg.detail,
                            t.join(", ")
                        );
                    }
                    Err(e) => {
                        pg.status = SignalStatus::Warn;
                        pg.detail = format!("{}; {e}", pg.detail);
                    }
                }
            }
        }
        signals.push(pg);
        self.wal_lsn = facts.wal_lsn;
        signals.push(probe::slots(self.local.get().await, h.weight_slot, t).await);
        let mut lag = None;
        for (peer, conn) in &mut self.peers {
            // The operator's forced moves onto the peer first: a peer that cannot be
            // read keeps what it said last (it may be writable for them without a lease).
            let forced = match conn.get().await {
                Some(c) => tokio::time::timeout(t, db::forced(c))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {t:?}"))),
                None => Err("cannot connect".to_string()),
            };
            match forced {
                Ok(f) => {
                    self.forced_elsewhere_at.retain(|_, (n, _)| n != peer);
                    for (e, at) in f {
                        self.forced_elsewhere_at.insert(e, (peer.clone(), at));
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "cannot read the peer's pgmesh.forced");
                    conn.drop_session();
                    continue;
                }
            }
            let l = probe::apply_lag(conn.get().await, &self.me, t).await;
            if l.is_none() {
                conn.drop_session();
            }
            lag = lag.max(l);
        }
        self.apply_lag = lag;
        let sidecar_url = h
            .sidecar_url
            .as_ref()
            .map(|u| u.replace("{node}", &self.me))
            .or_else(|| {
                self.cfg
                    .http
                    .as_ref()
                    .map(|http| format!("http://{}", http.listen))
            });
        signals.push(probe::sidecar(&self.http, sidecar_url.as_deref(), lag, h, t).await);
        signals.push(Signal::new(
            "etcd",
            h.weight_etcd,
            if self.fresh {
                SignalStatus::Ok
            } else {
                SignalStatus::Fail
            },
            self.etcd_error
                .clone()
                .unwrap_or_else(|| "reachable with quorum".into()),
        ));
        for p in &h.promql {
            signals.push(probe::promql(&self.http, p, t).await);
        }
        let score = health::score(&signals);
        let state = self.tracker.observe(health::verdict(score, h));
        if state != self.health {
            let detail: Vec<String> = signals
                .iter()
                .filter(|s| s.status != SignalStatus::Ok)
                .map(|s| format!("{}: {}", s.name, s.detail))
                .collect();
            self.event(
                EventKind::HealthChanged,
                None,
                format!(
                    "{} -> {} (score {score:.2}){}{}",
                    self.health.as_str(),
                    state.as_str(),
                    if detail.is_empty() { "" } else { "; " },
                    detail.join("; ")
                ),
            );
        }
        if let Some(t) = &self.traffic {
            t.health(state, &signals);
        }
        self.health = state;
        self.score = score;
        self.signals = signals;
        if let Some(c) = self.local.get().await {
            match db::forced(c).await {
                Ok(f) => {
                    let (here, elsewhere, stale) =
                        super::decide::resolve_forced(&f, &self.forced_elsewhere_at);
                    self.forced = here;
                    self.forced_elsewhere = elsewhere;
                    for e in stale {
                        // The operator forced it onto a peer after forcing it here.
                        tracing::warn!(node = %self.me, endpoint = %e, "an older forced failover to this region is superseded by a later one to a peer; forgetting it");
                        if let Err(err) = db::clear_forced(c, &e).await {
                            tracing::warn!(node = %self.me, endpoint = %e, error = %err, "cannot forget the superseded forced failover");
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read pgmesh.forced"),
            }
        }
    }

    async fn read_fence(&mut self) {
        let state = match self.local.get().await {
            Some(c) => super::fence::fence_state(c).await.ok(),
            None => None,
        };
        if state.is_none() {
            self.local.drop_session();
        }
        if let Some(s) = &state {
            let offset = super::fence::clock_offset_ms(s.server_now_ms, now_ms());
            let mut p = self.shared.write().unwrap_or_else(|e| e.into_inner());
            p.db_clock_offset_ms = offset;
        }
        self.db_fenced = state.map(|s| s.fenced);
    }

    /// Records a transition: log, metric, and etcd history (kept for later when etcd is
    /// unreachable).
    pub(super) fn event(
        &mut self,
        kind: EventKind,
        endpoint: Option<&str>,
        reason: String,
    ) -> &mut Event {
        tracing::warn!(node = %self.me, event = kind.as_str(), endpoint = endpoint.unwrap_or(""), "{reason}");
        metrics::counter!("pgmesh_agent_events_total", "kind" => kind.as_str()).increment(1);
        self.seq += 1;
        self.pending_events.push(Event {
            at_ms: now_ms(),
            node: self.me.clone(),
            seq: self.seq,
            kind,
            endpoint: endpoint.map(str::to_string),
            from: None,
            to: None,
            epoch: None,
            reason,
            rpo: None,
        });
        // Bounded: when etcd is away for long, the oldest unsent events go (the log has them).
        if self.pending_events.len() > 100 {
            self.pending_events.remove(0);
        }
        let last = self.pending_events.len() - 1;
        &mut self.pending_events[last]
    }

    async fn publish(&mut self, d: &Decision) {
        let now = Instant::now();
        let lease = self.lease.live(now);
        {
            let mut p = self.shared.write().unwrap_or_else(|e| e.into_inner());
            p.writable = d.writable;
            p.permit_gate = d.writable;
            p.why = d.why.clone();
            p.serving = d.serving.clone();
            p.lease = lease;
            p.deadline = self.lease.deadline();
            p.forced = !self.forced.is_empty() && lease.is_none();
            p.fenced = self.db_fenced;
            p.health = self.health.as_str().to_string();
            p.score = self.score;
            p.failed_probes_in_a_row = self.tracker.failed_in_a_row();
            p.signals = self.signals.clone();
            p.etcd_ok = self.fresh;
            p.etcd_error = self.etcd_error.clone();
            p.traffic = self
                .traffic_status
                .as_ref()
                .map(|t| t.read().unwrap_or_else(|e| e.into_inner()).clone());
        }
        metrics::gauge!("pgmesh_agent_writable").set(if d.writable { 1.0 } else { 0.0 });
        metrics::gauge!("pgmesh_agent_lease_live").set(if lease.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("pgmesh_agent_health_score").set(self.score);
        metrics::gauge!("pgmesh_agent_fenced").set(match self.db_fenced {
            Some(true) => 1.0,
            Some(false) => 0.0,
            None => -1.0,
        });
        for e in self.ctl.endpoints.keys() {
            let owned = d.serving.iter().any(|s| s == e);
            metrics::gauge!("pgmesh_agent_endpoint_serving", "endpoint" => e.clone())
                .set(if owned { 1.0 } else { 0.0 });
        }
        // The last write still running: this tick's state goes with the next one.
        if self.publishing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(h) = self.publishing.take() {
            if let Ok(done) = h.await {
                if !done.published {
                    self.last_published = None;
                }
                let mut left = done.unrecorded;
                left.append(&mut self.pending_events);
                self.pending_events = left;
            }
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        if !self.fresh && lease.is_none() {
            return;
        }
        let due = self
            .last_published
            .is_none_or(|t| now.duration_since(t) >= self.ctl.probe_interval);
        let mine_on_lease = lease.is_some_and(|l| {
            self.snapshot
                .view
                .members
                .get(&self.me)
                .is_some_and(|m| m.lease == l)
        });
        let mut member = None;
        if due || (lease.is_some() && !mine_on_lease) {
            let value = MemberValue {
                node: self.me.clone(),
                lease: lease.unwrap_or(0),
                health: self.health.as_str().into(),
                score: self.score,
                fenced: self.db_fenced,
                writable: d.writable,
                wal_lsn: self.wal_lsn.clone(),
                apply_lag_bytes: self.apply_lag,
                traffic: self
                    .traffic_status
                    .as_ref()
                    .map(|t| t.read().unwrap_or_else(|e| e.into_inner()).lines())
                    .unwrap_or_default(),
                at_ms: now_ms(),
            };
            let held_by_other = self
                .snapshot
                .view
                .members
                .get(&self.me)
                .is_some_and(|m| Some(m.lease) != lease);
            let member_lease = if held_by_other { None } else { lease };
            if held_by_other && lease.is_some() {
                tracing::warn!(node = %self.me, "member key of {} is held by another lease: another agent of this node may be running, or the last one died less than lease_ttl ago; waiting", self.me);
            }
            self.last_published = Some(now);
            member = Some((value, member_lease));
        }
        let events = if self.fresh {
            std::mem::take(&mut self.pending_events)
        } else {
            Vec::new()
        };
        if member.is_none() && events.is_empty() {
            return;
        }
        let me = self.me.clone();
        self.publishing = Some(tokio::spawn(publish_to_etcd(store, me, member, events)));
    }
}

/// What a background write of the region's state left to do.
pub(super) struct PublishDone {
    published: bool,
    unrecorded: Vec<Event>,
}

async fn publish_to_etcd(
    store: Store,
    me: String,
    member: Option<(MemberValue, Option<i64>)>,
    events: Vec<Event>,
) -> PublishDone {
    let mut published = true;
    if let Some((value, lease)) = member {
        if let Err(e) = store.publish(&value, lease).await {
            tracing::warn!(node = %me, error = %e, "cannot publish this region's state to etcd");
            published = false;
        }
    }
    for (i, e) in events.iter().enumerate() {
        if let Err(err) = store.record(e).await {
            tracing::debug!(error = %err, "cannot record event yet");
            return PublishDone {
                published,
                unrecorded: events[i..].to_vec(),
            };
        }
    }
    PublishDone {
        published,
        unrecorded: Vec::new(),
    }
}

/// The longest the watchdog goes without a heartbeat while the agent runs.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);

/// Follows the lease keeper: when a confirmed renewal extends the lease the last
/// decision wrote under, the published deadline moves at once (so `/owner` and the
/// watchdog see it), not at the end of a tick the WAN slowed down. The lease is live
/// until then whatever the running tick decides; a decision to stop writing fences and
/// disarms as before. Also tells the watchdog the published deadline when it may have
/// moved and every [`HEARTBEAT_EVERY`]; returns the heartbeat when told to stop (the
/// agent's last words to the watchdog come after its own fencing).
async fn follow_lease(
    mut hb: Option<Heartbeat>,
    mut permit_conn: Option<Conn>,
    shared: SharedState,
    mut lease: watch::Receiver<LeaseView>,
    mut moved: watch::Receiver<()>,
    mut stop: watch::Receiver<bool>,
) -> Option<Heartbeat> {
    let mut permit_until: Option<Instant> = None;
    loop {
        let (until, why, extend_permit) = {
            let now = Instant::now();
            let view = *lease.borrow_and_update();
            let mut p = shared.write().unwrap_or_else(|e| e.into_inner());
            let live = view.live(now);
            if live.is_some() && p.lease == live && view.deadline() > p.deadline {
                p.deadline = view.deadline();
            }
            let until = if p.writable_at(now) && !p.forced {
                p.deadline
            } else {
                None
            };
            // The database's permit follows too, while the region writes unfenced: a
            // tick slowed by the WAN must not let it lapse under a live lease.
            let extend = p.permit_gate
                && p.writable
                && p.fenced == Some(false)
                && until > permit_until
                && until > p.permit_until;
            if extend {
                // Recorded before the write: a decision that follows counts it.
                p.permit_until = until;
            }
            (until, p.why.clone(), if extend { until } else { None })
        };
        if let Some(hb) = hb.as_mut() {
            hb.beat(until, &why).await;
        }
        if let (Some(deadline), Some(conn)) = (extend_permit, permit_conn.as_mut()) {
            let offset = shared
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .db_clock_offset_ms;
            if extend_db_permit(conn, deadline, offset).await {
                permit_until = Some(deadline);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            _ = moved.changed() => {}
            r = lease.changed() => if r.is_err() {
                // The keeper is gone (shutting down): keep the plain pace.
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            },
            _ = stop.changed() => return hb,
        }
        if *stop.borrow() {
            return hb;
        }
    }
}

/// Moves the database's write permit to `deadline` (never past a fence: the statement
/// does nothing on a fenced database); `offset_ms`: the server's clock ahead of ours.
/// Whether it was moved.
async fn extend_db_permit(conn: &mut Conn, deadline: Instant, offset_ms: i64) -> bool {
    let Some(ms) = deadline
        .checked_duration_since(Instant::now())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
    else {
        return false;
    };
    let permit = super::fence::Permit::until(ms, offset_ms);
    let Some(client) = conn.get().await else {
        return false;
    };
    match super::fence::renew_permit(client, permit).await {
        Ok(moved) => moved,
        Err(e) => {
            tracing::debug!(error = %e, "cannot extend the write permit from the lease follower");
            conn.drop_session();
            false
        }
    }
}

/// Per-call timeout for etcd: a third of the lease, so a slow etcd (an fsync on a busy
/// disk) still renews in time, and two calls fit before the fence deadline. Safety does
/// not hang on it: the watchdog and the database's write permit hold the deadline even
/// when the loop is stuck.
#[must_use]
pub fn etcd_timeout(ctl: &ControlConfig) -> Duration {
    (ctl.lease_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(3))
}

/// Per-call timeout for PostgreSQL: short enough that a hung call cannot eat the safety margin.
#[must_use]
pub fn io_timeout(ctl: &ControlConfig) -> Duration {
    (ctl.safety_margin / 2).clamp(Duration::from_millis(200), Duration::from_secs(2))
}
