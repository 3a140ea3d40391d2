//! `pgmesh status -c pgmesh.toml [--json] [--node NAME]`: every direction's state, lag,
//! last applied position, retained WAL, recent conflicts and sidecar health.
//!
//! Exit codes: 0 every direction healthy, 1 anything unhealthy (a direction not
//! streaming, a node unreachable, a slot missing or lost, lag beyond the limits), 2 usage
//! or config errors (including an unknown `--node`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{Config, ConfigFlags};
use crate::status::{self, parse_size, Thresholds};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only the directions into NODE (what NODE's sidecar does).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// A direction further behind than this (WAL bytes) is unhealthy.
    #[arg(long, value_name = "SIZE", default_value = "256MB")]
    pub max_lag_bytes: String,
    /// A direction further behind than this many seconds is unhealthy.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub max_lag_seconds: f64,
    /// How long each node may take to answer, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub overrides: ConfigFlags,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let usage = |m: String| {
        super::print_error(json, &m);
        Ok(ExitCode::from(2))
    };
    let max_lag_bytes = match parse_size(&args.max_lag_bytes) {
        Ok(b) => b,
        Err(e) => return usage(format!("--max-lag-bytes: {e}")),
    };
    if !(args.max_lag_seconds.is_finite() && args.max_lag_seconds >= 0.0) {
        return usage("--max-lag-seconds: must be a number of seconds, 0 or more".into());
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3_600.0) {
        return usage("--timeout: must be a number of seconds between 0 and 3600".into());
    }
    let cfg = match Config::load_with(&args.config, &args.overrides) {
        Ok(c) => c,
        Err(e) => return usage(e.to_string()),
    };
    if let Some(n) = &args.node {
        if let Err(e) = cfg.node(n) {
            return usage(format!("--node: {e}"));
        }
    }
    let limits = Thresholds {
        max_lag_bytes,
        max_lag_seconds: args.max_lag_seconds,
        clock_skew_warn_seconds: cfg.replication.clock_skew_warn.as_secs_f64(),
    };
    let report = status::status(
        &cfg,
        args.node.as_deref(),
        limits,
        Duration::from_secs_f64(args.timeout),
    )
    .await;
    let control = super::control::status_section(&cfg).await;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(c), Some(obj)) = (control, v.as_object_mut()) {
            obj.insert("control".into(), c);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", status::render::to_table(&report));
        if let Some(c) = &control {
            print!("{}", super::control::status_text(c));
        }
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
