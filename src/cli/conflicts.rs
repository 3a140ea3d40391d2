//! `pgmesh conflicts -c pgmesh.toml [--node NAME] [filters] [--json|--jsonl] [--summary]`
//! reads the conflict ledger (`pgmesh.conflicts`) of one node or of every node;
//! `--prune` applies the `[ledger]` retention now, as the sidecar does periodically.
//!
//! Exit codes: 0 done (finding conflicts is not an error), 1 a node could not be read or
//! pruned, 2 usage or config errors (bad filter value, unknown node).

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_postgres::Client;

use crate::config::{format_duration, Config, ConfigFlags, NodeConfig};
use crate::ledger::{self, ConflictFilter, ConflictRow, PruneOutcome, SummaryRow};
use crate::sqlconn::{connect_sql, pg_message};

#[derive(Debug, clap::Args)]
pub struct ConflictsArgs {
    /// Config file.
    #[arg(short, long, env = "PGMESH_CONFIG", default_value = "pgmesh.toml")]
    pub config: PathBuf,
    /// Read this node's ledger (default: every node's, labelled by node).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Only these tables: schema.table, a table of schema public, or a pattern with *
    /// (repeat or separate with commas).
    #[arg(long = "table", value_name = "TABLE", value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Only these kinds, e.g. insert_exists,update_origin_differs.
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Detected at or after: a duration ago (30m, 1h, 7d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Detected before: a duration ago or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Show the newest N records (0: all).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u64,
    /// Counts by table and kind instead of records.
    #[arg(long)]
    pub summary: bool,
    /// Print a JSON array (records with their full local and remote rows).
    #[arg(long, conflicts_with = "jsonl")]
    pub json: bool,
    /// Print one JSON object per line.
    #[arg(long)]
    pub jsonl: bool,
    /// Delete records beyond the [ledger] retention and max_rows now, and report how many.
    #[arg(long, conflicts_with_all = ["tables", "kinds", "since", "until", "summary", "jsonl"])]
    pub prune: bool,
    #[command(flatten)]
    pub overrides: ConfigFlags,
}

pub async fn run(args: ConflictsArgs) -> anyhow::Result<ExitCode> {
    let json = args.json || args.jsonl;
    let usage = |m: String| {
        super::print_error(json, &m);
        Ok(ExitCode::from(2))
    };
    let filter = match ConflictFilter::parse(
        &args.tables,
        &args.kinds,
        args.since.as_deref(),
        args.until.as_deref(),
    ) {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let limit = match args.limit {
        0 => None,
        n => match i64::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => return usage("--limit: too large".into()),
        },
    };
    let cfg = match Config::load_with(&args.config, &args.overrides) {
        Ok(c) => c,
        Err(e) => return usage(e.to_string()),
    };
    let nodes: Vec<&NodeConfig> = match &args.node {
        Some(n) => match cfg.node(n) {
            Ok(node) => vec![node],
            Err(e) => return usage(format!("--node: {e}")),
        },
        None => cfg.nodes.values().collect(),
    };

    let mut failed = false;
    if args.prune {
        let mut done = Vec::new();
        for node in &nodes {
            match prune_node(node, &cfg).await {
                Ok(o) => done.push(serde_json::json!({
                    "node": node.name, "by_age": o.by_age, "by_count": o.by_count,
                    "skipped_busy": o.skipped_busy,
                })),
                Err(e) => {
                    eprintln!("error: {e}");
                    failed = true;
                    continue;
                }
            }
            if !args.json {
                let o = &done[done.len() - 1];
                if o["skipped_busy"] == true {
                    println!(
                        "node {}: another pruner is running; nothing done",
                        node.name
                    );
                } else {
                    println!(
                        "node {}: pruned {} record(s): {} older than {}, {} beyond max_rows {}",
                        node.name,
                        o["by_age"].as_u64().unwrap_or(0) + o["by_count"].as_u64().unwrap_or(0),
                        o["by_age"],
                        format_duration(cfg.ledger.retention),
                        o["by_count"],
                        cfg.ledger.max_rows
                    );
                }
            }
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&done)?);
        }
        return Ok(exit(failed));
    }

    if args.summary {
        let mut all: Vec<SummaryRow> = Vec::new();
        for node in &nodes {
            match summary_node(node, &filter).await {
                Ok(rows) => all.extend(rows),
                Err(e) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
            }
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else if args.jsonl {
            for r in &all {
                println!("{}", serde_json::to_string(r)?);
            }
        } else {
            print!("{}", ledger::render::summary_table(&all));
        }
        return Ok(exit(failed));
    }

    let mut rows: Vec<ConflictRow> = Vec::new();
    let mut matching: i64 = 0;
    for node in &nodes {
        let got = list_node(node, &filter, limit).await;
        match got {
            Ok((r, total)) => {
                rows.extend(r);
                matching += total;
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    // Several nodes: one timeline, then the newest `limit` of it.
    rows.sort_by(|x, y| (&x.detected_at, &x.node, x.id).cmp(&(&y.detected_at, &y.node, y.id)));
    if let Some(l) = limit.and_then(|l| usize::try_from(l).ok()) {
        if rows.len() > l {
            rows.drain(..rows.len() - l);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if args.jsonl {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        if !rows.is_empty() {
            print!("{}", ledger::render::rows_table(&rows, nodes.len() > 1));
        }
        let shown = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        if shown < matching {
            println!(
                "{shown} of {matching} matching conflict(s) (the newest; --limit 0 shows all)"
            );
        } else {
            println!("{shown} conflict(s)");
        }
    }
    Ok(exit(failed))
}

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// A session to one node; its connection task ends with it.
struct Session {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(node: &NodeConfig) -> anyhow::Result<Session> {
    let mut cfg = node.sql_config()?;
    cfg.pg.application_name("pgmesh conflicts");
    let (client, task) = connect_sql(&cfg).await?;
    Ok(Session { client, task })
}

async fn prune_node(node: &NodeConfig, cfg: &Config) -> anyhow::Result<PruneOutcome> {
    let s = connect(node).await?;
    s.client
        .batch_execute("SET lock_timeout = '5s'")
        .await
        .map_err(|e| anyhow::anyhow!("node {}: {}", node.name, pg_message(&e)))?;
    Ok(ledger::prune(&s.client, &node.name, &cfg.ledger, ledger::PRUNE_BATCH_ROWS).await?)
}

async fn summary_node(
    node: &NodeConfig,
    filter: &ConflictFilter,
) -> anyhow::Result<Vec<SummaryRow>> {
    let s = connect(node).await?;
    Ok(ledger::read::summary(&s.client, &node.name, filter).await?)
}

/// The newest `limit` records and how many match in all.
async fn list_node(
    node: &NodeConfig,
    filter: &ConflictFilter,
    limit: Option<i64>,
) -> anyhow::Result<(Vec<ConflictRow>, i64)> {
    let s = connect(node).await?;
    let rows = ledger::read::list(&s.client, &node.name, filter, limit).await?;
    let shown = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    // Only when the limit may have cut: count them all.
    let total = if limit.is_some_and(|l| shown >= l) {
        ledger::read::count(&s.client, &node.name, filter).await?
    } else {
        shown
    };
    Ok((rows, total))
}
