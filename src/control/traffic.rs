//! The agent's side of moving clients ([`crate::traffic`]): what each integration should
//! show given the cluster view, carried out by background tasks so that a slow pgbouncer,
//! DNS server, hook or Alertmanager never holds up the loop that renews the lease and
//! fences.
//!
//! - **pgbouncer**: the agent of the pgbouncer's region keeps its databases file pointed
//!   at each endpoint's owner (rewrite, RELOAD, check) and resumes a database that a
//!   planned move paused once the move ended. The old owner pauses the endpoint on every
//!   pgbouncer before it stops writes ([`TrafficDriver::hold`]): PAUSE waits for running
//!   transactions, so none is cut by the fence, and clients wait instead of failing.
//! - **DNS**: the owner publishes `<endpoint>.<zone>` (one UPDATE per server) until every
//!   server answers the new set.
//! - **hooks** get every event; **Alertmanager** gets the health after every probe.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::decide::ClusterView;
use super::event::Event;
use super::health::{HealthState, Signal};
use crate::config::TrafficConfig;
use crate::traffic::alert::Alerter;
use crate::traffic::dns::DnsPublisher;
use crate::traffic::hook::{HookPayload, Hooks};
use crate::traffic::pgbouncer::{self, Admin, PgbouncerConfig};

/// A paused database that nothing holds any more is resumed after this long, when the
/// agent did not see why it was paused (a stale view, or an agent that died mid-move).
const RESUME_GRACE: Duration = Duration::from_secs(2);
/// How often a pgbouncer is checked against what it should show, besides on changes.
const BOUNCER_RECHECK: Duration = Duration::from_secs(2);
/// DNS retries after a publish that not every server confirmed: from 1 s, doubling.
const DNS_RETRY_MAX: Duration = Duration::from_secs(30);

/// What the integrations report, for `/health` and `pgmesh status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrafficStatus {
    /// Per pgbouncer this agent manages: a line on what it shows now.
    pub pgbouncer: BTreeMap<String, String>,
    /// Per endpoint this agent published: the last DNS outcome.
    pub dns: BTreeMap<String, String>,
    /// The last planned-move pause, per endpoint.
    pub holds: BTreeMap<String, String>,
}

impl TrafficStatus {
    /// One line per integration, for the member key in etcd and `pgmesh status`.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .pgbouncer
            .iter()
            .map(|(n, l)| format!("pgbouncer {n}: {l}"))
            .collect();
        out.extend(self.dns.values().cloned());
        out.extend(
            self.holds
                .iter()
                .map(|(e, l)| format!("last pause of {e}: {l}")),
        );
        out
    }
}

pub type SharedTraffic = Arc<RwLock<TrafficStatus>>;

/// What one endpoint on a pgbouncer should be: pointed at its owner, and whether a planned
/// move holds it paused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Want {
    owner: Option<String>,
    hold: bool,
}

/// A pause of an endpoint's clients for one planned move (endpoint, epoch).
enum Hold {
    Pausing(JoinHandle<Vec<String>>, Instant),
    Held,
}

pub(super) struct TrafficDriver {
    me: String,
    cluster: String,
    cfg: TrafficConfig,
    hooks: Option<Hooks>,
    alerter: Option<Alerter>,
    bouncers: Vec<watch::Sender<BTreeMap<String, Want>>>,
    dns: BTreeMap<String, watch::Sender<bool>>,
    holds: HashMap<(String, i64), Hold>,
    status: SharedTraffic,
    /// Events up to this sequence number went to the hooks.
    hooked_seq: u64,
}

impl TrafficDriver {
    /// Starts the background parts; `homes` maps each endpoint to its home region (where a
    /// pgbouncer points an endpoint before any owner is known).
    pub(super) fn start(
        me: &str,
        cluster: &str,
        cfg: TrafficConfig,
        homes: &BTreeMap<String, String>,
    ) -> TrafficDriver {
        let status = SharedTraffic::default();
        let hooks = (!cfg.hooks.is_empty()).then(|| Hooks::spawn(cluster, cfg.hooks.clone()));
        let alerter = cfg.alertmanager.clone().map(Alerter::spawn);
        let mut bouncers = Vec::new();
        for b in cfg.pgbouncer.iter().filter(|b| b.node == me) {
            let initial: BTreeMap<String, Want> = b
                .endpoints
                .iter()
                .map(|e| {
                    (
                        e.clone(),
                        Want {
                            owner: None,
                            hold: false,
                        },
                    )
                })
                .collect();
            let (tx, rx) = watch::channel(initial);
            tokio::spawn(run_bouncer(b.clone(), homes.clone(), rx, status.clone()));
            bouncers.push(tx);
        }
        let mut dns = BTreeMap::new();
        if let Some(d) = &cfg.dns {
            let publisher = Arc::new(DnsPublisher::new(d.clone()));
            for endpoint in homes.keys() {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(run_dns(
                    publisher.clone(),
                    endpoint.clone(),
                    me.to_string(),
                    rx,
                    status.clone(),
                ));
                dns.insert(endpoint.clone(), tx);
            }
        }
        TrafficDriver {
            me: me.to_string(),
            cluster: cluster.to_string(),
            cfg,
            hooks,
            alerter,
            bouncers,
            dns,
            holds: HashMap::new(),
            status,
            hooked_seq: 0,
        }
    }

    pub(super) fn status(&self) -> SharedTraffic {
        self.status.clone()
    }

    /// Hands new events to the hooks (never waits for them).
    pub(super) fn events(&mut self, events: &[Event]) {
        let Some(hooks) = &self.hooks else { return };
        let mut last = self.hooked_seq;
        for e in events.iter().filter(|e| e.seq > self.hooked_seq) {
            if let Some(p) = HookPayload::from_event(&self.cluster, e) {
                hooks.send(p);
            }
            last = last.max(e.seq);
        }
        self.hooked_seq = last;
    }

    /// The region's health after a probe, for Alertmanager.
    pub(super) fn health(&self, state: HealthState, signals: &[Signal]) {
        if let Some(a) = &self.alerter {
            a.update(&self.cluster, &self.me, state, signals);
        }
    }

    /// Points the integrations at the owners in `view`; `serving` are the endpoints this
    /// region serves now (it publishes their DNS).
    pub(super) fn follow(&mut self, view: &ClusterView, serving: &[String]) {
        for tx in &self.bouncers {
            tx.send_if_modified(|wants| {
                let mut changed = false;
                for (endpoint, want) in wants.iter_mut() {
                    let next = Want {
                        owner: view.owners.get(endpoint).map(|o| o.node.clone()),
                        hold: view.switchovers.get(endpoint).is_some_and(|s| s.stopping),
                    };
                    // Unowned (a failover in progress): keep pointing where it did.
                    let next = Want {
                        owner: next.owner.or_else(|| want.owner.clone()),
                        ..next
                    };
                    if *want != next {
                        *want = next;
                        changed = true;
                    }
                }
                changed
            });
        }
        for (endpoint, tx) in &self.dns {
            let mine = serving.iter().any(|s| s == endpoint);
            tx.send_if_modified(|v| std::mem::replace(v, mine) != mine);
        }
    }

    /// Endpoints with a pgbouncer whose clients are not yet paused for the planned move
    /// of `epoch` in progress (see [`super::decide::Observation::traffic_unheld`]).
    pub(super) fn unheld(&mut self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for b in &self.cfg.pgbouncer {
            out.extend(b.endpoints.iter().cloned());
        }
        for ((endpoint, _), hold) in &mut self.holds {
            if let Hold::Pausing(job, started) = hold {
                if job.is_finished() {
                    let ms = started.elapsed().as_millis();
                    // The job is done: this does not wait.
                    let problems = futures_util::FutureExt::now_or_never(job)
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    let line = if problems.is_empty() {
                        format!("clients paused on every pgbouncer in {ms} ms")
                    } else {
                        format!(
                            "paused in {ms} ms with problems (writes stop anyway; sessions in a transaction there are ended by the fence): {}",
                            problems.join("; ")
                        )
                    };
                    tracing::info!(node = %self.me, endpoint, "{line}");
                    self.status
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .holds
                        .insert(endpoint.clone(), line);
                    *hold = Hold::Held;
                }
            }
            if matches!(hold, Hold::Held) {
                out.remove(endpoint);
            }
        }
        out
    }

    /// Pauses `endpoint` on every pgbouncer that serves it, in the background; forgets the
    /// holds of moves that are over (`active`: the moves the decision still works on).
    pub(super) fn hold(&mut self, endpoint: &str, epoch: i64) {
        let key = (endpoint.to_string(), epoch);
        if self.holds.contains_key(&key) {
            return;
        }
        let targets: Vec<PgbouncerConfig> = self.cfg.bouncers_of(endpoint).cloned().collect();
        let db = endpoint.to_string();
        let job = tokio::spawn(async move {
            let pauses = targets.iter().map(|b| {
                let db = db.clone();
                async move {
                    let r = async {
                        // An unreachable pgbouncer must not hold the others paused for
                        // long: it cannot pass queries on either.
                        let connect = b.pause_timeout.min(Duration::from_secs(2));
                        let admin = Admin::connect(&b.admin, connect)
                            .await
                            .map_err(|e| e.to_string())?;
                        admin
                            .pause(&db, b.pause_timeout)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    .await;
                    r.err().map(|e| format!("{}: {e}", b.name))
                }
            });
            futures_util::future::join_all(pauses)
                .await
                .into_iter()
                .flatten()
                .collect()
        });
        self.holds.insert(key, Hold::Pausing(job, Instant::now()));
    }

    /// Drops the holds of moves the decision no longer works on.
    pub(super) fn retain_holds(&mut self, active: &[(String, i64)]) {
        self.holds.retain(|k, _| active.contains(k));
    }
}

/// Keeps one pgbouncer pointed at the owners: on every change of what it should show, and
/// every [`BOUNCER_RECHECK`].
async fn run_bouncer(
    cfg: PgbouncerConfig,
    homes: BTreeMap<String, String>,
    mut wants: watch::Receiver<BTreeMap<String, Want>>,
    status: SharedTraffic,
) {
    let mut admin: Option<Admin> = None;
    let mut seen_owner: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_hold: BTreeSet<String> = BTreeSet::new();
    let mut paused_unheld_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_line = String::new();
    loop {
        let want = wants.borrow_and_update().clone();
        let line = match reconcile_bouncer(
            &cfg,
            &homes,
            &want,
            &mut admin,
            &mut seen_owner,
            &mut seen_hold,
            &mut paused_unheld_since,
        )
        .await
        {
            Ok(line) => line,
            Err(e) => {
                admin = None;
                format!("error: {e}")
            }
        };
        if line != last_line {
            if line.starts_with("error") {
                tracing::warn!(pgbouncer = %cfg.name, "{line}");
            } else {
                tracing::info!(pgbouncer = %cfg.name, "{line}");
            }
            status
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .pgbouncer
                .insert(cfg.name.clone(), line.clone());
            last_line = line;
        }
        // Soon again while a database waits to be resumed or the last pass failed.
        let recheck = if paused_unheld_since.is_empty() && !last_line.starts_with("error") {
            BOUNCER_RECHECK
        } else {
            Duration::from_millis(100)
        };
        tokio::select! {
            changed = wants.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(recheck) => {}
        }
    }
}

/// One pass: the databases file says what the owners are, and no database stays paused
/// without a move holding it. Returns a line saying what the pgbouncer shows.
async fn reconcile_bouncer(
    cfg: &PgbouncerConfig,
    homes: &BTreeMap<String, String>,
    want: &BTreeMap<String, Want>,
    admin: &mut Option<Admin>,
    seen_owner: &mut BTreeMap<String, String>,
    seen_hold: &mut BTreeSet<String>,
    paused_unheld_since: &mut BTreeMap<String, Instant>,
) -> Result<String, String> {
    let timeout = Duration::from_secs(5);
    if admin.is_none() {
        *admin = Some(
            Admin::connect(&cfg.admin, timeout)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(a) = admin.as_ref() else {
        return Err("no admin connection".into());
    };
    // Point each endpoint at its owner (its home before any owner is known).
    let mut owners = BTreeMap::new();
    let mut entries = BTreeMap::new();
    for (endpoint, w) in want {
        let node = w
            .owner
            .clone()
            .or_else(|| seen_owner.get(endpoint).cloned())
            .or_else(|| homes.get(endpoint).cloned())
            .unwrap_or_default();
        if let Some(conn) = cfg.targets.get(&node) {
            entries.insert(endpoint.clone(), conn.clone());
        }
        owners.insert(endpoint.clone(), node);
    }
    pgbouncer::repoint(a, &cfg.databases_file, &entries)
        .await
        .map_err(|e| e.to_string())?;
    let rows = a.databases().await.map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    for (endpoint, w) in want {
        let owner = owners.get(endpoint).cloned().unwrap_or_default();
        let moved = seen_owner
            .insert(endpoint.clone(), owner.clone())
            .is_some_and(|before| before != owner);
        if w.hold {
            seen_hold.insert(endpoint.clone());
        }
        let Some(row) = rows.iter().find(|r| &r.name == endpoint) else {
            parts.push(format!(
                "{endpoint}: missing from SHOW DATABASES (is {} %include'd in pgbouncer.ini?)",
                cfg.databases_file.display()
            ));
            continue;
        };
        let mut state = if row.paused { "paused" } else { "serving" };
        if row.paused && !w.hold {
            let since = *paused_unheld_since
                .entry(endpoint.clone())
                .or_insert_with(Instant::now);
            if moved || seen_hold.contains(endpoint) || since.elapsed() >= RESUME_GRACE {
                a.resume(endpoint).await.map_err(|e| e.to_string())?;
                seen_hold.remove(endpoint);
                paused_unheld_since.remove(endpoint);
                state = "resumed";
            }
        } else {
            paused_unheld_since.remove(endpoint);
            if !w.hold {
                seen_hold.remove(endpoint);
            }
        }
        parts.push(format!(
            "{endpoint} -> {owner} ({}:{}) {state}",
            row.host, row.port
        ));
    }
    Ok(parts.join(", "))
}

/// Publishes one endpoint's DNS answer while this region serves it, until every server
/// confirmed; again whenever the region starts serving it anew.
async fn run_dns(
    publisher: Arc<DnsPublisher>,
    endpoint: String,
    me: String,
    mut serving: watch::Receiver<bool>,
    status: SharedTraffic,
) {
    loop {
        while !*serving.borrow_and_update() {
            if serving.changed().await.is_err() {
                return;
            }
        }
        let mut wait = Duration::from_secs(1);
        loop {
            let outcome = publisher.publish(&endpoint, &me).await;
            let line = outcome.summary();
            if outcome.done() {
                tracing::info!(endpoint, "{line}");
            } else {
                tracing::warn!(endpoint, "{line}; retrying in {wait:?}");
            }
            status
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .dns
                .insert(endpoint.clone(), line);
            metrics::counter!("pgmesh_dns_publishes_total", "outcome" => if outcome.done() { "done" } else { "incomplete" }).increment(1);
            if outcome.done() {
                break;
            }
            tokio::select! {
                _ = serving.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
            if !*serving.borrow() {
                break;
            }
            wait = (wait * 2).min(DNS_RETRY_MAX);
        }
        // Published: wait until this region stops serving it, then until it serves again.
        while *serving.borrow_and_update() {
            if serving.changed().await.is_err() {
                return;
            }
        }
    }
}
