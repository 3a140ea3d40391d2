//! `pgmesh sequences -c pgmesh.toml [--apply] [--json]`: which sequences and identity
//! columns of the replicated tables could hand out the same value on two nodes, and (with
//! `--apply`) the per-node increments and restart values that keep them apart.
//!
//! Exit codes: 0 every sequence is safe (after `--apply`: was made safe), 1 unsafe or
//! refused sequences remain, or an error (e.g. an unreachable node), 2 usage or config
//! errors.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_postgres::Client;

use crate::config::{Config, ConfigFlags};
use crate::sequences::{self, apply::Applied, render, Plan, Verdict};

#[derive(Debug, clap::Args)]
pub struct SequencesArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// Change the unsafe sequences on every node (each node in one transaction).
    #[arg(long)]
    pub apply: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub overrides: ConfigFlags,
}

pub async fn run(args: SequencesArgs) -> anyhow::Result<ExitCode> {
    let cfg = match super::load_config(&args.config, &args.overrides, args.json) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let fail = |message: String| {
        super::print_error(args.json, &message);
        Ok(ExitCode::from(1))
    };
    let mut clients = Vec::new();
    for node in cfg.nodes.values() {
        match crate::setup::connect(node).await {
            Ok(c) => clients.push((node.name.clone(), c)),
            Err(e) => return fail(format!("{e}; nothing was read or changed")),
        }
    }
    let mut plan = match read_and_plan(&cfg, &clients).await {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let mut applied: Vec<Applied> = Vec::new();
    if args.apply && plan.groups.iter().any(|g| g.verdict() == Verdict::Fixable) {
        applied = match sequences::apply::apply(&clients, &cfg.replication, &plan).await {
            Ok(a) => a,
            Err(e) => return fail(format!("{e}; every node was rolled back")),
        };
        plan = match read_and_plan(&cfg, &clients).await {
            Ok(p) => p,
            Err(e) => return fail(e.to_string()),
        };
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&render::to_json(&plan, &applied))?
        );
    } else {
        print!("{}", render::to_table(&plan, &applied));
    }
    Ok(if plan.unsafe_groups().next().is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads every node's sequences (with their columns' largest values) and judges them.
async fn read_and_plan(
    cfg: &Config,
    clients: &[(String, Client)],
) -> Result<Plan, sequences::SequencesError> {
    let mut facts = Vec::new();
    for (node, c) in clients {
        let f = sequences::gather(c, &cfg.replication, Some(clients.len()))
            .await
            .map_err(sequences::SequencesError::query(node, "reading sequences"))?;
        facts.push((node.clone(), f));
    }
    Ok(sequences::plan(&cfg.replication, &facts))
}
