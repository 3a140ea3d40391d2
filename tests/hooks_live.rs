//! Hooks against real receivers: `sh` scripts as command hooks and an axum server as the
//! webhook receiver. Every test waits for the deliveries to end ([`Hooks::drain`]) and then
//! checks what the receiver got and what the hook reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use pgmesh::control::event::{Event, EventKind, Rpo};
use pgmesh::traffic::hook::{HookAction, HookConfig, HookEvent, HookOutcome, HookPayload, Hooks};

const CLUSTER: &str = "prod-eu";

fn failover() -> Event {
    Event {
        at_ms: 1_764_000_000_123,
        node: "b".into(),
        seq: 3,
        kind: EventKind::Failover,
        endpoint: Some("app-eu".into()),
        from: Some("a".into()),
        to: Some("b".into()),
        epoch: Some(9),
        reason: "region a failed: its primary is down".into(),
        rpo: Some(Rpo {
            applied_lsn: Some("0/3000060".into()),
            last_written_lsn: Some("0/3000100".into()),
            last_written_at_ms: Some(1_764_000_000_000),
            bytes: Some(160),
        }),
    }
}

fn payload(kind: EventKind) -> HookPayload {
    let mut e = failover();
    e.kind = kind;
    HookPayload::from_event(CLUSTER, &e).expect("a hook event")
}

fn hook(name: &str, action: HookAction) -> HookConfig {
    HookConfig {
        name: name.into(),
        events: None,
        action,
        timeout: Duration::from_secs(5),
        retries: 2,
    }
}

fn command(script: &str, dir: &Path) -> HookAction {
    HookAction::Command(vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "hook".into(),
        dir.display().to_string(),
    ])
}

fn webhook(addr: SocketAddr, path: &str) -> HookAction {
    HookAction::Webhook {
        url: format!("http://{addr}{path}"),
        headers: BTreeMap::new(),
    }
}

async fn drained(hooks: &Hooks) -> Vec<HookOutcome> {
    assert!(
        hooks.drain(Duration::from_secs(20)).await,
        "deliveries did not end within 20 s: {:?}",
        hooks.status()
    );
    hooks.last_outcomes()
}

/// What a webhook receiver got: the path, headers and the JSON body.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: HeaderMap,
    body: serde_json::Value,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Answers to give in turn; 200 once they are used up.
    answers: Arc<Mutex<Vec<StatusCode>>>,
    calls: Arc<AtomicUsize>,
}

impl Receiver {
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn receive(
    State(r): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    r.calls.fetch_add(1, Ordering::SeqCst);
    r.got.lock().unwrap().push(Got {
        path: uri.path().to_string(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    let mut answers = r.answers.lock().unwrap();
    if answers.is_empty() {
        StatusCode::OK
    } else {
        answers.remove(0)
    }
}

/// A receiver on 127.0.0.1 answering POST on any path.
async fn start_receiver(answers: Vec<StatusCode>) -> (SocketAddr, Receiver) {
    let r = Receiver {
        answers: Arc::new(Mutex::new(answers)),
        ..Receiver::default()
    };
    let app = Router::new()
        .route("/{*path}", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, r)
}

#[tokio::test]
async fn a_command_hook_gets_the_payload_on_stdin_and_the_fields_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"cat > "$1/payload.json" && env | grep '^PGMESH_' | sort > "$1/env.txt""#;
    let hooks = Hooks::spawn(CLUSTER, vec![hook("record", command(script, dir.path()))]);
    hooks.send(payload(EventKind::Failover));
    let out = drained(&hooks).await;
    assert_eq!(out.len(), 1);
    assert!(out[0].ok, "{out:?}");
    assert_eq!(
        (out[0].attempts, out[0].event),
        (1, HookEvent::OwnerChanged)
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("payload.json")).unwrap())
            .unwrap();
    assert_eq!(json["cluster"], CLUSTER);
    assert_eq!(json["event"], "owner_changed");
    assert_eq!(json["kind"], "failover");
    assert_eq!(json["node"], "b");
    assert_eq!(json["endpoint"], "app-eu");
    assert_eq!(json["old_owner"], "a");
    assert_eq!(json["new_owner"], "b");
    assert_eq!(json["epoch"], 9);
    assert_eq!(json["rpo"]["bytes"], 160);
    assert_eq!(json["at"], "2025-11-24T16:00:00.123000Z");
    assert_eq!(json["at_ms"], 1_764_000_000_123_i64);
    assert!(json["reason"].as_str().unwrap().contains("primary is down"));

    let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    for line in [
        "PGMESH_CLUSTER=prod-eu",
        "PGMESH_ENDPOINT=app-eu",
        "PGMESH_EPOCH=9",
        "PGMESH_EVENT=owner_changed",
        "PGMESH_KIND=failover",
        "PGMESH_NEW_OWNER=b",
        "PGMESH_NODE=b",
        "PGMESH_OLD_OWNER=a",
        "PGMESH_REASON=region a failed: its primary is down",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in:\n{env}");
    }
}

#[tokio::test]
async fn a_failing_command_is_retried_and_reports_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"echo attempt >> "$1/attempts"; echo "no credentials for route53" >&2; exit 3"#;
    let mut cfg = hook("route53", command(script, dir.path()));
    cfg.retries = 1;
    let hooks = Hooks::spawn(CLUSTER, vec![cfg]);
    hooks.send(payload(EventKind::Fenced));
    let out = drained(&hooks).await;
    assert!(!out[0].ok);
    assert_eq!(out[0].attempts, 2);
    let error = out[0].error.as_deref().unwrap();
    assert!(error.contains("exit status: 3"), "{error}");
    assert!(error.contains("no credentials for route53"), "{error}");
    let attempts = std::fs::read_to_string(dir.path().join("attempts")).unwrap();
    assert_eq!(attempts.lines().count(), 2);
}

#[tokio::test]
async fn a_webhook_gets_the_json_with_its_headers() {
    let (addr, rx) = start_receiver(vec![]).await;
    let action = HookAction::Webhook {
        url: format!("http://{addr}/dns/switch"),
        headers: BTreeMap::from([("Authorization".into(), "Bearer s3cret".into())]),
    };
    let hooks = Hooks::spawn(CLUSTER, vec![hook("lb", action)]);
    hooks.send(payload(EventKind::Switchover));
    let out = drained(&hooks).await;
    assert!(out[0].ok && out[0].attempts == 1, "{out:?}");
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/dns/switch");
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert_eq!(got[0].headers["authorization"], "Bearer s3cret");
    assert_eq!(got[0].body["event"], "owner_changed");
    assert_eq!(got[0].body["kind"], "switchover");
    assert_eq!(got[0].body["new_owner"], "b");
}

#[tokio::test]
async fn a_webhook_answering_500_twice_then_200_is_delivered_at_the_third_attempt() {
    let (addr, rx) = start_receiver(vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ])
    .await;
    let hooks = Hooks::spawn(CLUSTER, vec![hook("flaky", webhook(addr, "/hook"))]);
    let started = Instant::now();
    hooks.send(payload(EventKind::Failover));
    let out = drained(&hooks).await;
    assert!(out[0].ok, "{out:?}");
    assert_eq!(out[0].attempts, 3);
    assert_eq!(rx.calls.load(Ordering::SeqCst), 3);
    // Backoff 200 ms then 400 ms between the attempts.
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn a_webhook_answering_400_is_rejected_at_once() {
    let (addr, rx) = start_receiver(vec![StatusCode::BAD_REQUEST]).await;
    let hooks = Hooks::spawn(CLUSTER, vec![hook("strict", webhook(addr, "/hook"))]);
    hooks.send(payload(EventKind::Failover));
    let out = drained(&hooks).await;
    assert!(!out[0].ok);
    assert_eq!(out[0].attempts, 1);
    assert_eq!(rx.calls.load(Ordering::SeqCst), 1);
    let error = out[0].error.as_deref().unwrap();
    assert!(
        error.contains("400") && error.contains("rejected"),
        "{error}"
    );
}

#[tokio::test]
async fn a_hanging_command_is_killed_with_its_children_at_the_timeout_and_send_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    // The shell starts `sleep 60` in the background and waits for it: both must die.
    let script = r#"sleep 60 & echo $! > "$1/child.pid"; wait"#;
    let mut cfg = hook("stuck", command(script, dir.path()));
    cfg.timeout = Duration::from_millis(500);
    cfg.retries = 0;
    let hooks = Hooks::spawn(CLUSTER, vec![cfg]);
    let started = Instant::now();
    hooks.send(payload(EventKind::Fenced));
    let first_send = started.elapsed();

    // While the command hangs, sending more returns at once too.
    let pid_file = dir.path().join("child.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "the hook command never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    hooks.send(payload(EventKind::Unfenced));
    let second_send = t.elapsed();
    assert!(
        first_send < Duration::from_millis(5),
        "send took {first_send:?}"
    );
    assert!(
        second_send < Duration::from_millis(5),
        "send took {second_send:?}"
    );

    assert!(
        hooks.drain(Duration::from_secs(10)).await,
        "{:?}",
        hooks.status()
    );
    let out = hooks.last_outcomes();
    assert_eq!(out[0].event, HookEvent::Unfenced, "delivered in order");
    assert!(!out[0].ok);
    let error = out[0].error.as_deref().unwrap();
    assert!(
        error.contains("timeout") && error.contains("killed"),
        "{error}"
    );
    // Both took about the timeout each, not the 60 s of the sleep.
    assert!(started.elapsed() < Duration::from_secs(5));

    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(&pid) {
        assert!(
            Instant::now() < deadline,
            "the hook's background child {pid} outlived the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process runs (a zombie waiting for its parent to reap it does not).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

#[tokio::test]
async fn a_webhook_to_a_closed_port_fails_after_its_retries_with_the_reason() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let hooks = Hooks::spawn(CLUSTER, vec![hook("gone", webhook(addr, "/hook"))]);
    hooks.send(payload(EventKind::LeaseLost));
    let out = drained(&hooks).await;
    assert!(!out[0].ok);
    assert_eq!((out[0].attempts, out[0].event), (3, HookEvent::LeaseLost));
    let error = out[0].error.as_deref().unwrap();
    assert!(
        error.contains(&format!("POST http://{addr}/hook")),
        "{error}"
    );
    assert!(
        error.to_lowercase().contains("connection refused"),
        "{error}"
    );
    assert_eq!(hooks.status()[0].last.as_ref(), Some(&out[0]));
}

#[tokio::test]
async fn a_hook_gets_only_the_events_it_asked_for() {
    let (addr, rx) = start_receiver(vec![]).await;
    let mut fenced = hook("fenced-only", webhook(addr, "/fenced"));
    fenced.events = Some(vec![HookEvent::Fenced, HookEvent::Unfenced]);
    let all = hook("all", webhook(addr, "/all"));
    let hooks = Hooks::spawn(CLUSTER, vec![fenced, all]);
    for kind in [EventKind::Failover, EventKind::Fenced, EventKind::LeaseLost] {
        hooks.send(payload(kind));
    }
    let out = drained(&hooks).await;
    assert!(out.iter().all(|o| o.ok), "{out:?}");
    let events = |path: &str| -> Vec<String> {
        rx.got()
            .iter()
            .filter(|g| g.path == path)
            .map(|g| g.body["event"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(events("/fenced"), vec!["fenced"]);
    assert_eq!(
        events("/all"),
        vec!["owner_changed", "fenced", "lease_lost"],
        "in order"
    );
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = hook("slow", command("sleep 60", dir.path()));
    cfg.timeout = Duration::from_secs(60);
    let hooks = Hooks::spawn(CLUSTER, vec![cfg]);
    // This test's runtime has one thread: the delivery task cannot take anything from the
    // queue before the loop ends.
    for _ in 0..300 {
        hooks.send(payload(EventKind::Fenced));
    }
    let st = hooks.status();
    assert_eq!((st[0].queued, st[0].dropped), (256, 44), "{st:?}");
}
