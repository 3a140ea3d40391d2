//! `pgmesh teardown -c pgmesh.toml [--yes]`: removes pgmesh's objects from every node.
//!
//! Asks on a terminal; without a terminal it refuses unless `--yes` (a script must say so
//! explicitly). Exit codes: 0 done, 1 a node failed, 2 usage/config error or not confirmed.

use crate::config::{Config, ConfigFlags};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct TeardownArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub overrides: ConfigFlags,
}

pub async fn run(args: TeardownArgs) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load_with(&args.config, &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let nodes: Vec<&str> = cfg.nodes.keys().map(String::as_str).collect();
    if !args.yes
        && !super::confirm::ask(
            "teardown",
            &format!(
                "This drops pgmesh's slots, replication origins, publication, tombstone triggers and schema pgmesh \
                 (conflict ledger, tombstones) on nodes {}. User tables and rows stay.",
                nodes.join(", ")
            ),
            "",
        )?
    {
        return Ok(ExitCode::from(2));
    }
    let (changes, errors) = crate::setup::teardown(&cfg).await;
    for c in &changes {
        println!("node {}: {}", c.node, c.what);
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        if changes.is_empty() {
            println!("nothing to remove");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}
