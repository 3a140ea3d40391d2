//! `pgmesh ddl -c pgmesh.toml "ALTER TABLE …"` (or `--file F`): one schema change on
//! every node, each node in one transaction, committed only when it ran everywhere (see
//! [`crate::ddl`] for the order and why replication keeps running).
//!
//! Exit codes: 0 applied on every node (or `--dry-run` succeeded), 1 failed (every node
//! rolled back, or the message says which node still needs it) or the nodes' tables
//! differ afterwards, 2 usage or config errors (including statements pgmesh ddl refuses).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::ConfigFlags;
use crate::ddl::{self, DdlOptions};

#[derive(Debug, clap::Args)]
pub struct DdlArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// The statement(s), e.g. "ALTER TABLE public.items ADD COLUMN note text".
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub sql: Option<String>,
    /// Read the statements from a file (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How long a statement may wait for a lock before every node is rolled back and the
    /// run tried again (writers of the table queue behind a waiting ALTER).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// How many times to try when locks are not granted in time.
    #[arg(long, default_value_t = 10)]
    pub attempts: u32,
    /// Run everything on every node, then roll back.
    #[arg(long)]
    pub dry_run: bool,
    /// Change only this node (e.g. to give it a column the other node already has, after
    /// a direction stopped because the table differs); the nodes are compared afterwards.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub overrides: ConfigFlags,
}

/// `500ms`, `2s`, `1m` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 2s, 1m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration (e.g. 500ms, 2s, 1m)")),
    }
    .and_then(|d| {
        if d.is_zero() {
            Err("must be more than 0 (0 would wait forever)".to_string())
        } else {
            Ok(d)
        }
    })
}

pub async fn run(args: DdlArgs) -> anyhow::Result<ExitCode> {
    let cfg = match super::load_config(&args.config, &args.overrides, args.json) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(n) = &args.node {
        if let Err(e) = cfg.node(n) {
            eprintln!("error: --node: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let sql = match (&args.sql, &args.file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                eprintln!("error: reading standard input: {e}");
                return Ok(ExitCode::from(2));
            }
            s
        }
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: reading {}: {e}", f.display());
                return Ok(ExitCode::from(2));
            }
        },
        (None, None) => unreachable!("clap requires a statement or --file"),
    };
    let stmts = match ddl::prepare(&sql) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let opts = DdlOptions {
        lock_timeout: args.lock_timeout,
        attempts: args.attempts.max(1),
        dry_run: args.dry_run,
        only: args.node.clone(),
    };
    let json = args.json;
    let report = match ddl::run(&cfg, &stmts, &opts, |m| eprintln!("pgmesh ddl: {m}")).await {
        Ok(r) => r,
        Err(e) => {
            super::print_error(json, &e);
            return Ok(ExitCode::from(1));
        }
    };
    let ok = report.differences.is_empty();
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["ok"] = ok.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let nodes: Vec<&str> = cfg
            .nodes
            .keys()
            .map(String::as_str)
            .filter(|n| args.node.as_deref().is_none_or(|o| o == *n))
            .collect();
        println!(
            "ran on {} ({} statement(s), {} attempt(s)):",
            nodes.join(", "),
            report.statements.len(),
            report.attempts
        );
        for s in ddl::run::short_statements(&report.statements) {
            println!("  {s}");
        }
        for (node, note) in &report.notes {
            println!("{node}: {note}");
        }
        if report.dry_run {
            println!("dry run: rolled back on every node");
        } else {
            println!("committed on {}", report.committed.join(", "));
        }
        for d in &report.differences {
            eprintln!("warning: {d}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
