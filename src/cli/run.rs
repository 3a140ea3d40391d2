//! `pgmesh run -c pgmesh.toml --node b`: the sidecar of one node. One task per peer
//! streams the peer's slot and applies into this node; SIGTERM / Ctrl-C stops them
//! cleanly (pending work committed or rolled back, position acknowledged).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::{names, Config, ConfigFlags};
use crate::sidecar::{run_maintenance, run_peer, BatchLimits, PeerLink};
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
        });
    }
    Ok(out)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load_with(&args.config, &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgmesh: {e}");
            return Ok(ExitCode::from(2));
        }
    };
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for link in links {
        tracing::info!(node = %args.node, peer = %link.peer, "starting direction");
        tasks.push(tokio::spawn(run_peer(link, stop_rx.clone())));
    }
    // Ledger retention ([ledger]): its own sessions, never in the apply path.
    tasks.push(tokio::spawn(run_maintenance(
        args.node.clone(),
        local,
        cfg.ledger.clone(),
        stop_rx.clone(),
    )));
    shutdown_signal().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    Ok(ExitCode::SUCCESS)
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
