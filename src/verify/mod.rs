//! `pgmesh verify` and `pgmesh repair`: prove that both nodes hold the same rows, and fix
//! the keys where they do not.
//!
//! Layout, in the order a run goes:
//! - [`table`] lists the publication's tables on both nodes and checks that their
//!   definitions agree;
//! - [`scan`] compares a table with a key range by range (digests computed inside
//!   PostgreSQL, [`sql`]) and narrows differing ranges down to keys; [`keyless`] does the
//!   same for a table without a primary key (a multiset) with hash buckets;
//! - [`consistent`] re-reads every candidate key after both directions have applied
//!   everything the other node had committed (a barrier), so changes in flight are not
//!   reported as differences;
//! - [`report`] holds the result (JSON through serde; `render.rs` for people);
//! - [`repair`] plans a fix for each difference (pure, [`repair::plan`]) and writes it.

pub mod consistent;
pub mod keyless;
mod render;
pub mod repair;
pub mod report;
pub mod scan;
pub mod sql;
pub mod table;

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::{names, Config, ConfigError};
use crate::sqlconn::{pg_message, SqlConnectError};

pub use report::{Difference, TableReport, VerifyReport};

/// Rows per range compared at the top level, unless `--chunk-rows` says otherwise.
pub const DEFAULT_CHUNK_ROWS: u64 = 10_000;

/// How long verify waits for both directions to reach a consistent point.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Why verify or repair stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A node could not be reached (the message names the node and host, never the dsn).
    #[error(transparent)]
    Connect(#[from] SqlConnectError),
    /// A statement failed; `what` says which step.
    #[error("node {node}: {what}: {message}")]
    Query {
        node: String,
        what: String,
        message: String,
    },
    /// The command line asks for something that does not exist (a table, a node).
    #[error("{0}")]
    Usage(String),
}

impl VerifyError {
    /// Errors in what the operator asked for (exit 2), as opposed to a node that failed
    /// (exit 1).
    #[must_use]
    pub fn is_usage(&self) -> bool {
        matches!(self, VerifyError::Usage(_) | VerifyError::Config(_))
    }
}

/// Wraps a driver error of step `what` on `node`.
pub(crate) fn query_err(
    node: &str,
    what: &str,
) -> impl FnOnce(tokio_postgres::Error) -> VerifyError {
    let node = node.to_string();
    let what = what.to_string();
    move |e| VerifyError::Query {
        node,
        what,
        message: pg_message(&e),
    }
}

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// `--table` filters (`schema.table` or a table name); empty: every published table.
    pub tables: Vec<String>,
    /// Rows per top-level range.
    pub chunk_rows: u64,
    /// How long to wait for a consistent point (and for changing keys to settle).
    pub wait: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            tables: Vec::new(),
            chunk_rows: DEFAULT_CHUNK_ROWS,
            wait: DEFAULT_WAIT,
        }
    }
}

/// What verify is doing, for a progress line on stderr.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// Starting table `index` (1-based) of `total`.
    Table {
        table: &'a str,
        index: usize,
        total: usize,
    },
    /// Ranges compared so far in the current table, and rows seen on each node.
    Ranges {
        table: &'a str,
        ranges: u64,
        rows: [u64; 2],
    },
    /// The current table is done: `candidates` keys to re-check.
    TableDone {
        table: &'a str,
        ranges: u64,
        rows: [u64; 2],
        candidates: usize,
    },
    /// Round `round` of re-checking `keys` keys: waiting for both directions to pass the
    /// nodes' marks.
    Confirming {
        keys: usize,
        round: u32,
        marks: [crate::Lsn; 2],
    },
}

/// A session to one node with canonical text settings.
pub struct NodeSession {
    pub name: String,
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NodeSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sessions to both nodes, in node-name order (the order that breaks ties).
pub struct Pair {
    pub nodes: [NodeSession; 2],
}

impl Pair {
    #[must_use]
    pub fn names(&self) -> [&str; 2] {
        [&self.nodes[0].name, &self.nodes[1].name]
    }

    /// Index of node `name`.
    #[must_use]
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// `SET DateStyle = …; …`: the canonical text settings, plus an application name.
fn session_settings(application: &str) -> String {
    let mut sql: String = names::CANONICAL_TEXT_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = {};", crate::sqlquote::literal(v)))
        .collect();
    sql.push_str(&format!(
        "SET application_name = {};",
        crate::sqlquote::literal(application)
    ));
    sql
}

/// Opens one session to `node` with the canonical text settings.
pub async fn connect_node(
    node: &crate::config::NodeConfig,
    application: &str,
) -> Result<NodeSession, VerifyError> {
    let sql = node.sql_config()?;
    let (client, task) = crate::sqlconn::connect_sql(&sql).await?;
    client
        .batch_execute(&session_settings(application))
        .await
        .map_err(query_err(&node.name, "setting up the session"))?;
    Ok(NodeSession {
        name: node.name.clone(),
        client,
        task,
    })
}

/// Connects to both nodes of `cfg`.
pub async fn connect_pair(cfg: &Config, application: &str) -> Result<Pair, VerifyError> {
    let nodes: Vec<_> = cfg.nodes.values().collect();
    let [a, b] = nodes.as_slice() else {
        return Err(VerifyError::Usage(format!(
            "{}: verify compares exactly two nodes, the config has {}",
            cfg.source,
            nodes.len()
        )));
    };
    let (a, b) =
        futures_util::future::join(connect_node(a, application), connect_node(b, application))
            .await;
    Ok(Pair { nodes: [a?, b?] })
}

/// Compares every selected table of both nodes (see the module docs and README *pgmesh
/// verify* for the guarantee).
pub async fn verify(
    pair: &Pair,
    opts: &VerifyOptions,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<VerifyReport, VerifyError> {
    let tables = table::select(pair, &opts.tables).await?;
    let total = tables.len();
    let mut reports = Vec::with_capacity(total);
    let mut checks = Vec::new();
    for (i, entry) in tables.into_iter().enumerate() {
        progress(Progress::Table {
            table: &entry.name,
            index: i + 1,
            total,
        });
        let def = match entry.def {
            Ok(def) => def,
            Err(reason) => {
                reports.push(TableReport::skipped(&entry.name, pair.names(), reason));
                continue;
            }
        };
        let (found, rows, ranges) = if def.is_keyless() {
            let r = keyless::scan(pair, &def).await?;
            (
                consistent::Candidates::Rows(r.candidates),
                r.rows,
                r.buckets,
            )
        } else {
            let r = scan::scan(pair, &def, opts.chunk_rows, progress).await?;
            (consistent::Candidates::Keys(r.candidates), r.rows, r.ranges)
        };
        progress(Progress::TableDone {
            table: &entry.name,
            ranges,
            rows,
            candidates: found.len(),
        });
        let mut report = TableReport::compared(&entry.name, pair.names(), &def, rows, ranges);
        report.def = Some(std::sync::Arc::new(def));
        checks.push((reports.len(), found));
        reports.push(report);
    }
    let defs: Vec<Option<&crate::table::local::LocalTable>> =
        reports.iter().map(|r| r.def.as_deref()).collect();
    let outcome = consistent::confirm(pair, &defs, checks, opts.wait, progress).await?;
    Ok(VerifyReport::new(pair.names(), reports, outcome))
}
