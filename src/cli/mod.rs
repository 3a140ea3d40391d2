//! Command line of the `pgmesh` binary. `anyhow` lives here, at the binary's edge; the
//! library below speaks typed errors.

use clap::Parser;
use std::process::ExitCode;

mod agent;
mod confirm;
mod conflicts;
mod control;
mod ddl;
mod drill;
mod lab;
mod lab_regions;
mod run;
mod sequences;
mod setup;
mod status;
pub mod tail;
mod teardown;
mod verify;

#[derive(Debug, Parser)]
#[command(
    name = "pgmesh",
    version,
    about = "Active-active replication for PostgreSQL 15-18"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check every node (--check) and create pgmesh's schema, publication, triggers,
    /// origins and slots.
    Setup(setup::SetupArgs),
    /// Run the sidecar of one node: stream every peer's changes and apply them here.
    Run(run::RunArgs),
    /// Print each committed transaction of a logical replication slot as one JSON line.
    Tail(tail::TailArgs),
    /// Check that sequences and identity columns never hand out the same value on two
    /// nodes; --apply sets per-node increments and restart values.
    Sequences(sequences::SequencesArgs),
    /// Apply a schema change (ALTER TABLE, CREATE TABLE, …) to every node in an order that
    /// keeps replication running.
    Ddl(ddl::DdlArgs),
    /// Remove everything setup created, keeping user data.
    Teardown(teardown::TeardownArgs),
    /// Start two local nodes replicating both ways, with a demo table (Ctrl-C stops).
    Lab(lab::LabArgs),
    /// Break the cross-region lab on purpose under load and report RTO, RPO, lost writes
    /// and divergence (README "Drills"; needs root).
    Drill(drill::DrillArgs),
    /// Show every direction's state, lag, retained WAL, conflicts and sidecar health.
    Status(status::StatusArgs),
    /// List, summarize or prune the conflict ledger.
    Conflicts(conflicts::ConflictsArgs),
    /// Prove both nodes hold the same rows (hashed key ranges, consistent while writes go on).
    Verify(verify::VerifyArgs),
    /// Verify, then fix every differing key (last writer wins, or --prefer NODE).
    Repair(verify::RepairArgs),
    /// Run the control plane of one region: endpoint ownership in etcd, fencing, health,
    /// failover and switchover (see README "Control plane").
    Agent(agent::AgentArgs),
    #[command(hide = true)]
    Watchdog(agent::WatchdogArgs),
    /// Move an endpoint to another region without losing an acknowledged write: the old
    /// owner stops writes, waits until the new one applied them, then hands over.
    Switchover(control::SwitchoverArgs),
    /// Force an endpoint onto a region when etcd has no quorum (recorded; --force).
    Failover(control::FailoverArgs),
    /// Fence a region for maintenance: its primary refuses application writes and its
    /// agent moves its endpoints to a healthy peer.
    Fence(control::FenceArgs),
    /// Lift a maintenance fence (the agent unfences once the region owns an endpoint).
    Unfence(control::FenceArgs),
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    init_logging(cli.log_format);
    match cli.command {
        Command::Setup(args) => block_on(setup::run(args)),
        Command::Run(args) => run::main(args),
        Command::Tail(args) => block_on(async {
            tail::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Sequences(args) => block_on(sequences::run(args)),
        Command::Ddl(args) => block_on(ddl::run(args)),
        Command::Teardown(args) => block_on(teardown::run(args)),
        Command::Drill(args) => drill::run(&args),
        Command::Lab(args) if args.regions => lab_regions::run(&args),
        Command::Lab(args) => block_on(lab::run(args)),
        Command::Status(args) => block_on(status::run(args)),
        Command::Conflicts(args) => block_on(conflicts::run(args)),
        Command::Verify(args) => block_on(verify::run_verify(args)),
        Command::Repair(args) => block_on(verify::run_repair(args)),
        Command::Agent(args) => block_on(agent::run(args)),
        Command::Watchdog(args) => block_on(agent::run_watchdog(args)),
        Command::Switchover(args) => block_on(control::switchover(args)),
        Command::Failover(args) => block_on(control::failover(args)),
        Command::Fence(args) => block_on(control::fence_cmd(args, true)),
        Command::Unfence(args) => block_on(control::fence_cmd(args, false)),
    }
}

/// A command line clap refused: as JSON on stdout when the command asked for JSON (a
/// script reading stdout gets an answer it can parse), else clap's own message; exit 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let wants_json = std::env::args().any(|a| a == "--json" || a == "--jsonl");
    if wants_json && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let text = e.to_string();
        let message = text.trim().trim_start_matches("error: ");
        print_error(true, &message);
        return ExitCode::from(2);
    }
    let _ = e.print();
    ExitCode::from(if e.use_stderr() { 2 } else { 0 })
}

/// Loads the config; a bad one is reported the way the command's output mode wants
/// (`{"ok": false, "error": …}` on stdout under `--json`) and gives exit code 2.
fn load_config(
    path: &std::path::Path,
    overrides: &crate::config::ConfigFlags,
    json: bool,
) -> Result<crate::config::Config, ExitCode> {
    crate::config::Config::load_with(path, overrides).map_err(|e| {
        print_error(json, &e);
        ExitCode::from(2)
    })
}

/// Runs an async command on a fresh runtime; an unexpected error exits 1.
/// Reports a failed command the way its output mode wants: `{"ok": false, "error": …}` on
/// stdout with `--json`, `error: …` on stderr otherwise.
fn print_error(json: bool, error: &dyn std::fmt::Display) {
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": false, "error": error.to_string()})
        );
    } else {
        eprintln!("error: {error}");
    }
}

pub(super) fn block_on(
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgmesh: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(fut).unwrap_or_else(|e| {
        eprintln!("pgmesh: {e:#}");
        ExitCode::from(1)
    })
}

/// Logs go to stderr (stdout carries data, e.g. tail's JSON lines); `RUST_LOG` filters.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("pgmesh=info"));
    // Colour codes only for a person at a terminal, never into a log file or journal.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flags_parse_on_run_setup_and_teardown() {
        let flags = ["--batch-max-rows", "5", "--http-listen", "127.0.0.1:1"];
        for cmd in [
            &["run", "--node", "a"][..],
            &["setup"],
            &["teardown", "--yes"],
        ] {
            let argv = ["pgmesh"].iter().chain(cmd).chain(&flags);
            let cli = Cli::try_parse_from(argv).unwrap();
            let o = match cli.command {
                Command::Run(a) => a.overrides,
                Command::Setup(a) => a.overrides,
                Command::Teardown(a) => a.overrides,
                other => panic!("{other:?}"),
            };
            assert_eq!(o.batch_max_rows.as_deref(), Some("5"), "{cmd:?}");
            assert_eq!(o.http_listen.as_deref(), Some("127.0.0.1:1"), "{cmd:?}");
            assert_eq!(o.batch_max_bytes, None);
        }
    }
}
