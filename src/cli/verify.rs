//! `pgmesh verify` and `pgmesh repair`.
//!
//! verify exit codes: 0 every table identical, 1 differences (or unsettled keys, a
//! skipped table, a direction that never reached a consistent point, an unreachable
//! node), 2 usage or config errors (bad config, unknown table or node).
//! repair: 0 every difference repaired (or none), 1 a difference left (not decidable,
//! changed meanwhile, failed) or verify could not finish, 2 usage/config errors or not
//! confirmed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigFlags};
use crate::verify::{self, repair, Pair, Progress, VerifyError, VerifyOptions, VerifyReport};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// Compare only this table (`schema.table` or a table name); repeat for more.
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rows per compared key range (smaller: finer ranges, more round trips).
    #[arg(long, value_name = "N", default_value_t = verify::DEFAULT_CHUNK_ROWS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_rows: u64,
    /// Seconds to wait for both directions to reach a consistent point (and for keys
    /// being written to settle).
    #[arg(long, value_name = "SECS", default_value_t = verify::DEFAULT_WAIT.as_secs())]
    pub wait_timeout: u64,
    #[command(flatten)]
    pub overrides: ConfigFlags,
}

#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// Take this node's version of every differing key, whatever its time (default:
    /// last writer wins).
    #[arg(long, value_name = "NODE")]
    pub prefer: Option<String>,
    /// Only print what would be done.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

fn options(args: &VerifyArgs) -> VerifyOptions {
    VerifyOptions {
        tables: args.tables.clone(),
        chunk_rows: args.chunk_rows,
        wait: Duration::from_secs(args.wait_timeout),
    }
}

/// Progress lines on stderr: each table, ranges at most once a second, re-check rounds.
fn progress_printer(names: [String; 2]) -> impl FnMut(Progress<'_>) + Send {
    let mut last = Instant::now();
    move |p| {
        match p {
        Progress::Table {
            table,
            index,
            total,
        } => {
            last = Instant::now();
            eprintln!("verify: [{index}/{total}] {table}");
        }
        Progress::Ranges {
            table,
            ranges,
            rows,
        } => {
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                eprintln!(
                    "verify: {table}: {ranges} ranges, rows {} {} / {} {}",
                    names[0], rows[0], names[1], rows[1]
                );
            }
        }
        Progress::TableDone {
            table,
            ranges,
            rows,
            candidates,
        } => {
            let more = if candidates > 0 {
                format!(", {candidates} to re-check")
            } else {
                String::new()
            };
            eprintln!(
                "verify: {table}: done, {ranges} ranges, rows {} {} / {} {}{more}",
                names[0], rows[0], names[1], rows[1]
            );
        }
        Progress::Confirming { keys, round, marks } => eprintln!(
            "verify: re-checking {keys} keys once {} → {} passes {} and {} → {} passes {} (round {round})",
            names[0], names[1], marks[0], names[1], names[0], marks[1]
        ),
    }
    }
}

/// Prints an error the way the output mode wants it; returns its exit code.
fn fail(json: bool, e: &VerifyError) -> ExitCode {
    super::print_error(json, e);
    ExitCode::from(if e.is_usage() { 2 } else { 1 })
}

fn load(args: &VerifyArgs) -> Result<Config, ExitCode> {
    super::load_config(&args.config, &args.overrides, args.json)
}

/// Connects and verifies; `Err` is the exit code of a failure already printed.
async fn connect_and_verify(
    cfg: &Config,
    args: &VerifyArgs,
    application: &str,
) -> Result<(Pair, VerifyReport), ExitCode> {
    let pair = verify::connect_pair(cfg, application)
        .await
        .map_err(|e| fail(args.json, &e))?;
    let names = pair.names().map(str::to_string);
    let mut progress = progress_printer(names);
    let report = verify::verify(&pair, &options(args), &mut progress)
        .await
        .map_err(|e| fail(args.json, &e))?;
    Ok((pair, report))
}

pub async fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (_pair, report) = match connect_and_verify(&cfg, &args, "pgmesh verify").await {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(exit(report.ok))
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Asks on the terminal; `Err` is the exit code when not confirmed.
fn confirm(fixes: usize, nodes: [&str; 2]) -> anyhow::Result<Result<(), ExitCode>> {
    let question = format!(
        "Apply {fixes} fixes on nodes {} and {} (each recorded in pgmesh.conflicts)?",
        nodes[0], nodes[1]
    );
    if super::confirm::ask("repair", &question, " (or --dry-run to only see the plan)")? {
        Ok(Ok(()))
    } else {
        Ok(Err(ExitCode::from(2)))
    }
}

pub async fn run_repair(args: RepairArgs) -> anyhow::Result<ExitCode> {
    let json = args.verify.json;
    let cfg = match load(&args.verify) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(p) = &args.prefer {
        if let Err(e) = cfg.node(p) {
            eprintln!("error: --prefer: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let (pair, report) = match connect_and_verify(&cfg, &args.verify, "pgmesh repair").await {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let nodes = pair.names();
    let prefer = args.prefer.as_deref().and_then(|p| pair.index(p));
    if report.error.is_some() {
        // Differences were not confirmed at a consistent point: nothing to act on.
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "ok": false, "verify": report, "fixes": [], "applied": false
                }))?
            );
        } else {
            print!("{}", report.to_table());
            eprintln!("repair changed nothing: verify did not reach a consistent point");
        }
        return Ok(ExitCode::from(1));
    }
    let fixes = match repair::plan(&pair, &report, prefer).await {
        Ok(f) => f,
        Err(e) => return Ok(fail(json, &e)),
    };
    // Problems verify found that repair cannot fix (skipped tables, unsettled keys).
    let verify_clean = report
        .tables
        .iter()
        .all(|t| t.unsettled.is_empty() && t.unconfirmed == 0 && t.reason.is_none());
    let print_json = |fixes: &[repair::PlannedFix],
                      outcomes: Option<&[repair::FixOutcome]>,
                      ok: bool|
     -> anyhow::Result<()> {
        let list: Vec<serde_json::Value> = fixes
            .iter()
            .enumerate()
            .map(|(i, f)| f.to_json(nodes, outcomes.and_then(|o| o.get(i))))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": ok, "verify": report, "fixes": list, "applied": outcomes.is_some()
            }))?
        );
        Ok(())
    };
    if !json {
        print!("{}", report.to_table());
    }
    if fixes.is_empty() {
        if json {
            print_json(&fixes, None, verify_clean)?;
        } else {
            println!("repair: nothing to repair");
        }
        return Ok(exit(verify_clean));
    }
    if !json {
        println!("\nrepair plan:");
        print!("{}", repair::to_table(nodes, &fixes, None));
    }
    if args.dry_run {
        if json {
            print_json(&fixes, None, false)?;
        } else {
            println!("dry run: nothing changed");
        }
        return Ok(ExitCode::from(1));
    }
    let to_write = fixes.iter().filter(|f| f.action.target().is_some()).count();
    if !args.yes && to_write > 0 {
        if let Err(code) = confirm(to_write, nodes)? {
            return Ok(code);
        }
    }
    let outcomes = match repair::apply(&pair, &fixes).await {
        Ok(o) => o,
        Err(e) => return Ok(fail(json, &e)),
    };
    let repaired = outcomes
        .iter()
        .filter(|o| **o == repair::FixOutcome::Repaired)
        .count();
    let ok = verify_clean && repaired == fixes.len();
    if json {
        print_json(&fixes, Some(&outcomes), ok)?;
    } else {
        println!("\nrepair results:");
        print!("{}", repair::to_table(nodes, &fixes, Some(&outcomes)));
        println!(
            "repair: {repaired} of {} differences repaired{}",
            fixes.len(),
            if repaired < fixes.len() {
                "; run `pgmesh verify` again for what is left"
            } else {
                ""
            }
        );
    }
    Ok(exit(ok))
}
