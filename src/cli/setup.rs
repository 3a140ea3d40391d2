//! `pgmesh setup -c pgmesh.toml [--check] [--json]`.
//!
//! Exit codes: 0 no errors (warnings allowed), 1 preflight or setup errors (including an
//! unreachable node), 2 usage or config errors.

use crate::config::ConfigFlags;
use crate::setup::{self, error_count, OutputPlugin, SetupOptions};
use crate::sync::ExistingData;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// Only run the preflight checks; change nothing.
    #[arg(long)]
    pub check: bool,
    /// Print findings (and changes) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the GRANT statements that let ROLE (not a superuser) run `pgmesh run`, and
    /// exit. Run them as a superuser on every node after setup.
    #[arg(long, value_name = "ROLE", conflicts_with_all = ["check", "json"])]
    pub print_grants: Option<String>,
    /// Tables new to replication with rows on several nodes: copy into each node the rows
    /// (by primary key) it lacks; rows on both keep each node's version until
    /// `pgmesh repair`.
    #[arg(long, conflicts_with = "replace_existing_from")]
    pub merge_existing: bool,
    /// Tables new to replication with rows on several nodes: NODE's rows replace the
    /// other nodes' rows (which are deleted there).
    #[arg(long, value_name = "NODE")]
    pub replace_existing_from: Option<String>,
    /// Do not ask before `--replace-existing-from` deletes rows (needed without a
    /// terminal).
    #[arg(long)]
    pub yes: bool,
    /// No progress lines on stderr while copying.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub overrides: ConfigFlags,
}

pub async fn run(args: SetupArgs) -> anyhow::Result<ExitCode> {
    if let Some(role) = &args.print_grants {
        // Needs no config and no connection: the script finds the tables itself.
        return Ok(match setup::grants::grants_sql(role) {
            Ok(sql) => {
                print!("{sql}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: --print-grants: {e}");
                ExitCode::from(2)
            }
        });
    }
    let cfg = match super::load_config(&args.config, &args.overrides, args.json) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let (Some(from), false, false) = (&args.replace_existing_from, args.yes, args.check) {
        let others: Vec<&str> = cfg
            .nodes
            .keys()
            .map(String::as_str)
            .filter(|n| n != from)
            .collect();
        let question = format!(
            "Tables new to replication that hold rows on several nodes get node {from}'s rows; \
             their rows on {} are DELETED.",
            others.join(", ")
        );
        if !super::confirm::ask("setup --replace-existing-from", &question, "")? {
            return Ok(ExitCode::from(2));
        }
    }
    let opts = SetupOptions {
        existing: if args.merge_existing {
            ExistingData::Merge
        } else if let Some(n) = args.replace_existing_from.clone() {
            ExistingData::ReplaceFrom(n)
        } else {
            ExistingData::Refuse
        },
        quiet: args.quiet || args.json,
    };
    if args.check {
        let findings = setup::preflight(&cfg, &OutputPlugin::pgoutput(), &opts.existing).await;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&setup::finding::to_json(&findings))?
            );
        } else {
            print!("{}", setup::finding::to_table(&findings));
        }
        return Ok(exit_for(error_count(&findings)));
    }
    let report = match setup::setup(&cfg, &opts).await {
        Ok(r) => r,
        Err(e) => {
            super::print_error(args.json, &e);
            return Ok(ExitCode::from(1));
        }
    };
    let errors = error_count(&report.findings);
    if args.json {
        let mut v = setup::finding::to_json(&report.findings);
        v["changes"] = serde_json::to_value(&report.changes)?;
        v["copied"] = serde_json::to_value(&report.copied)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit_for(errors));
    }
    if !report.findings.is_empty() {
        print!("{}", setup::finding::to_table(&report.findings));
    }
    if errors > 0 {
        eprintln!("setup changed nothing: fix the errors above and run it again");
    } else if report.changes.is_empty() && report.copied.is_empty() {
        println!("nothing to change: every node is set up");
    } else {
        for c in &report.changes {
            println!("node {}: {}", c.node, c.what);
        }
        for c in &report.copied {
            println!(
                "node {}: copied {} from {}: {} rows inserted, {} already there or deleted meanwhile",
                c.target, c.table, c.source, c.stats.copied, c.stats.kept
            );
        }
        println!("setup done; start `pgmesh run --node <name>` next to each node");
    }
    Ok(exit_for(errors))
}

fn exit_for(errors: usize) -> ExitCode {
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
