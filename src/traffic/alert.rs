//! Health alerts to Alertmanager (`POST /api/v2/alerts`): a region that is degraded or
//! failed, and each signal that fails or warns, fire an alert that is resolved when it
//! clears.
//!
//! [`AlertBook`] is the pure core: from the region's health and the clock it computes what
//! to post. [`Alerter`] is the shell: the agent hands it the health after every probe
//! ([`Alerter::update`], never waits) and a task posts to every Alertmanager of the HA set.
//!
//! Alertmanager forgets an alert at its `endsAt`, so firing alerts are posted with
//! `endsAt = now + 4 × resend` and posted again every `resend`: an agent that dies stops
//! refreshing and its alerts end by themselves within four resend intervals. A cleared
//! alert is posted once with `endsAt = now` (Alertmanager 0.25 then drops it from
//! `GET /api/v2/alerts` at once) and that same resolve is repeated at the resend ticks
//! while an Alertmanager that missed it could still hold the alert as firing, as
//! Prometheus does with its resolved alerts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use serde::{Serialize, Serializer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::hook::{error_chain, rfc3339_ms};
use crate::control::health::{HealthState, Signal, SignalStatus};
use crate::control::keys::now_ms;

/// Per `outcome` (ok, error): posts to one Alertmanager.
pub const ALERTMANAGER_POSTS: &str = "pgmesh_alertmanager_posts_total";
/// The region is degraded (severity warning).
pub const REGION_DEGRADED: &str = "PgmeshRegionDegraded";
/// The region is failed (severity critical).
pub const REGION_FAILED: &str = "PgmeshRegionFailed";
/// One health signal fails (severity warning) or warns (severity info).
pub const SIGNAL_FAILING: &str = "PgmeshSignalFailing";
/// How long a posted firing alert stays active without a resend, in resend intervals.
const ACTIVE_FOR_RESENDS: i64 = 4;
/// Characters of an Alertmanager's error answer quoted in a report.
const BODY_CHARS: usize = 300;

/// `[traffic.alertmanager]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertmanagerConfig {
    /// Every Alertmanager of the HA set (base URLs); each gets every alert.
    pub urls: Vec<String>,
    /// Extra static labels on every alert (the built-in ones win on a clash).
    pub labels: BTreeMap<String, String>,
    /// How often firing alerts are posted again (default 30 s).
    pub resend: Duration,
    /// Per post (default 5 s).
    pub timeout: Duration,
}

/// One alert as Alertmanager's v2 API takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// The identity: `alertname`, `cluster`, `node`, `severity`, and `state` or `signal`.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt", serialize_with = "time")]
    pub starts_at_ms: i64,
    #[serde(rename = "endsAt", serialize_with = "time")]
    pub ends_at_ms: i64,
}

fn time<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_ms(*ms))
}

impl Alert {
    #[must_use]
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    /// Whether this post resolves the alert (`endsAt` not in the future).
    #[must_use]
    pub fn resolves(&self, now_ms: i64) -> bool {
        self.ends_at_ms <= now_ms
    }
}

type Labels = BTreeMap<String, String>;

struct Firing {
    alert: Alert,
    last_sent_ms: i64,
}

struct Resolved {
    alert: Alert,
    last_sent_ms: i64,
    /// After this no Alertmanager can hold the alert as firing any more.
    until_ms: i64,
}

/// What is firing for one region, and what to post when its health changes or time
/// passes. Pure: the caller passes the time.
pub struct AlertBook {
    labels: Labels,
    resend_ms: i64,
    firing: BTreeMap<Labels, Firing>,
    resolved: BTreeMap<Labels, Resolved>,
}

impl AlertBook {
    /// `labels`: extra static labels; `resend`: how often firing alerts are posted again.
    #[must_use]
    pub fn new(labels: BTreeMap<String, String>, resend: Duration) -> AlertBook {
        AlertBook {
            labels,
            resend_ms: i64::try_from(resend.as_millis()).unwrap_or(i64::MAX).max(1),
            firing: BTreeMap::new(),
            resolved: BTreeMap::new(),
        }
    }

    /// Takes the region's latest health and returns what to post now: alerts that started
    /// or changed, firing alerts due for their resend, and resolves of alerts that cleared
    /// (repeated at resend ticks while needed). Empty when nothing is due.
    pub fn observe(
        &mut self,
        cluster: &str,
        node: &str,
        state: HealthState,
        signals: &[Signal],
        now_ms: i64,
    ) -> Vec<Alert> {
        let want = self.wanted(cluster, node, state, signals);
        let active_until = now_ms.saturating_add(self.resend_ms.saturating_mul(ACTIVE_FOR_RESENDS));
        let mut out = Vec::new();
        // Cleared: one resolve now.
        let cleared: Vec<Labels> = self
            .firing
            .keys()
            .filter(|l| !want.contains_key(*l))
            .cloned()
            .collect();
        for labels in cleared {
            if let Some(f) = self.firing.remove(&labels) {
                let mut alert = f.alert;
                alert.ends_at_ms = now_ms.max(alert.starts_at_ms);
                out.push(alert.clone());
                self.resolved.insert(
                    labels,
                    Resolved {
                        alert,
                        last_sent_ms: now_ms,
                        until_ms: active_until,
                    },
                );
            }
        }
        // Earlier resolves: repeated at the resend ticks, forgotten when no longer needed.
        let resend_ms = self.resend_ms;
        self.resolved.retain(|labels, r| {
            if want.contains_key(labels) || now_ms >= r.until_ms {
                return false;
            }
            if now_ms - r.last_sent_ms >= resend_ms {
                r.last_sent_ms = now_ms;
                out.push(r.alert.clone());
            }
            true
        });
        // Firing: new, changed, or due for the resend.
        for (labels, annotations) in want {
            match self.firing.get_mut(&labels) {
                Some(f) => {
                    let changed = f.alert.annotations.get("summary") != annotations.get("summary");
                    f.alert.annotations = annotations;
                    if changed || now_ms - f.last_sent_ms >= self.resend_ms {
                        f.alert.ends_at_ms = active_until;
                        f.last_sent_ms = now_ms;
                        out.push(f.alert.clone());
                    }
                }
                None => {
                    let alert = Alert {
                        labels: labels.clone(),
                        annotations,
                        starts_at_ms: now_ms,
                        ends_at_ms: active_until,
                    };
                    out.push(alert.clone());
                    self.firing.insert(
                        labels,
                        Firing {
                            alert,
                            last_sent_ms: now_ms,
                        },
                    );
                }
            }
        }
        out
    }

    /// The alerts firing now.
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.firing.values().map(|f| &f.alert)
    }

    /// The alerts `state` and `signals` call for: labels → annotations.
    fn wanted(
        &self,
        cluster: &str,
        node: &str,
        state: HealthState,
        signals: &[Signal],
    ) -> BTreeMap<Labels, BTreeMap<String, String>> {
        let labels = |name: &str, severity: &str, extra: (&str, &str)| {
            let mut l = self.labels.clone();
            for (k, v) in [
                ("alertname", name),
                ("cluster", cluster),
                ("node", node),
                ("severity", severity),
                extra,
            ] {
                l.insert(k.to_string(), v.to_string());
            }
            l
        };
        let annotations = |summary: String, description: String| {
            BTreeMap::from([
                ("summary".to_string(), summary),
                ("description".to_string(), description),
            ])
        };
        let mut out = BTreeMap::new();
        let region = match state {
            HealthState::Healthy => None,
            HealthState::Degraded => Some((REGION_DEGRADED, "warning")),
            HealthState::Failed => Some((REGION_FAILED, "critical")),
        };
        if let Some((name, severity)) = region {
            let bad: Vec<String> = signals
                .iter()
                .filter(|s| s.status != SignalStatus::Ok)
                .map(|s| format!("{} {}: {}", s.name, status_word(s.status), s.detail))
                .collect();
            let what = if state == HealthState::Failed {
                "failed: its agent gives up the endpoints it serves"
            } else {
                "degraded: alerting only, endpoints stay"
            };
            out.insert(
                labels(name, severity, ("state", state.as_str())),
                annotations(
                    format!("pgmesh region {node} of cluster {cluster} is {what}"),
                    if bad.is_empty() {
                        "no signal is failing now".to_string()
                    } else {
                        bad.join("; ")
                    },
                ),
            );
        }
        for s in signals.iter().filter(|s| s.status != SignalStatus::Ok) {
            let severity = if s.status == SignalStatus::Fail {
                "warning"
            } else {
                "info"
            };
            out.insert(
                labels(SIGNAL_FAILING, severity, ("signal", s.name.as_str())),
                annotations(
                    format!(
                        "health signal {} of pgmesh region {node} ({cluster}) is {}",
                        s.name,
                        status_word(s.status)
                    ),
                    s.detail.clone(),
                ),
            );
        }
        out
    }
}

fn status_word(s: SignalStatus) -> &'static str {
    match s {
        SignalStatus::Ok => "ok",
        SignalStatus::Warn => "warning",
        SignalStatus::Fail => "failing",
    }
}

/// The last post to one Alertmanager, for `pgmesh status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AlertTarget {
    pub url: String,
    /// `None` before the first post.
    pub ok: Option<bool>,
    pub error: Option<String>,
    pub at_ms: Option<i64>,
    pub posts: u64,
    pub failures: u64,
}

/// What the alerter shows: firing alerts and each Alertmanager's last post.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AlertStatus {
    /// `alertname` (with `signal=NAME` for signal alerts) of each firing alert.
    pub firing: Vec<String>,
    pub targets: Vec<AlertTarget>,
}

#[derive(Clone)]
struct Observation {
    generation: u64,
    cluster: String,
    node: String,
    state: HealthState,
    signals: Vec<Signal>,
}

/// Posts the region's health alerts in the background. Dropping it stops the task.
pub struct Alerter {
    latest: watch::Sender<Option<Observation>>,
    generation: AtomicU64,
    handled: watch::Receiver<u64>,
    status: Arc<Mutex<AlertStatus>>,
    task: JoinHandle<()>,
}

impl Drop for Alerter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("status", &*lock(&self.status))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Alerter {
    /// Starts the posting task; call inside a Tokio runtime.
    #[must_use]
    pub fn spawn(cfg: AlertmanagerConfig) -> Alerter {
        static DESCRIBE: Once = Once::new();
        DESCRIBE.call_once(|| {
            metrics::describe_counter!(
                ALERTMANAGER_POSTS,
                "Posts of health alerts to an Alertmanager, by outcome (ok, error)"
            );
        });
        let (latest, rx) = watch::channel(None);
        let (handled_tx, handled) = watch::channel(0);
        let status = Arc::new(Mutex::new(AlertStatus {
            firing: Vec::new(),
            targets: cfg
                .urls
                .iter()
                .map(|u| AlertTarget {
                    url: u.clone(),
                    ..AlertTarget::default()
                })
                .collect(),
        }));
        let task = tokio::spawn(run(cfg, rx, handled_tx, status.clone()));
        Alerter {
            latest,
            generation: AtomicU64::new(0),
            handled,
            status,
            task,
        }
    }

    /// The region's health after a probe; returns at once (the latest health wins when
    /// posts are slower than probes).
    pub fn update(&self, cluster: &str, node: &str, state: HealthState, signals: &[Signal]) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.latest.send_replace(Some(Observation {
            generation,
            cluster: cluster.to_string(),
            node: node.to_string(),
            state,
            signals: signals.to_vec(),
        }));
    }

    /// Waits until the latest update was handled (its posts done or failed); `false` when
    /// `timeout` passed first.
    #[must_use]
    pub async fn settle(&self, timeout: Duration) -> bool {
        let want = self.generation.load(Ordering::Relaxed);
        let mut rx = self.handled.clone();
        tokio::time::timeout(timeout, rx.wait_for(|h| *h >= want))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Firing alerts and the last post to each Alertmanager.
    #[must_use]
    pub fn status(&self) -> AlertStatus {
        lock(&self.status).clone()
    }
}

async fn run(
    cfg: AlertmanagerConfig,
    mut latest: watch::Receiver<Option<Observation>>,
    handled: watch::Sender<u64>,
    status: Arc<Mutex<AlertStatus>>,
) {
    let client = reqwest::Client::new();
    let mut book = AlertBook::new(cfg.labels.clone(), cfg.resend);
    // Resends are due per alert; ticking at half the interval keeps them at most 1.5
    // intervals apart when no update comes (an agent whose probe loop is stuck).
    let mut tick = tokio::time::interval((cfg.resend / 2).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let Some(obs) = latest.borrow_and_update().clone() else {
            continue;
        };
        let alerts = book.observe(&obs.cluster, &obs.node, obs.state, &obs.signals, now_ms());
        lock(&status).firing = book
            .firing()
            .map(|a| match a.labels.get("signal") {
                Some(s) => format!("{} signal={s}", a.name()),
                None => a.name().to_string(),
            })
            .collect();
        if !alerts.is_empty() {
            post_all(&client, &cfg, &alerts, &status).await;
        }
        handled.send_replace(obs.generation);
    }
}

/// Posts `alerts` to every Alertmanager at once and records each outcome.
async fn post_all(
    client: &reqwest::Client,
    cfg: &AlertmanagerConfig,
    alerts: &[Alert],
    status: &Mutex<AlertStatus>,
) {
    let body = serde_json::to_vec(alerts).unwrap_or_default();
    let posts = cfg
        .urls
        .iter()
        .map(|url| post(client, url, &body, cfg.timeout));
    let results = futures_util::future::join_all(posts).await;
    let now = now_ms();
    let resolves = alerts.iter().filter(|a| a.resolves(now)).count();
    let mut st = lock(status);
    for (url, result) in cfg.urls.iter().zip(results) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(ALERTMANAGER_POSTS, "outcome" => outcome).increment(1);
        match &result {
            Ok(()) => tracing::debug!(url, alerts = alerts.len(), resolves, "alerts posted"),
            Err(e) => {
                tracing::warn!(url, alerts = alerts.len(), resolves, error = %e, "cannot post alerts to Alertmanager; they go again at the next resend")
            }
        }
        if let Some(t) = st.targets.iter_mut().find(|t| &t.url == url) {
            t.posts += 1;
            t.at_ms = Some(now);
            t.ok = Some(result.is_ok());
            if let Err(e) = result {
                t.failures += 1;
                t.error = Some(e);
            } else {
                t.error = None;
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("POST {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text: String = resp
        .text()
        .await
        .unwrap_or_default()
        .trim()
        .chars()
        .take(BODY_CHARS)
        .collect();
    Err(format!("POST {url}: HTTP {status}: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESEND: Duration = Duration::from_secs(30);
    const T0: i64 = 1_764_000_000_000;

    fn book() -> AlertBook {
        AlertBook::new(BTreeMap::from([("env".into(), "prod".into())]), RESEND)
    }

    fn sig(name: &str, status: SignalStatus) -> Signal {
        Signal::new(name, 1.0, status, format!("{name} detail"))
    }

    /// `(alertname[:signal], resolves)` of a post, sorted.
    fn summary(alerts: &[Alert], now: i64) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = alerts
            .iter()
            .map(|a| {
                let name = match a.labels.get("signal") {
                    Some(s) => format!("{}:{s}", a.name()),
                    None => a.name().to_string(),
                };
                (name, a.resolves(now))
            })
            .collect();
        v.sort();
        v
    }

    fn s(name: &str, resolves: bool) -> (String, bool) {
        (name.to_string(), resolves)
    }

    #[test]
    fn healthy_degraded_failed_healthy() {
        use HealthState::*;
        let mut b = book();
        assert!(b
            .observe("c", "a", Healthy, &[sig("etcd", SignalStatus::Ok)], T0)
            .is_empty());

        let t1 = T0 + 1000;
        let slot_fail = [sig("slot", SignalStatus::Fail)];
        let post = b.observe("c", "a", Degraded, &slot_fail, t1);
        assert_eq!(
            summary(&post, t1),
            vec![
                s("PgmeshRegionDegraded", false),
                s("PgmeshSignalFailing:slot", false)
            ]
        );
        let region = &post[0];
        assert_eq!(region.labels["cluster"], "c");
        assert_eq!(region.labels["node"], "a");
        assert_eq!(region.labels["severity"], "warning");
        assert_eq!(region.labels["state"], "degraded");
        assert_eq!(region.labels["env"], "prod");
        assert_eq!(region.starts_at_ms, t1);
        assert_eq!(region.ends_at_ms, t1 + 4 * 30_000);
        assert!(region.annotations["description"].contains("slot failing"));
        // Same health a second later: nothing to post.
        assert!(b
            .observe("c", "a", Degraded, &slot_fail, t1 + 1000)
            .is_empty());

        let t2 = t1 + 2000;
        let pg_fail = [
            sig("postgres", SignalStatus::Fail),
            sig("slot", SignalStatus::Fail),
        ];
        let post = b.observe("c", "a", Failed, &pg_fail, t2);
        assert_eq!(
            summary(&post, t2),
            vec![
                s("PgmeshRegionDegraded", true),
                s("PgmeshRegionFailed", false),
                s("PgmeshSignalFailing:postgres", false),
            ]
        );
        let failed = post.iter().find(|a| a.name() == REGION_FAILED).unwrap();
        assert_eq!(failed.labels["severity"], "critical");
        let resolved = post.iter().find(|a| a.name() == REGION_DEGRADED).unwrap();
        assert_eq!((resolved.starts_at_ms, resolved.ends_at_ms), (t1, t2));

        let t3 = t2 + 1000;
        let post = b.observe("c", "a", Healthy, &[sig("postgres", SignalStatus::Ok)], t3);
        assert_eq!(
            summary(&post, t3),
            vec![
                s("PgmeshRegionFailed", true),
                s("PgmeshSignalFailing:postgres", true),
                s("PgmeshSignalFailing:slot", true),
            ]
        );
        assert_eq!(b.firing().count(), 0);
        assert!(b.observe("c", "a", Healthy, &[], t3 + 1000).is_empty());
    }

    #[test]
    fn firing_alerts_are_resent_every_interval_and_resolves_until_they_cannot_matter() {
        use HealthState::*;
        let mut b = book();
        let warn = [sig("sidecar", SignalStatus::Warn)];
        assert_eq!(b.observe("c", "a", Degraded, &warn, T0).len(), 2);
        assert!(b.observe("c", "a", Degraded, &warn, T0 + 29_999).is_empty());
        let post = b.observe("c", "a", Degraded, &warn, T0 + 30_000);
        assert_eq!(post.len(), 2, "resend after 30 s");
        assert!(post.iter().all(|a| a.starts_at_ms == T0));
        assert!(post.iter().all(|a| a.ends_at_ms == T0 + 30_000 + 120_000));
        let info = post.iter().find(|a| a.name() == SIGNAL_FAILING).unwrap();
        assert_eq!(info.labels["severity"], "info");
        assert!(b.observe("c", "a", Degraded, &warn, T0 + 45_000).is_empty());

        let cleared = T0 + 50_000;
        assert_eq!(b.observe("c", "a", Healthy, &[], cleared).len(), 2);
        // The same resolve (same endsAt) at each resend while a missed one could matter.
        let mut repeats = Vec::new();
        for t in (cleared + 1000..cleared + 200_000).step_by(1000) {
            for a in b.observe("c", "a", Healthy, &[], t) {
                assert_eq!(a.ends_at_ms, cleared);
                repeats.push(t);
            }
        }
        let per_resend: Vec<i64> = repeats.iter().step_by(2).copied().collect();
        assert_eq!(
            per_resend,
            vec![cleared + 30_000, cleared + 60_000, cleared + 90_000]
        );
    }

    #[test]
    fn a_flapping_signal_fires_and_resolves_once_per_flap() {
        use HealthState::*;
        let mut b = book();
        let mut fired = 0;
        let mut resolved = 0;
        for i in 0..10 {
            let now = T0 + i * 1000;
            let status = if i % 2 == 0 {
                SignalStatus::Fail
            } else {
                SignalStatus::Ok
            };
            let post = b.observe("c", "a", Healthy, &[sig("promql", status)], now);
            assert_eq!(post.len(), 1, "flap {i}: {post:?}");
            if post[0].resolves(now) {
                resolved += 1;
                assert_eq!(post[0].starts_at_ms, now - 1000);
            } else {
                fired += 1;
                assert_eq!(post[0].starts_at_ms, now, "a new firing starts anew");
            }
        }
        assert_eq!((fired, resolved), (5, 5));
    }

    #[test]
    fn wire_format_is_alertmanagers() {
        let mut b = book();
        let post = b.observe(
            "c",
            "a",
            HealthState::Failed,
            &[sig("postgres", SignalStatus::Fail)],
            T0,
        );
        let v = serde_json::to_value(&post).unwrap();
        assert_eq!(v[0]["startsAt"], "2025-11-24T16:00:00.000000Z");
        assert_eq!(v[0]["endsAt"], "2025-11-24T16:02:00.000000Z");
        assert_eq!(v[0]["labels"]["alertname"], REGION_FAILED);
        assert!(v[0]["annotations"]["summary"].is_string());
    }
}
