//! `pgmesh agent -c pgmesh.toml --node a [--http-listen ADDR]`: the control plane of one
//! region (see [`crate::control`]), and `pgmesh watchdog`, the process the agent starts
//! to fence the primary when the agent itself freezes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::control::agent::{io_timeout, Agent};
use crate::control::db::Conn;
use crate::control::fence::FencePolicy;
use crate::control::watchdog::{self, Heartbeat};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// The region (a name under [nodes]) this agent runs in.
    #[arg(long, env = "PGMESH_NODE")]
    pub node: String,
    /// Serve /health, /writable, /owner/ENDPOINT and /metrics here.
    #[arg(long, env = "PGMESH_AGENT_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Do not start the watchdog (tests of the watchdog itself; never in production).
    #[arg(long, hide = true)]
    pub no_watchdog: bool,
}

#[derive(Debug, clap::Args)]
pub struct WatchdogArgs {
    #[arg(short, long)]
    pub config: PathBuf,
    #[arg(long)]
    pub node: String,
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("pgmesh: {e}");
        ExitCode::from(2)
    })
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load(&args.config) {
        Ok(c) => Arc::new(c),
        Err(code) => return Ok(code),
    };
    let agent = match Agent::new(cfg, &args.node) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pgmesh: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = crate::observe::metrics::install(&args.node).ok();
    if let Some(addr) = args.http_listen {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("pgmesh: cannot listen for HTTP on {addr} (--http-listen): {e}; choose a free address");
                return Ok(ExitCode::from(2));
            }
        };
        let (shared, stop) = (agent.shared(), stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::control::http::serve(listener, shared, metrics, stop).await {
                tracing::error!(error = %e, "agent HTTP endpoint stopped");
            }
        });
    }
    let heartbeat = if args.no_watchdog {
        tracing::warn!("running without a watchdog: a frozen agent cannot fence its primary");
        None
    } else {
        let exe = std::env::current_exe()?;
        let config = std::fs::canonicalize(&args.config).unwrap_or(args.config.clone());
        Some(Heartbeat::start(
            exe,
            vec![
                "watchdog".into(),
                "-c".into(),
                config.display().to_string(),
                "--node".into(),
                args.node.clone(),
            ],
        ))
    };
    tracing::info!(node = %args.node, "agent starting");
    let task = tokio::spawn(agent.run(stop_rx, heartbeat));
    super::run::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = task.await;
    Ok(ExitCode::SUCCESS)
}

pub async fn run_watchdog(args: WatchdogArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // The same roles and exemptions as the agent's own fence.
    let probe = match Agent::new(Arc::new(cfg.clone()), &args.node) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pgmesh watchdog: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let policy: FencePolicy = probe.fence_policy();
    let ctl = cfg.control()?;
    let local = Conn::new(cfg.node(&args.node)?.sql_config()?, io_timeout(ctl));
    watchdog::run(local, &args.node, policy).await;
    Ok(ExitCode::SUCCESS)
}
