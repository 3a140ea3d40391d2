//! `pgmesh setup` and `pgmesh teardown`: preflight checks, the `pgmesh` schema, the
//! publication, tombstone triggers, replication origins and slots on every node.
//!
//! Layout: [`facts`] gathers (I/O) → [`checks`] judges (pure) → [`install`] creates
//! (I/O, idempotent) ; [`teardown`] removes. [`migrate`] holds the schema migrations,
//! [`tombstone`] the generated trigger functions and [`fence_trigger`] the trigger that
//! enforces the control plane's fence.

pub mod catalog;
pub mod checks;
mod connect;
mod error;
pub mod facts;
pub mod fence_trigger;
pub mod finding;
pub mod grants;
pub mod migrate;
pub mod tombstone;

pub use catalog::NodeFacts;
pub use checks::{check_all, OutputPlugin};
pub use connect::connect;
pub use error::{pg_message, SetupError};
pub use finding::{error_count, Finding, Severity};
pub use install::Change;

mod install;
mod teardown;

use crate::config::Config;
use crate::sync::{CopyJob, ExistingData};
use tokio_postgres::Client;

/// What `setup` found and did.
#[derive(Debug, Default, serde::Serialize)]
pub struct SetupReport {
    pub findings: Vec<Finding>,
    /// Empty when preflight had errors (nothing was changed) or everything existed.
    pub changes: Vec<Change>,
    /// Tables copied into nodes that lacked their rows.
    pub copied: Vec<crate::sync::Copied>,
}

/// Connects to every node; a node that cannot be reached becomes an error finding (so
/// `--check` still reports on the others).
async fn connect_all(cfg: &Config) -> (Vec<(String, Client)>, Vec<Finding>) {
    let mut clients = Vec::new();
    let mut findings = Vec::new();
    for node in cfg.nodes.values() {
        match connect(node).await {
            Ok(c) => clients.push((node.name.clone(), c)),
            Err(e) => {
                let fix = match &e {
                    SetupError::Connect(c) if c.is_tls() => {
                        "fix the TLS settings as the message says (sslmode and sslrootcert in the dsn, or ssl on the server)"
                    }
                    _ => "check that the server runs and that the dsn (host, port, user, dbname, password) is right",
                };
                findings.push(Finding::error(&node.name, e.to_string(), fix));
            }
        }
    }
    (clients, findings)
}

/// Gathers facts from every reachable node, runs every check and plans the initial
/// copies (whose refusals are findings too).
async fn gather_and_check(
    cfg: &Config,
    plugin: &OutputPlugin,
    existing: &ExistingData,
) -> (Vec<(Client, NodeFacts)>, Vec<Finding>, Vec<CopyJob>) {
    let (clients, mut findings) = connect_all(cfg).await;
    let mut nodes = Vec::new();
    for (name, client) in clients {
        match facts::gather(&client, &name, &cfg.replication).await {
            Ok(f) => nodes.push((client, f)),
            Err(e) => findings.push(Finding::error(
                &name,
                e.to_string(),
                "see the message; re-run after fixing",
            )),
        }
    }
    // Cross-node checks are only meaningful when every node answered.
    let all_facts: Vec<NodeFacts> = nodes.iter().map(|(_, f)| f.clone()).collect();
    let mut jobs = Vec::new();
    if findings.is_empty() {
        findings.extend(check_all(cfg, &all_facts, plugin));
        let (planned, refused) = crate::sync::plan(cfg, &all_facts, existing);
        jobs = planned;
        findings.extend(refused);
    } else {
        for f in &all_facts {
            let peers: Vec<&str> = cfg.peers(&f.node).map(|p| p.name.as_str()).collect();
            checks::check_server(f, &peers, plugin, &mut findings);
        }
    }
    findings.sort_by(|a, b| (a.severity, &a.node).cmp(&(b.severity, &b.node)));
    (nodes, findings, jobs)
}

/// `pgmesh setup --check`: every finding on every node; changes nothing.
pub async fn preflight(
    cfg: &Config,
    plugin: &OutputPlugin,
    existing: &ExistingData,
) -> Vec<Finding> {
    gather_and_check(cfg, plugin, existing).await.1
}

/// `pgmesh setup`: preflight, then (only if it found no error) schema, node registry,
/// triggers, publication and origins on every node, then every node's slots, then the
/// initial copy of tables new to replication (see [`crate::sync`]). Idempotent; an
/// interrupted copy is resumed by the next run.
pub async fn setup(cfg: &Config, opts: &SetupOptions) -> Result<SetupReport, SetupError> {
    let (nodes, findings, jobs) =
        gather_and_check(cfg, &OutputPlugin::pgoutput(), &opts.existing).await;
    let mut report = SetupReport {
        findings,
        ..SetupReport::default()
    };
    if error_count(&report.findings) > 0 {
        return Ok(report);
    }
    let mut nodes = nodes;
    for (client, facts) in &mut nodes {
        let arriving: Vec<&CopyJob> = jobs
            .iter()
            .filter(|j| j.target == facts.node && !j.resume)
            .collect();
        install::install_node(client, cfg, facts, &arriving, &mut report.changes).await?;
    }
    // Slots a copy needs are created by the copy itself, with an exported snapshot.
    let by_copy = crate::sync::slots_made_by_copy(&jobs);
    for (client, facts) in &nodes {
        install::create_slots(client, cfg, &facts.node, &by_copy, &mut report.changes).await?;
    }
    if !jobs.is_empty() {
        let synced = crate::sync::run(cfg, &jobs, opts.quiet).await?;
        for (node, slot) in &synced.slots_created {
            if let Some((client, _)) = nodes.iter().find(|(_, f)| &f.node == node) {
                crate::guardrail::record::mark_recreated(client, slot)
                    .await
                    .map_err(error::query_err(
                        node,
                        "marking the guardrail's drop of the slot resolved",
                    ))?;
            }
        }
        report.changes.extend(synced.slots_created.into_iter().map(|(node, slot)| Change {
            node,
            what: format!(
                "created logical replication slot {slot} (pgoutput), exporting the snapshot of the initial copy"
            ),
        }));
        report.copied = synced.copied;
    }
    Ok(report)
}

/// How `setup` treats existing rows.
#[derive(Clone, Debug, Default)]
pub struct SetupOptions {
    /// Tables new to replication that hold rows on several nodes.
    pub existing: ExistingData,
    /// No progress lines on stderr.
    pub quiet: bool,
}

/// `pgmesh teardown`: removes pgmesh's objects from every node it can reach. Returns what
/// it removed and the error of each node it could not finish.
pub async fn teardown(cfg: &Config) -> (Vec<Change>, Vec<SetupError>) {
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    for node in cfg.nodes.values() {
        let result = match connect(node).await {
            Ok(client) => teardown::teardown_node(&client, &node.name, &mut changes).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    (changes, errors)
}
