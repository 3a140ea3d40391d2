//! Hooks: a command or an HTTP webhook per control-plane event, so users can call what
//! pgmesh does not speak itself (cloud DNS APIs such as Route 53 or Cloud DNS, cloud load
//! balancers, chat).
//!
//! The agent calls [`Hooks::send`] right after it fenced or took an endpoint, so sending
//! never waits: each hook has a bounded queue ([`QUEUE_CAPACITY`], the oldest payload goes
//! when it is full) and one task that delivers in order, with a timeout per attempt and
//! retries with backoff. Delivery is at least once: a webhook that timed out after it
//! acted gets the payload again, so receivers should treat `(node, at_ms, event, endpoint)`
//! as the identity of a payload.
//!
//! - **command**: argv (no shell), the JSON payload on stdin, the main fields in `PGMESH_*`
//!   environment variables; success is exit 0 within the timeout. A command still running
//!   at the timeout is killed with its whole process group (a `sh -c` script's children
//!   too).
//! - **webhook**: `POST` of the JSON payload; 2xx is success, 429, 5xx and connection
//!   errors are retried, any other status means the receiver rejected the payload and is
//!   not retried.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::control::event::{Event, EventKind, Rpo};
use crate::control::health::HealthState;
use crate::control::keys::now_ms;

/// Per hook and `outcome` (ok, failed, rejected, dropped): payloads handled.
pub const HOOK_DELIVERIES: &str = "pgmesh_hook_deliveries_total";
/// Payloads a hook holds before the oldest is dropped (a receiver down for long must not
/// make the agent grow).
pub const QUEUE_CAPACITY: usize = 256;
/// Wait before the first retry; doubles per retry up to [`BACKOFF_CAP`].
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Lines of a failed command's stderr kept for the report, and characters per line.
const STDERR_LINES: usize = 10;
const LINE_CHARS: usize = 300;
/// Characters of a webhook's answer quoted in an error.
const BODY_CHARS: usize = 300;

/// One hook as configured (`[[traffic.hook]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct HookConfig {
    pub name: String,
    /// The events it gets; `None`: all.
    pub events: Option<Vec<HookEvent>>,
    pub action: HookAction,
    /// Per attempt (default 5 s).
    pub timeout: Duration,
    /// Attempts after the first (default 2, so up to 3 attempts).
    pub retries: u32,
}

/// What a hook does with a payload.
#[derive(Clone, Debug, PartialEq)]
pub enum HookAction {
    /// A program and its arguments, run without a shell.
    Command(Vec<String>),
    /// An HTTP(S) URL to POST to, with extra headers (e.g. `Authorization`).
    Webhook {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

/// What a hook is told about; the names are the config's (`events = ["owner_changed"]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HookEvent {
    /// An endpoint moved: acquired, failover, released, switchover, forced failover.
    OwnerChanged,
    Fenced,
    Unfenced,
    /// The region became degraded or failed.
    Degraded,
    /// The region is healthy again.
    Recovered,
    SwitchoverAborted,
    LeaseLost,
}

impl HookEvent {
    pub const ALL: [HookEvent; 7] = [
        HookEvent::OwnerChanged,
        HookEvent::Fenced,
        HookEvent::Unfenced,
        HookEvent::Degraded,
        HookEvent::Recovered,
        HookEvent::SwitchoverAborted,
        HookEvent::LeaseLost,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::OwnerChanged => "owner_changed",
            HookEvent::Fenced => "fenced",
            HookEvent::Unfenced => "unfenced",
            HookEvent::Degraded => "degraded",
            HookEvent::Recovered => "recovered",
            HookEvent::SwitchoverAborted => "switchover_aborted",
            HookEvent::LeaseLost => "lease_lost",
        }
    }
}

impl fmt::Display for HookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name in `events = [...]` that is no [`HookEvent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hook event {0:?}; use owner_changed, fenced, unfenced, degraded, recovered, switchover_aborted or lease_lost")]
pub struct UnknownHookEvent(pub String);

impl FromStr for HookEvent {
    type Err = UnknownHookEvent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HookEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownHookEvent(s.to_string()))
    }
}

/// The JSON a hook gets (stdin of a command, body of a webhook). Unknown values are
/// `null`, never missing, so scripts can read every key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookPayload {
    pub cluster: String,
    pub event: HookEvent,
    /// The control plane's event kind (`failover`, `switchover`, `health_changed`, ...).
    pub kind: String,
    /// The agent that reports it.
    pub node: String,
    pub endpoint: Option<String>,
    /// For `owner_changed`: who served the endpoint before (`null` when nobody did) and
    /// who serves it now (`null` when released). For `switchover_aborted`: the planned
    /// move that did not happen (the endpoint stays where it was).
    pub old_owner: Option<String>,
    pub new_owner: Option<String>,
    pub epoch: Option<i64>,
    pub reason: String,
    /// For `degraded` and `recovered`: the region's state before and now.
    pub previous_health: Option<HealthState>,
    pub health: Option<HealthState>,
    /// For a failover: what the new owner may not have of the old owner's writes.
    pub rpo: Option<Rpo>,
    /// RFC 3339, UTC.
    pub at: String,
    pub at_ms: i64,
}

impl HookPayload {
    /// The payload of a control-plane event, `None` for events no hook is told about
    /// (`maintenance`: it records a request such as an automatic failback; the fence or
    /// the move it leads to comes as its own event).
    ///
    /// `health_changed` is read from the agent's reason, `"<from> -> <to> (score ...)"`;
    /// [`HookPayload::health`] builds the same payload from the states themselves.
    #[must_use]
    pub fn from_event(cluster: &str, e: &Event) -> Option<HookPayload> {
        let event = match e.kind {
            EventKind::Acquired
            | EventKind::Failover
            | EventKind::Released
            | EventKind::Switchover
            | EventKind::ForcedFailover => HookEvent::OwnerChanged,
            EventKind::Fenced => HookEvent::Fenced,
            EventKind::Unfenced => HookEvent::Unfenced,
            EventKind::SwitchoverAborted => HookEvent::SwitchoverAborted,
            EventKind::LeaseLost => HookEvent::LeaseLost,
            EventKind::HealthChanged => {
                let (from, to) = parse_health_reason(&e.reason)?;
                return HookPayload::health(cluster, &e.node, from, to, &e.reason, e.at_ms);
            }
            _ => return None,
        };
        let (old_owner, new_owner) = match e.kind {
            // The releasing region owned it; nobody does now.
            EventKind::Released => (e.from.clone().or_else(|| Some(e.node.clone())), None),
            EventKind::Acquired | EventKind::Failover | EventKind::ForcedFailover => (
                e.from.clone(),
                e.to.clone().or_else(|| Some(e.node.clone())),
            ),
            _ => (e.from.clone(), e.to.clone()),
        };
        Some(HookPayload {
            cluster: cluster.to_string(),
            event,
            kind: e.kind.as_str().to_string(),
            node: e.node.clone(),
            endpoint: e.endpoint.clone(),
            old_owner,
            new_owner,
            epoch: e.epoch,
            reason: e.reason.clone(),
            previous_health: None,
            health: None,
            rpo: e.rpo.clone(),
            at: rfc3339_ms(e.at_ms),
            at_ms: e.at_ms,
        })
    }

    /// The payload of a change of the region's health: `degraded` when it became degraded
    /// or failed (also degraded → failed and back), `recovered` when it became healthy;
    /// `None` when nothing changed.
    #[must_use]
    pub fn health(
        cluster: &str,
        node: &str,
        from: HealthState,
        to: HealthState,
        reason: &str,
        at_ms: i64,
    ) -> Option<HookPayload> {
        if from == to {
            return None;
        }
        let event = match to {
            HealthState::Healthy => HookEvent::Recovered,
            HealthState::Degraded | HealthState::Failed => HookEvent::Degraded,
        };
        Some(HookPayload {
            cluster: cluster.to_string(),
            event,
            kind: EventKind::HealthChanged.as_str().to_string(),
            node: node.to_string(),
            endpoint: None,
            old_owner: None,
            new_owner: None,
            epoch: None,
            reason: reason.to_string(),
            previous_health: Some(from),
            health: Some(to),
            rpo: None,
            at: rfc3339_ms(at_ms),
            at_ms,
        })
    }

    /// The environment of a command hook; unknown values are empty strings.
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        vec![
            ("PGMESH_EVENT", self.event.as_str().to_string()),
            ("PGMESH_KIND", self.kind.clone()),
            ("PGMESH_CLUSTER", self.cluster.clone()),
            ("PGMESH_NODE", self.node.clone()),
            ("PGMESH_ENDPOINT", opt(&self.endpoint)),
            ("PGMESH_OLD_OWNER", opt(&self.old_owner)),
            ("PGMESH_NEW_OWNER", opt(&self.new_owner)),
            (
                "PGMESH_EPOCH",
                self.epoch.map(|e| e.to_string()).unwrap_or_default(),
            ),
            ("PGMESH_REASON", self.reason.clone()),
        ]
    }
}

/// `(from, to)` of the agent's health reason `"healthy -> degraded (score 0.83); ..."`.
fn parse_health_reason(reason: &str) -> Option<(HealthState, HealthState)> {
    let (from, rest) = reason.split_once(" -> ")?;
    let to = rest.split_whitespace().next()?;
    Some((HealthState::parse(from.trim())?, HealthState::parse(to)?))
}

/// Unix milliseconds as RFC 3339 UTC.
pub(crate) fn rfc3339_ms(unix_ms: i64) -> String {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    crate::pgtime::rfc3339(
        unix_ms
            .saturating_mul(1000)
            .saturating_sub(PG_EPOCH_UNIX_MICROS),
    )
}

/// How one payload ended at one hook, for logs and `pgmesh status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookOutcome {
    /// The hook's name.
    pub name: String,
    pub event: HookEvent,
    pub endpoint: Option<String>,
    pub ok: bool,
    pub attempts: u32,
    /// The last attempt's error (with a command's last stderr lines).
    pub error: Option<String>,
    /// When the delivery ended.
    pub at_ms: i64,
    pub took_ms: u64,
}

/// One hook's state for `pgmesh status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookStatus {
    pub name: String,
    /// Payloads waiting, the one being delivered included.
    pub queued: usize,
    /// Payloads dropped because the queue was full.
    pub dropped: u64,
    pub last: Option<HookOutcome>,
}

/// Why one attempt failed; the kind decides whether to try again.
#[derive(Debug)]
enum Failure {
    /// Worth another attempt (timeout, connection error, 5xx/429, non-zero exit).
    Transient(String),
    /// Another attempt would fail the same way (4xx, no such program).
    Rejected(String),
}

/// The hooks of one agent: [`Hooks::send`] queues, one task per hook delivers. Cloning
/// shares the hooks; the tasks stop when the last clone is dropped (a delivery under way
/// is abandoned, a command it ran killed).
#[derive(Clone)]
pub struct Hooks {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: String,
    slots: Vec<Arc<Slot>>,
    tasks: Vec<JoinHandle<()>>,
    idle: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Slot {
    config: HookConfig,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Notified whenever a hook's queue runs empty ([`Hooks::drain`]).
    idle: Arc<Notify>,
    last: Mutex<Option<HookOutcome>>,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<HookPayload>,
    busy: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("cluster", &self.inner.cluster)
            .field(
                "hooks",
                &self
                    .inner
                    .slots
                    .iter()
                    .map(|s| s.config.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Hooks {
    /// Starts one delivery task per hook; call inside a Tokio runtime.
    #[must_use]
    pub fn spawn(cluster: &str, hooks: Vec<HookConfig>) -> Hooks {
        static DESCRIBE: Once = Once::new();
        DESCRIBE.call_once(|| {
            metrics::describe_counter!(
                HOOK_DELIVERIES,
                "Payloads handled per hook, by outcome (ok, failed, rejected, dropped)"
            );
        });
        let idle = Arc::new(Notify::new());
        let client = reqwest::Client::new();
        let mut slots = Vec::with_capacity(hooks.len());
        let mut tasks = Vec::with_capacity(hooks.len());
        for config in hooks {
            let slot = Arc::new(Slot {
                config,
                queue: Mutex::new(Queue::default()),
                wake: Notify::new(),
                idle: idle.clone(),
                last: Mutex::new(None),
                dropped: AtomicU64::new(0),
            });
            tasks.push(tokio::spawn(run(slot.clone(), client.clone())));
            slots.push(slot);
        }
        Hooks {
            inner: Arc::new(Inner {
                cluster: cluster.to_string(),
                slots,
                tasks,
                idle,
            }),
        }
    }

    /// Queues `payload` for every hook that wants its event and returns at once; when a
    /// hook's queue is full its oldest payload is dropped (logged and counted).
    pub fn send(&self, payload: HookPayload) {
        for slot in &self.inner.slots {
            if slot
                .config
                .events
                .as_ref()
                .is_some_and(|e| !e.contains(&payload.event))
            {
                continue;
            }
            let dropped = {
                let mut q = lock(&slot.queue);
                q.items.push_back(payload.clone());
                if q.items.len() > QUEUE_CAPACITY {
                    q.items.pop_front()
                } else {
                    None
                }
            };
            if let Some(old) = dropped {
                slot.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(HOOK_DELIVERIES, "hook" => slot.config.name.clone(), "outcome" => "dropped")
                    .increment(1);
                tracing::warn!(
                    hook = %slot.config.name,
                    event = old.event.as_str(),
                    endpoint = old.endpoint.as_deref().unwrap_or(""),
                    at_ms = old.at_ms,
                    "hook queue full ({QUEUE_CAPACITY}): dropped its oldest payload; the hook is too slow or down"
                );
            }
            slot.wake.notify_one();
        }
    }

    /// [`Hooks::send`] of a control-plane event (see [`HookPayload::from_event`]).
    pub fn send_event(&self, event: &Event) {
        if let Some(p) = HookPayload::from_event(&self.inner.cluster, event) {
            self.send(p);
        }
    }

    /// Waits until every queued payload was delivered or given up; `false` when
    /// `timeout` passed first (for shutdown and tests).
    #[must_use]
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.slots.iter().all(|s| {
                let q = lock(&s.queue);
                q.items.is_empty() && !q.busy
            }) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// The last outcome of every hook that delivered (or gave up on) something.
    #[must_use]
    pub fn last_outcomes(&self) -> Vec<HookOutcome> {
        self.inner
            .slots
            .iter()
            .filter_map(|s| lock(&s.last).clone())
            .collect()
    }

    /// Every hook's queue, drops and last outcome, in config order.
    #[must_use]
    pub fn status(&self) -> Vec<HookStatus> {
        self.inner
            .slots
            .iter()
            .map(|s| {
                let q = lock(&s.queue);
                HookStatus {
                    name: s.config.name.clone(),
                    queued: q.items.len() + usize::from(q.busy),
                    dropped: s.dropped.load(Ordering::Relaxed),
                    last: lock(&s.last).clone(),
                }
            })
            .collect()
    }
}

/// One hook's delivery loop: in order, one payload at a time.
async fn run(slot: Arc<Slot>, client: reqwest::Client) {
    loop {
        let next = {
            let mut q = lock(&slot.queue);
            let next = q.items.pop_front();
            q.busy = next.is_some();
            next
        };
        let Some(payload) = next else {
            slot.idle.notify_waiters();
            slot.wake.notified().await;
            continue;
        };
        let outcome = deliver(&slot.config, &client, &payload).await;
        *lock(&slot.last) = Some(outcome);
    }
}

/// All attempts of one payload; logs and counts the outcome.
async fn deliver(cfg: &HookConfig, client: &reqwest::Client, p: &HookPayload) -> HookOutcome {
    let started = Instant::now();
    let json = serde_json::to_vec(p).unwrap_or_default();
    let max_attempts = cfg.retries.saturating_add(1);
    let mut backoff = BACKOFF_FIRST;
    let mut attempts = 0;
    let result = loop {
        attempts += 1;
        let failure = match attempt(cfg, client, p, &json).await {
            Ok(()) => break Ok(()),
            Err(f) => f,
        };
        match failure {
            Failure::Rejected(e) => break Err(("rejected", e)),
            Failure::Transient(e) if attempts >= max_attempts => break Err(("failed", e)),
            Failure::Transient(e) => {
                tracing::debug!(hook = %cfg.name, event = p.event.as_str(), attempt = attempts, error = %e, "hook attempt failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
        }
    };
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let endpoint = p.endpoint.as_deref().unwrap_or("");
    let (outcome, error) = match result {
        Ok(()) => {
            tracing::info!(hook = %cfg.name, event = p.event.as_str(), endpoint, attempts, took_ms, "hook delivered");
            ("ok", None)
        }
        Err((outcome, e)) => {
            tracing::warn!(hook = %cfg.name, event = p.event.as_str(), endpoint, attempts, took_ms, error = %e, "hook {outcome}");
            (outcome, Some(e))
        }
    };
    metrics::counter!(HOOK_DELIVERIES, "hook" => cfg.name.clone(), "outcome" => outcome)
        .increment(1);
    HookOutcome {
        name: cfg.name.clone(),
        event: p.event,
        endpoint: p.endpoint.clone(),
        ok: error.is_none(),
        attempts,
        error,
        at_ms: now_ms(),
        took_ms,
    }
}

async fn attempt(
    cfg: &HookConfig,
    client: &reqwest::Client,
    p: &HookPayload,
    json: &[u8],
) -> Result<(), Failure> {
    match &cfg.action {
        HookAction::Command(argv) => run_command(argv, p, json, cfg.timeout).await,
        HookAction::Webhook { url, headers } => post(client, url, headers, json, cfg.timeout).await,
    }
}

/// Runs `argv` in its own process group with `json` on stdin; kills the group at the
/// timeout.
async fn run_command(
    argv: &[String],
    p: &HookPayload,
    json: &[u8],
    timeout: Duration,
) -> Result<(), Failure> {
    let Some(program) = argv.first() else {
        return Err(Failure::Rejected(
            "empty command; give the program and its arguments".into(),
        ));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .envs(p.env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        // Its own group: at the timeout the whole group is killed, so a script's children
        // do not outlive it, and a Ctrl-C to the agent does not reach it.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let why = format!("cannot run {program}: {e}");
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                Failure::Rejected(format!("{why}; check the hook's command path"))
            }
            _ => Failure::Transient(why),
        }
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let json = json.to_vec();
        // Its own task: a program that does not read stdin must not hold up the wait.
        tokio::spawn(async move {
            let _ = stdin.write_all(&json).await;
        });
    }
    let stderr = Arc::new(Mutex::new(VecDeque::new()));
    let reader = child.stderr.take().map(|s| {
        let lines = stderr.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(s);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf).await, Ok(n) if n > 0) {
                let line: String = String::from_utf8_lossy(&buf)
                    .trim_end()
                    .chars()
                    .take(LINE_CHARS)
                    .collect();
                buf.clear();
                let mut l = lock(&lines);
                l.push_back(line);
                if l.len() > STDERR_LINES {
                    l.pop_front();
                }
            }
        })
    });
    let pid = child.id();
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let timed_out = waited.is_err();
    if timed_out {
        if let Some(pid) = pid {
            kill_group(pid).await;
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // The pipe ends when the last process holding it does; a child left in the
    // background by a script that exited may hold it: read what came, then stop.
    if let Some(mut r) = reader {
        if tokio::time::timeout(Duration::from_millis(200), &mut r)
            .await
            .is_err()
        {
            r.abort();
        }
    }
    let tail = {
        let l = lock(&stderr);
        if l.is_empty() {
            String::new()
        } else {
            format!(
                "; stderr: {}",
                l.iter().cloned().collect::<Vec<_>>().join(" | ")
            )
        }
    };
    match waited {
        Err(_) => Err(Failure::Transient(format!(
            "{program} still ran after the {timeout:?} timeout: killed it (process group {}){tail}",
            pid.map_or_else(|| "?".to_string(), |p| p.to_string())
        ))),
        Ok(Err(e)) => Err(Failure::Transient(format!("waiting for {program}: {e}"))),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(Failure::Transient(format!("{program} {status}{tail}"))),
    }
}

/// SIGKILL to process group `pgid` through `kill(1)` (the crate has no unsafe code for
/// `libc::kill`).
async fn kill_group(pgid: u32) {
    let out = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            tracing::debug!(pgid, stderr = %String::from_utf8_lossy(&o.stderr).trim(), "kill of a hook's process group failed")
        }
        Err(e) => {
            tracing::warn!(pgid, error = %e, "cannot run kill(1) for a hook's process group; its children may live on")
        }
    }
}

/// One POST of the payload.
async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    json: &[u8],
    timeout: Duration,
) -> Result<(), Failure> {
    let mut req = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json.to_vec());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::Transient(format!("POST {url}: {}", error_chain(&e))))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body: String = resp
        .text()
        .await
        .unwrap_or_default()
        .trim()
        .chars()
        .take(BODY_CHARS)
        .collect();
    let answer = format!("POST {url}: HTTP {status}: {body:?}");
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Err(Failure::Transient(answer))
    } else {
        Err(Failure::Rejected(format!(
            "{answer}; the receiver rejected the payload, so it is not retried: fix the receiver or the hook's url and headers"
        )))
    }
}

/// An error with its causes (reqwest's own text hides whether it was a refused
/// connection, a timeout or TLS).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            at_ms: 1_764_000_000_123,
            node: "b".into(),
            seq: 7,
            kind,
            endpoint: Some("app-eu".into()),
            from: None,
            to: None,
            epoch: Some(4),
            reason: "why".into(),
            rpo: None,
        }
    }

    #[test]
    fn owner_changes_map_to_owner_changed_with_old_and_new_owner() {
        use EventKind::*;
        let mut failover = event(Failover);
        failover.from = Some("a".into());
        failover.to = Some("b".into());
        failover.rpo = Some(Rpo {
            applied_lsn: Some("0/10".into()),
            last_written_lsn: Some("0/20".into()),
            last_written_at_ms: Some(1),
            bytes: Some(16),
        });
        let p = HookPayload::from_event("c1", &failover).unwrap();
        assert_eq!(p.event, HookEvent::OwnerChanged);
        assert_eq!(p.kind, "failover");
        assert_eq!(
            (p.old_owner.as_deref(), p.new_owner.as_deref()),
            (Some("a"), Some("b"))
        );
        assert_eq!(p.rpo.as_ref().and_then(|r| r.bytes), Some(16));
        assert_eq!(p.at, "2025-11-24T16:00:00.123000Z");

        let cases: &[(EventKind, Option<&str>, Option<&str>)] = &[
            (Acquired, None, Some("b")),
            (ForcedFailover, None, Some("b")),
            (Released, Some("b"), None),
        ];
        for (kind, old, new) in cases {
            let p = HookPayload::from_event("c1", &event(*kind)).unwrap();
            assert_eq!(p.event, HookEvent::OwnerChanged, "{kind:?}");
            assert_eq!(p.old_owner.as_deref(), *old, "{kind:?}");
            assert_eq!(p.new_owner.as_deref(), *new, "{kind:?}");
            assert_eq!(p.epoch, Some(4));
        }
        let mut sw = event(Switchover);
        sw.from = Some("b".into());
        sw.to = Some("a".into());
        let p = HookPayload::from_event("c1", &sw).unwrap();
        assert_eq!(
            (p.event, p.kind.as_str()),
            (HookEvent::OwnerChanged, "switchover")
        );
        assert_eq!(p.new_owner.as_deref(), Some("a"));
    }

    #[test]
    fn other_kinds_map_one_to_one_and_maintenance_to_nothing() {
        use EventKind::*;
        for (kind, want) in [
            (Fenced, Some(HookEvent::Fenced)),
            (Unfenced, Some(HookEvent::Unfenced)),
            (SwitchoverAborted, Some(HookEvent::SwitchoverAborted)),
            (LeaseLost, Some(HookEvent::LeaseLost)),
            (Maintenance, None),
        ] {
            let got = HookPayload::from_event("c1", &event(kind)).map(|p| p.event);
            assert_eq!(got, want, "{kind:?}");
        }
    }

    #[test]
    fn health_changes_map_to_degraded_or_recovered() {
        use HealthState::*;
        let mut e = event(EventKind::HealthChanged);
        e.endpoint = None;
        for (reason, want) in [
            (
                "healthy -> degraded (score 0.83); slot: lagging",
                Some((HookEvent::Degraded, Healthy, Degraded)),
            ),
            (
                "degraded -> failed (score 0.20)",
                Some((HookEvent::Degraded, Degraded, Failed)),
            ),
            (
                "failed -> degraded (score 0.50)",
                Some((HookEvent::Degraded, Failed, Degraded)),
            ),
            (
                "failed -> healthy (score 1.00)",
                Some((HookEvent::Recovered, Failed, Healthy)),
            ),
            ("something else", None),
        ] {
            e.reason = reason.into();
            let got = HookPayload::from_event("c1", &e)
                .map(|p| (p.event, p.previous_health.unwrap(), p.health.unwrap()));
            assert_eq!(got, want, "{reason}");
        }
        assert!(HookPayload::health("c1", "a", Failed, Failed, "", 0).is_none());
        let p = HookPayload::health("c1", "a", Healthy, Failed, "pg down", 5).unwrap();
        assert_eq!(
            (p.event, p.kind.as_str()),
            (HookEvent::Degraded, "health_changed")
        );
    }

    #[test]
    fn event_names_round_trip_and_json_keeps_every_key() {
        for e in HookEvent::ALL {
            assert_eq!(e.as_str().parse::<HookEvent>(), Ok(e));
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
        assert!("owner-changed".parse::<HookEvent>().is_err());
        let p = HookPayload::from_event("c1", &event(EventKind::Fenced)).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        for key in [
            "cluster",
            "event",
            "kind",
            "node",
            "endpoint",
            "old_owner",
            "new_owner",
            "epoch",
            "reason",
            "rpo",
            "at",
            "at_ms",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["event"], "fenced");
        assert!(v["new_owner"].is_null());
        let env: BTreeMap<_, _> = p.env().into_iter().collect();
        assert_eq!(env["PGMESH_EPOCH"], "4");
        assert_eq!(env["PGMESH_NEW_OWNER"], "");
    }
}
