//! The operator's control-plane commands: `switchover`, `failover --force`, `fence`,
//! `unfence`, and the control section of `pgmesh status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::{parse_duration, Config, ControlConfig};
use crate::control::fence::{fence, FencePolicy, FenceRequest};
use crate::control::keys::{now_ms, MaintenanceValue, OwnerValue, SwitchoverValue};
use crate::control::store::{Snapshot, Store};
use crate::sqlconn::connect_sql;

#[derive(Debug, clap::Args)]
pub struct SwitchoverArgs {
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// The endpoint to move (a name under [endpoints]).
    pub endpoint: String,
    /// The region to move it to.
    #[arg(long)]
    pub to: String,
    /// How long the old owner may wait for the new one to catch up (default
    /// [control] switchover_timeout).
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    pub endpoint: String,
    #[arg(long)]
    pub to: String,
    /// Required: the operator takes responsibility that the old owner cannot write
    /// (automatic failover needs no command; this is for when etcd has no quorum).
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FenceArgs {
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// The region to fence / unfence.
    #[arg(long)]
    pub node: String,
    /// Why (kept in etcd and in the fence row).
    #[arg(long, default_value = "maintenance")]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
}

fn load(path: &std::path::Path) -> Result<(Config, ControlConfig), String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let ctl = cfg.control().map_err(|e| e.to_string())?.clone();
    Ok((cfg, ctl))
}

async fn store(ctl: &ControlConfig) -> Result<Store, String> {
    Store::connect(&ctl.etcd, &ctl.cluster, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())
}

fn done(json: bool, value: serde_json::Value, text: String) -> ExitCode {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
    ExitCode::SUCCESS
}

fn fail(json: bool, message: String) -> ExitCode {
    super::print_error(json, &message);
    ExitCode::from(1)
}

pub async fn switchover(args: SwitchoverArgs) -> anyhow::Result<ExitCode> {
    let (cfg, ctl) = match load(&args.config) {
        Ok(c) => c,
        Err(e) => return Ok(fail(args.json, e)),
    };
    if let Err(e) = ctl
        .endpoint(&args.endpoint)
        .map(|_| ())
        .and_then(|()| cfg.node(&args.to).map(|_| ()).map_err(|e| e.to_string()))
    {
        return Ok(fail(args.json, e));
    }
    let timeout = match args.timeout.as_deref().map(parse_duration).transpose() {
        Ok(t) => t.unwrap_or(ctl.switchover_timeout),
        Err(e) => return Ok(fail(args.json, format!("--timeout: {e}"))),
    };
    let store = match store(&ctl).await {
        Ok(s) => s,
        Err(e) => return Ok(fail(args.json, e)),
    };
    let snap = match store.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            return Ok(fail(
                args.json,
                format!("{e}; a switchover needs etcd with quorum"),
            ))
        }
    };
    let Some(owner) = snap.view.owners.get(&args.endpoint).cloned() else {
        return Ok(fail(
            args.json,
            format!(
                "{} has no owner now; wait for the agents to assign it (pgmesh status)",
                args.endpoint
            ),
        ));
    };
    if owner.node == args.to {
        return Ok(done(
            args.json,
            serde_json::json!({"ok": true, "endpoint": args.endpoint, "owner": args.to, "moved": false}),
            format!("{} is already owned by {}", args.endpoint, args.to),
        ));
    }
    if !snap.view.members.contains_key(&args.to) {
        return Ok(fail(
            args.json,
            format!(
                "{} has no live agent (no lease in etcd): start `pgmesh agent --node {}` first",
                args.to, args.to
            ),
        ));
    }
    if snap
        .view
        .members
        .get(&args.to)
        .is_some_and(|m| m.health == crate::control::health::HealthState::Failed)
    {
        return Ok(fail(
            args.json,
            format!(
                "{} reports its primary failed: wait until `pgmesh status` shows it healthy",
                args.to
            ),
        ));
    }
    if let Some((_, v)) = snap.switchovers.iter().find(|(e, _)| e == &args.endpoint) {
        if v.state == "requested" || v.state == "draining" {
            return Ok(fail(
                args.json,
                format!(
                    "a switchover of {} to {} is already in progress (requested by {})",
                    args.endpoint, v.to, v.requested_by
                ),
            ));
        }
        let _ = store.delete_switchover(&args.endpoint).await;
    }
    let now = now_ms();
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let request = SwitchoverValue {
        to: args.to.clone(),
        from: owner.node.clone(),
        epoch: owner.epoch,
        requested_at_ms: now,
        deadline_ms: now + ms(timeout),
        requested_by: "pgmesh switchover".into(),
        state: "requested".into(),
        stop_lsn: None,
        detail: None,
    };
    match store.request_switchover(&args.endpoint, &request).await {
        Ok(true) => {}
        Ok(false) => return Ok(fail(args.json, format!("{} changed owner or got another switchover meanwhile; look at pgmesh status and try again", args.endpoint))),
        Err(e) => return Ok(fail(args.json, e.to_string())),
    }
    let started = Instant::now();
    // The old owner aborts by itself at the deadline; give it a moment to say so.
    let wait_until = started + timeout + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(snap) = store.snapshot().await else {
            continue;
        };
        if snap
            .view
            .owners
            .get(&args.endpoint)
            .is_some_and(|w| w.node == args.to)
        {
            let detail = record(&snap, &args.endpoint)
                .and_then(|v| v.detail)
                .unwrap_or_default();
            let secs = started.elapsed().as_secs_f64();
            return Ok(done(
                args.json,
                serde_json::json!({"ok": true, "endpoint": args.endpoint, "from": owner.node, "to": args.to, "seconds": secs, "detail": detail}),
                format!(
                    "{} moved from {} to {} in {secs:.3} s ({detail})",
                    args.endpoint, owner.node, args.to
                ),
            ));
        }
        if let Some(v) = record(&snap, &args.endpoint).filter(|v| v.state == "aborted") {
            return Ok(fail(
                args.json,
                format!(
                    "switchover aborted: {}; {} stays with {}",
                    v.detail.unwrap_or_default(),
                    args.endpoint,
                    owner.node
                ),
            ));
        }
        if Instant::now() > wait_until {
            return Ok(fail(args.json, format!("switchover did not finish within {timeout:?}; pgmesh status shows where it stands")));
        }
    }
}

fn record(snap: &Snapshot, endpoint: &str) -> Option<SwitchoverValue> {
    snap.switchovers
        .iter()
        .find(|(e, _)| e == endpoint)
        .map(|(_, v)| v.clone())
}

pub async fn failover(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    let (cfg, ctl) = match load(&args.config) {
        Ok(c) => c,
        Err(e) => return Ok(fail(args.json, e)),
    };
    if !args.force {
        return Ok(fail(args.json, "failover without quorum is the operator's decision: add --force once you made sure the old owner cannot take writes (for a planned move use pgmesh switchover; failover with quorum happens by itself)".into()));
    }
    if let Err(e) = ctl.endpoint(&args.endpoint) {
        return Ok(fail(args.json, e));
    }
    let node = match cfg.node(&args.to) {
        Ok(n) => n,
        Err(e) => return Ok(fail(args.json, e.to_string())),
    };
    // With quorum the decision goes straight into etcd (recorded as an event by the
    // target's agent when it claims it); either way the target's database remembers it,
    // so its agent keeps the region writable for it while etcd has no quorum.
    let sql = node.sql_config()?;
    let (client, task) = match connect_sql(&sql).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(fail(
                args.json,
                format!("cannot reach node {}: {e}", args.to),
            ))
        }
    };
    let note = format!("pgmesh failover {} --to {} --force", args.endpoint, args.to);
    let r = client
        .execute(
            "INSERT INTO pgmesh.forced (endpoint, by_whom, note) VALUES ($1, $2, $3)
             ON CONFLICT (endpoint) DO UPDATE SET at = now(), by_whom = EXCLUDED.by_whom, note = EXCLUDED.note",
            &[&args.endpoint, &whoami(), &note],
        )
        .await;
    task.abort();
    if let Err(e) = r {
        return Ok(fail(
            args.json,
            format!(
                "cannot record the decision on {}: {}",
                args.to,
                crate::sqlconn::pg_message(&e)
            ),
        ));
    }
    // An earlier forced move of this endpoint onto another region makes that region's
    // agent keep it (and the target's agent leave it): forget it wherever we reach.
    let mut stale = Vec::new();
    for other in cfg.peers(&args.to) {
        let sql = "DELETE FROM pgmesh.forced WHERE endpoint = $1";
        if let Err(e) = query_node(other, Duration::from_secs(5), sql, &[&args.endpoint]).await {
            stale.push(format!("{}: {e}", other.name));
        }
    }
    let etcd = match store(&ctl).await {
        Ok(s) => match s.snapshot().await {
            Ok(snap) => match snap.view.members.get(&args.to) {
                Some(m) => {
                    let value = OwnerValue {
                        node: args.to.clone(),
                        since_ms: now_ms(),
                        reason: note.clone(),
                    };
                    s.claim(&args.endpoint, m.lease, &value)
                        .await
                        .map(|()| "claimed in etcd".to_string())
                        .map_err(|e| e.to_string())
                }
                None => Err(format!("{} has no live agent in etcd", args.to)),
            },
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e),
    };
    let etcd_note = match &etcd {
        Ok(m) => m.clone(),
        Err(e) => format!(
            "etcd not updated ({e}): the agent of {} records it once etcd has quorum",
            args.to
        ),
    };
    let stale_note = if stale.is_empty() {
        String::new()
    } else {
        format!(
            "; an earlier forced move of {} may stand on the regions not reached ({}): run this again once they are",
            args.endpoint,
            stale.join("; ")
        )
    };
    Ok(done(
        args.json,
        serde_json::json!({"ok": true, "endpoint": args.endpoint, "to": args.to, "forced": true, "etcd": etcd_note, "not_reached": stale}),
        format!(
            "{} forced onto {}: {etcd_note}{stale_note}",
            args.endpoint, args.to
        ),
    ))
}

fn whoami() -> String {
    std::env::var("USER")
        .map(|u| format!("operator {u}"))
        .unwrap_or_else(|_| "operator".into())
}

pub async fn fence_cmd(args: FenceArgs, on: bool) -> anyhow::Result<ExitCode> {
    let (cfg, ctl) = match load(&args.config) {
        Ok(c) => c,
        Err(e) => return Ok(fail(args.json, e)),
    };
    let node = match cfg.node(&args.node) {
        Ok(n) => n,
        Err(e) => return Ok(fail(args.json, e.to_string())),
    };
    let etcd = match store(&ctl).await {
        Ok(s) => {
            let value = MaintenanceValue {
                reason: args.reason.clone(),
                at_ms: now_ms(),
            };
            s.set_maintenance(&args.node, on.then_some(&value))
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    if !on {
        // Lifting a fence is the agent's decision (the region must own an endpoint under
        // a live lease); this only lifts the operator's reason for it.
        return Ok(match etcd {
            Ok(()) => done(args.json, serde_json::json!({"ok": true, "node": args.node, "maintenance": false}),
                format!("maintenance of {} lifted; its agent unfences it once it owns an endpoint (pgmesh switchover ENDPOINT --to {} to give one back)", args.node, args.node)),
            Err(e) => fail(args.json, format!("{e}: unfence needs etcd with quorum")),
        });
    }
    // Fence the database directly too: works while the agent or etcd is down.
    let db = async {
        let (client, task) = connect_sql(&node.sql_config().map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        let mut exempt = ctl.fence_exempt.clone();
        for n in cfg.nodes.values() {
            if let Some(u) = n
                .sql_config()
                .ok()
                .and_then(|s| s.pg.get_user().map(str::to_string))
            {
                exempt.push(u);
            }
        }
        let policy = FencePolicy {
            roles: ctl.fence_roles.clone(),
            exempt,
        };
        let r = fence(
            &client,
            &FenceRequest {
                reason: &args.reason,
                epoch: 0,
                by: &whoami(),
                policy: &policy,
            },
        )
        .await;
        task.abort();
        r.map_err(|e| e.to_string())
    }
    .await;
    match (etcd, db) {
        (Ok(()), Ok(r)) => Ok(done(args.json, serde_json::json!({"ok": true, "node": args.node, "maintenance": true, "sessions_ended": r.terminated.len()}),
            format!("{} fenced ({} session(s) ended); its agent moves its endpoints to a healthy peer", args.node, r.terminated.len()))),
        (Err(e), Ok(_)) => Ok(fail(args.json, format!("{} fenced at the database, but etcd was not updated ({e}): its agent may lift the fence; run this again when etcd is back", args.node))),
        (_, Err(e)) => Ok(fail(args.json, format!("cannot fence {} at the database: {e}", args.node))),
    }
}

/// The control plane's part of `pgmesh status`: owners and epochs, each region's health
/// and fence state, switchovers and the latest events. `None` without `[control]`.
pub async fn status_section(cfg: &Config) -> Option<serde_json::Value> {
    let ctl = cfg.control.as_ref()?;
    // Read from the databases, not etcd: they matter most while etcd has no quorum.
    let forced = forced_failovers(cfg).await;
    let snap = match store(ctl).await {
        Ok(s) => s.snapshot().await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let snap = match snap {
        Ok(s) => s,
        Err(e) => {
            return Some(serde_json::json!({"etcd": {"ok": false, "error": e}, "forced": forced}))
        }
    };
    let endpoints: Vec<serde_json::Value> = ctl
        .endpoints
        .values()
        .map(|e| {
            let owner = snap.view.owners.get(&e.name);
            serde_json::json!({
                "endpoint": e.name, "home": e.home,
                "owner": owner.map(|o| o.node.clone()), "epoch": owner.map(|o| o.epoch),
            })
        })
        .collect();
    let regions: Vec<serde_json::Value> = cfg
        .nodes
        .keys()
        .map(|n| {
            let live = snap.members.iter().find(|m| &m.node == n);
            let last = snap.status.iter().find(|m| &m.node == n);
            serde_json::json!({
                "node": n, "agent_alive": live.is_some(), "lease": live.map(|m| m.lease),
                "health": last.map(|m| m.health.clone()), "score": last.map(|m| m.score),
                "fenced": last.and_then(|m| m.fenced), "writable": live.is_some_and(|m| m.writable),
                "maintenance": snap.view.maintenance.contains(n),
                "wal_lsn": last.and_then(|m| m.wal_lsn.clone()), "apply_lag_bytes": last.and_then(|m| m.apply_lag_bytes),
                "reported_at_ms": last.map(|m| m.at_ms),
                "traffic": last.map(|m| m.traffic.clone()).unwrap_or_default(),
            })
        })
        .collect();
    let mut events = snap.events.clone();
    events.sort_by_key(|e| (e.at_ms, e.seq));
    let recent: Vec<_> = events.iter().rev().take(20).collect();
    Some(serde_json::json!({
        "etcd": {"ok": true, "revision": snap.revision},
        "endpoints": endpoints, "regions": regions,
        "switchovers": snap.switchovers.iter().map(|(e, v)| serde_json::json!({"endpoint": e, "record": v})).collect::<Vec<_>>(),
        "events": recent, "forced": forced,
    }))
}

/// Every region's standing forced failovers (`pgmesh.forced`: made writable for an
/// endpoint by `pgmesh failover --force`, not yet recorded in etcd by its agent), or why
/// a region's database could not be read.
async fn forced_failovers(cfg: &Config) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for node in cfg.nodes.values() {
        let sql = "SELECT endpoint, at::text, by_whom FROM pgmesh.forced ORDER BY endpoint";
        match query_node(node, Duration::from_secs(3), sql, &[]).await {
            Ok(rows) => out.extend(rows.iter().map(|r| {
                serde_json::json!({
                    "node": node.name, "endpoint": r.get::<_, String>(0),
                    "at": r.get::<_, String>(1), "by": r.get::<_, String>(2),
                })
            })),
            Err(e) => out.push(serde_json::json!({"node": node.name, "error": e})),
        }
    }
    out
}

/// One statement on `node`'s database in a session of its own, within `timeout`
/// (connecting included): a region that does not answer must not hold the command up.
async fn query_node(
    node: &crate::config::NodeConfig,
    timeout: Duration,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, String> {
    let run = async {
        let (c, task) = connect_sql(&node.sql_config().map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        let rows = c
            .query(sql, params)
            .await
            .map_err(|e| crate::sqlconn::pg_message(&e));
        task.abort();
        rows
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// The forced-failover lines of the control section.
fn forced_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for f in v["forced"].as_array().into_iter().flatten() {
        let node = f["node"].as_str().unwrap_or("?");
        match (f["endpoint"].as_str(), f["error"].as_str()) {
            (Some(e), _) => out.push_str(&format!(
                "  forced {e} onto {node} (by {} at {}): writable without a lease until its agent records it in etcd\n",
                f["by"].as_str().unwrap_or("?"),
                f["at"].as_str().unwrap_or("?")
            )),
            (None, Some(err)) => out.push_str(&format!("  forced failovers on {node}: not read ({err})\n")),
            (None, None) => {}
        }
    }
    out
}

/// The control section as text.
#[must_use]
pub fn status_text(v: &serde_json::Value) -> String {
    let mut out = String::from("\ncontrol plane\n");
    if v["etcd"]["ok"] != serde_json::Value::Bool(true) {
        out.push_str(&format!(
            "  etcd: unreachable ({})\n",
            v["etcd"]["error"].as_str().unwrap_or("?")
        ));
        out.push_str(&forced_text(v));
        return out;
    }
    out.push_str(&forced_text(v));
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    for e in v["endpoints"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  endpoint {:<12} owner {:<6} epoch {:<8} home {}\n",
            s(&e["endpoint"]),
            s(&e["owner"]),
            s(&e["epoch"]),
            s(&e["home"])
        ));
    }
    for r in v["regions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  region {:<6} agent {:<5} health {:<9} writable {:<5} fenced {:<5} maintenance {:<5} lag {}\n",
            s(&r["node"]), if r["agent_alive"] == serde_json::Value::Bool(true) { "up" } else { "DOWN" },
            s(&r["health"]), s(&r["writable"]), s(&r["fenced"]), s(&r["maintenance"]), s(&r["apply_lag_bytes"]),
        ));
        for line in r["traffic"].as_array().into_iter().flatten() {
            out.push_str(&format!("    traffic: {}\n", s(line)));
        }
    }
    for e in v["events"].as_array().into_iter().flatten().take(10) {
        out.push_str(&format!(
            "  event {} {} {} {} {}\n",
            s(&e["at_ms"]),
            s(&e["node"]),
            s(&e["kind"]),
            s(&e["endpoint"]),
            s(&e["reason"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_names_owners_regions_and_events() {
        let v = serde_json::json!({
            "etcd": {"ok": true, "revision": 42},
            "endpoints": [{"endpoint": "app-eu", "home": "a", "owner": "b", "epoch": 17}],
            "regions": [{"node": "a", "agent_alive": false, "health": "failed", "writable": false,
                         "fenced": true, "maintenance": false, "apply_lag_bytes": null,
                         "traffic": ["pgbouncer bouncer-a: app-eu -> b (10.0.2.5:5432) serving"]}],
            "events": [{"at_ms": 1, "node": "b", "kind": "failover", "endpoint": "app-eu",
                        "reason": "failover: a has no live lease"}],
        });
        let t = status_text(&v);
        assert!(
            t.contains("endpoint app-eu") && t.contains("owner b") && t.contains("epoch 17"),
            "{t}"
        );
        assert!(
            t.contains("region a") && t.contains("agent DOWN") && t.contains("fenced true"),
            "{t}"
        );
        assert!(
            t.contains("failover app-eu failover: a has no live lease"),
            "{t}"
        );
        assert!(
            t.contains("traffic: pgbouncer bouncer-a: app-eu -> b"),
            "{t}"
        );
        let down = status_text(&serde_json::json!({"etcd": {"ok": false, "error": "no quorum"}}));
        assert!(down.contains("etcd: unreachable (no quorum)"), "{down}");
    }
}
