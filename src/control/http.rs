//! The agent's HTTP endpoint, for people and for HAProxy-style checks:
//! - `GET /health`: 200 unless failed; the body has state, score and every signal;
//! - `GET /writable`: 200 only while this region may take writes (owns an endpoint under
//!   a live lease, not fenced), else 503;
//! - `GET /owner/<endpoint>`: 200 only while this region owns and serves the endpoint;
//! - `GET /metrics`: Prometheus text.
//!
//! Every answer is computed at request time against the lease deadline, so a frozen
//! loop cannot leave a stale 200 behind.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::agent::{Published, SharedState};

#[derive(Clone)]
struct AppState {
    shared: SharedState,
    metrics: Option<PrometheusHandle>,
}

pub fn router(shared: SharedState, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/writable", get(writable))
        .route("/owner/{endpoint}", get(owner))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { shared, metrics })
}

/// Serves on `listener` until `stop` flips.
pub async fn serve(
    listener: TcpListener,
    shared: SharedState,
    metrics: Option<PrometheusHandle>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared, metrics))
        .with_graceful_shutdown(async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
}

fn snapshot(s: &AppState) -> (Published, bool) {
    let mut p = s.shared.read().unwrap_or_else(|e| e.into_inner()).clone();
    let now = Instant::now();
    let ok = p.writable_at(now);
    p.lease_remaining_ms = p
        .deadline
        .map(|d| u64::try_from(d.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX));
    (p, ok)
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    let (p, _) = snapshot(&s);
    let code = if p.health == "failed" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(p))
}

async fn writable(State(s): State<AppState>) -> impl IntoResponse {
    let (p, ok) = snapshot(&s);
    let body = serde_json::json!({
        "node": p.node, "writable": ok, "why": p.why, "serving": p.serving,
        "fenced": p.fenced, "lease_remaining_ms": p.lease_remaining_ms,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn owner(State(s): State<AppState>, Path(endpoint): Path<String>) -> impl IntoResponse {
    let (p, ok) = snapshot(&s);
    let serves = ok && p.serving.contains(&endpoint);
    let body = serde_json::json!({
        "node": p.node, "endpoint": endpoint, "owner": serves, "why": p.why,
        "serving": p.serving, "lease_remaining_ms": p.lease_remaining_ms,
    });
    let code = if serves {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    let text = s
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}
