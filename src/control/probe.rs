//! The health orchestrator's probes: each measures one signal against the real thing
//! (a write into the local primary, the sidecar's `/readyz`, the slots' `wal_status`,
//! the peer's view of our apply lag, the user's Prometheus) and never fails itself: a
//! probe that cannot measure reports its signal as failed with the reason.

use std::time::Duration;

use tokio_postgres::Client;

use super::health::{Signal, SignalStatus};
use crate::config::{HealthConfig, PromqlSignal};

/// What the PostgreSQL probe learned besides its signal.
#[derive(Clone, Debug, Default)]
pub struct PgFacts {
    /// pg_current_wal_lsn() as text.
    pub wal_lsn: Option<String>,
}

/// Liveness through a real write: a committed upsert into `pgmesh.agent_probe` (not
/// replicated), with `synchronous_commit = on` so a full disk or a stuck WAL flush fails
/// it, plus the WAL position for the RPO estimate.
pub async fn postgres(
    client: Option<&Client>,
    node: &str,
    weight: f64,
    timeout: Duration,
) -> (Signal, PgFacts) {
    let Some(client) = client else {
        return (
            Signal::new("postgres", weight, SignalStatus::Fail, "not connected"),
            PgFacts::default(),
        );
    };
    let write = async {
        client
            .query_one(
                "WITH w AS (INSERT INTO pgmesh.agent_probe AS p (node, at) VALUES ($1, now())
                            ON CONFLICT (node) DO UPDATE SET at = EXCLUDED.at RETURNING 1)
                 SELECT pg_current_wal_lsn()::text FROM w",
                &[&node],
            )
            .await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(row)) => {
            let lsn: String = row.get(0);
            (
                Signal::new(
                    "postgres",
                    weight,
                    SignalStatus::Ok,
                    format!("write committed, wal at {lsn}"),
                ),
                PgFacts { wal_lsn: Some(lsn) },
            )
        }
        Ok(Err(e)) => (
            Signal::new(
                "postgres",
                weight,
                SignalStatus::Fail,
                format!("write failed: {}", crate::sqlconn::pg_message(&e)),
            ),
            PgFacts::default(),
        ),
        Err(_) => (
            Signal::new(
                "postgres",
                weight,
                SignalStatus::Fail,
                format!("write did not commit within {timeout:?}"),
            ),
            PgFacts::default(),
        ),
    }
}

/// The local slots pgmesh's peers read: `lost` fails (that direction needs a re-sync),
/// `unreserved` warns (WAL about to be removed).
pub async fn slots(client: Option<&Client>, weight: f64, timeout: Duration) -> Signal {
    let Some(client) = client else {
        return Signal::new("slot", weight, SignalStatus::Fail, "not connected");
    };
    let q = client.query(
        "SELECT slot_name::text, coalesce(wal_status, 'unknown') FROM pg_replication_slots
          WHERE slot_name LIKE 'pgmesh\\_%' ORDER BY 1",
        &[],
    );
    match tokio::time::timeout(timeout, q).await {
        Ok(Ok(rows)) if rows.is_empty() => Signal::new(
            "slot",
            weight,
            SignalStatus::Fail,
            "no pgmesh slot on this node (run pgmesh setup)",
        ),
        Ok(Ok(rows)) => {
            let mut status = SignalStatus::Ok;
            let mut parts = Vec::new();
            for r in &rows {
                let (name, state): (String, String) = (r.get(0), r.get(1));
                let s = match state.as_str() {
                    "lost" => SignalStatus::Fail,
                    "unreserved" => SignalStatus::Warn,
                    _ => SignalStatus::Ok,
                };
                status = worst(status, s);
                parts.push(format!("{name} {state}"));
            }
            Signal::new("slot", weight, status, parts.join(", "))
        }
        Ok(Err(e)) => Signal::new(
            "slot",
            weight,
            SignalStatus::Fail,
            crate::sqlconn::pg_message(&e),
        ),
        Err(_) => Signal::new(
            "slot",
            weight,
            SignalStatus::Fail,
            format!("no answer within {timeout:?}"),
        ),
    }
}

/// The sidecar's readiness (`/readyz`), when its URL is known, and our apply lag as the
/// peer's slot sees it (bytes of the peer's WAL we have not confirmed). The lag only
/// warns: a slow WAN raises it and must never fail a region.
pub async fn sidecar(
    http: &reqwest::Client,
    url: Option<&str>,
    lag_bytes: Option<u64>,
    cfg: &HealthConfig,
    timeout: Duration,
) -> Signal {
    let mut status = SignalStatus::Ok;
    let mut parts = Vec::new();
    if let Some(url) = url {
        let ready = http
            .get(format!("{}/readyz", url.trim_end_matches('/')))
            .timeout(timeout)
            .send()
            .await;
        match ready {
            Ok(r) if r.status().is_success() => parts.push("ready".to_string()),
            Ok(r) => {
                status = SignalStatus::Fail;
                parts.push(format!("not ready (HTTP {})", r.status().as_u16()));
            }
            Err(e) => {
                status = SignalStatus::Fail;
                parts.push(format!("unreachable at {url}: {e}"));
            }
        }
    }
    match lag_bytes {
        Some(l) if l > cfg.max_lag.0 => {
            status = worst(status, SignalStatus::Warn);
            parts.push(format!(
                "apply lag {} above {}",
                crate::config::human_bytes(l),
                crate::config::human_bytes(cfg.max_lag.0)
            ));
        }
        Some(l) => parts.push(format!("apply lag {}", crate::config::human_bytes(l))),
        None => parts.push("apply lag unknown (peer unreachable)".into()),
    }
    Signal::new("sidecar", cfg.weight_sidecar, status, parts.join("; "))
}

/// How far this region's apply of the peer is behind: on the peer, its WAL position
/// minus what our sidecar confirmed on the slot it reads (`pgmesh_<me>`).
pub async fn apply_lag(peer: Option<&Client>, me: &str, timeout: Duration) -> Option<u64> {
    let peer = peer?;
    let slot = crate::config::names::slot_name(me);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slot];
    let q = peer.query_opt(
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots
          WHERE slot_name = $1",
        &params,
    );
    match tokio::time::timeout(timeout, q).await {
        Ok(Ok(Some(row))) => row
            .get::<_, Option<i64>>(0)
            .map(|v| u64::try_from(v).unwrap_or(0)),
        _ => None,
    }
}

/// One PromQL query; the first sample of the result is compared with `max`/`min`.
pub async fn promql(http: &reqwest::Client, p: &PromqlSignal, timeout: Duration) -> Signal {
    let fail = |detail: String| Signal::new(&p.name, p.weight, SignalStatus::Fail, detail);
    let url = format!("{}/api/v1/query", p.url.trim_end_matches('/'));
    let resp = match http
        .get(&url)
        .query(&[("query", p.query.as_str())])
        .timeout(timeout)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(format!("Prometheus at {} unreachable: {e}", p.url)),
    };
    let body: serde_json::Value = match resp.json().await {
        Ok(b) => b,
        Err(e) => return fail(format!("Prometheus answer is not JSON: {e}")),
    };
    let Some(value) = first_sample(&body) else {
        return fail(format!("query {:?} returned no sample", p.query));
    };
    let bad = p.max.is_some_and(|m| value > m) || p.min.is_some_and(|m| value < m);
    let bound = match (p.min, p.max) {
        (Some(lo), Some(hi)) => format!("{lo}..{hi}"),
        (None, Some(hi)) => format!("<= {hi}"),
        (Some(lo), None) => format!(">= {lo}"),
        (None, None) => String::new(),
    };
    let status = if bad {
        SignalStatus::Fail
    } else {
        SignalStatus::Ok
    };
    Signal::new(
        &p.name,
        p.weight,
        status,
        format!("{value} (wanted {bound})"),
    )
}

/// `data.result[0].value[1]` of an instant vector, or `data.result[1]` of a scalar.
fn first_sample(body: &serde_json::Value) -> Option<f64> {
    let data = body.get("data")?;
    let result = data.get("result")?;
    let text = match data.get("resultType")?.as_str()? {
        "vector" => result.get(0)?.get("value")?.get(1)?.as_str()?,
        "scalar" => result.get(1)?.as_str()?,
        _ => return None,
    };
    text.parse().ok()
}

fn worst(a: SignalStatus, b: SignalStatus) -> SignalStatus {
    use SignalStatus::*;
    match (a, b) {
        (Fail, _) | (_, Fail) => Fail,
        (Warn, _) | (_, Warn) => Warn,
        _ => Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vectors_and_scalars_and_nothing_else() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}}"#,
        )
        .unwrap();
        assert_eq!(first_sample(&v), Some(0.25));
        let s: serde_json::Value =
            serde_json::from_str(r#"{"data":{"resultType":"scalar","result":[1.0,"3"]}}"#).unwrap();
        assert_eq!(first_sample(&s), Some(3.0));
        let empty: serde_json::Value =
            serde_json::from_str(r#"{"data":{"resultType":"vector","result":[]}}"#).unwrap();
        assert_eq!(first_sample(&empty), None);
        assert_eq!(first_sample(&serde_json::json!({"error": "bad"})), None);
    }
}
