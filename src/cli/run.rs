//! `pgmesh run -c pgmesh.toml --node b`: the sidecar of one node. One task per peer
//! streams the peer's slot and applies into this node; SIGTERM / Ctrl-C stops them
//! cleanly (pending work committed or rolled back, position acknowledged). Beside them:
//! the WAL guardrail over this node's slots, and with `[http] listen` the HTTP endpoint
//! (`/healthz`, `/readyz`, `/metrics`). A direction that cannot go on (its slot dropped
//! by the peer's guardrail) stops the process with exit code 1 and the way to recover.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::{names, Config, ConfigFlags};
use crate::guardrail::watch::Guardrail;
use crate::guardrail::GuardrailStatus;
use crate::observe::{http, metrics, DirectionState, Health};
use crate::sidecar::{run_direction, run_maintenance, scheduling, BatchLimits, PeerLink};
use crate::source::BackoffPolicy;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// The node this sidecar runs next to (a name under [nodes]).
    #[arg(long, env = "PGMESH_NODE")]
    pub node: String,
    #[command(flatten)]
    pub overrides: ConfigFlags,
}

/// The directions into `node`, one per peer, from the config.
pub fn links(cfg: &Config, node: &str) -> anyhow::Result<Vec<PeerLink>> {
    let me = cfg.node(node)?;
    let local = me.sql_config()?;
    let limits = BatchLimits {
        max_rows: cfg.apply.batch_max_rows,
        max_bytes: usize::try_from(cfg.apply.batch_max_bytes.0).unwrap_or(usize::MAX),
        max_delay: cfg.apply.batch_max_delay,
    };
    let mut out = Vec::new();
    for peer in cfg.peers(node) {
        let source = peer
            .source_config()
            .with_context(|| format!("dsn of node {}", peer.name))?;
        out.push(PeerLink {
            local_node: node.to_string(),
            peer: peer.name.clone(),
            local: local.clone(),
            peer_source: source,
            peer_sql: peer.sql_config()?,
            slot: names::slot_name(node),
            publication: names::PUBLICATION.to_string(),
            limits,
            reconnect: BackoffPolicy::default(),
            clock_skew_warn: cfg.replication.clock_skew_warn,
            clock_wait_max: cfg.replication.clock_wait_max,
            stream_after: cfg.apply.stream_after.map(|b| b.0),
        });
    }
    Ok(out)
}

/// Loads the config, sets `[apply] cpu_policy` up on this thread (the runtime's threads,
/// started next from it, inherit its policy), then runs the sidecar.
pub fn main(args: RunArgs) -> ExitCode {
    let cfg = match Config::load_with(&args.config, &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgmesh: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = cfg.apply.cpu_policy;
    if let Err(e) = scheduling::init(policy) {
        tracing::warn!(%policy, error = %e, "cannot set the sidecar's CPU scheduling policy; running under the one it was started with");
    }
    super::block_on(run(args, cfg))
}

async fn run(args: RunArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let links = match links(&cfg, &args.node) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pgmesh: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let local = match cfg.node(&args.node).and_then(|n| n.sql_config()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pgmesh: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // The recorder first: directions register their series when they start. Without
    // [http] there is no recorder, and recording is a no-op.
    let server = match &cfg.http {
        None => None,
        Some(h) => {
            let handle = metrics::install(&args.node).context("installing the metrics recorder")?;
            match http::bind(h.listen).await {
                Ok(listener) => Some((listener, handle)),
                Err(e) => {
                    eprintln!("pgmesh: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let guardrail = Arc::new(GuardrailStatus::new(&cfg.guardrail));
    tasks.push(tokio::spawn(crate::guardrail::watch::run(
        Guardrail {
            node: args.node.clone(),
            peers: links.iter().map(|l| l.peer.clone()).collect(),
            local: local.clone(),
            cfg: cfg.guardrail.clone(),
            status: guardrail.clone(),
        },
        stop_rx.clone(),
    )));
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel(links.len().max(1));
    let mut directions = Vec::new();
    for link in links {
        tracing::info!(node = %args.node, peer = %link.peer, "starting direction");
        let state = DirectionState::new(&link.peer);
        directions.push(state.clone());
        let (stop, fatal) = (stop_rx.clone(), fatal_tx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = run_direction(link, stop, state).await {
                let _ = fatal.send(e).await;
            }
        }));
    }
    // Ledger retention and tombstone pruning ([ledger]): its own sessions, never in the
    // apply path.
    tasks.push(tokio::spawn(run_maintenance(
        args.node.clone(),
        local.clone(),
        cfg.ledger.clone(),
        directions.clone(),
        stop_rx.clone(),
    )));
    if let Some((listener, handle)) = server {
        let health = Arc::new(Health {
            node: args.node.clone(),
            directions,
            guardrail,
        });
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP endpoint: /healthz /readyz /metrics");
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = http::serve(listener, health, handle, stop).await {
                tracing::error!(error = %e, "HTTP endpoint stopped");
            }
        }));
    }
    let code = tokio::select! {
        () = shutdown_signal() => ExitCode::SUCCESS,
        Some(e) = fatal_rx.recv() => {
            eprintln!("pgmesh: {e}");
            ExitCode::from(1)
        }
    };
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    Ok(code)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
