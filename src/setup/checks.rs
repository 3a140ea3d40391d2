//! Preflight checks: pure functions from gathered [`NodeFacts`] to [`Finding`]s. Each
//! finding's fix is the command to run; nothing here touches a socket.

use super::catalog::{NodeFacts, SequenceFacts, TableFacts};
use super::finding::Finding;
use crate::config::{names, Config};
use crate::sequences::plan::Status;
use std::collections::{BTreeMap, BTreeSet};

/// Supported PostgreSQL majors.
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<i32> = 15..=18;

pub use crate::source::OutputPlugin;

const RESTART: &str = "then restart PostgreSQL (e.g. pg_ctl restart -D <data directory>)";

/// Every check over the facts of every reachable node.
#[must_use]
pub fn check_all(cfg: &Config, facts: &[NodeFacts], plugin: &OutputPlugin) -> Vec<Finding> {
    let mut out = Vec::new();
    for f in facts {
        let peers: Vec<&str> = cfg.peers(&f.node).map(|p| p.name.as_str()).collect();
        check_server(f, &peers, plugin, &mut out);
        check_tables_on_node(cfg, f, &mut out);
    }
    check_distinct_databases(facts, &mut out);
    check_tables_across_nodes(cfg, facts, &mut out);
    check_sequences(cfg, facts, &mut out);
    out
}

/// Version, settings, limits and privileges of one node.
pub fn check_server(f: &NodeFacts, peers: &[&str], plugin: &OutputPlugin, out: &mut Vec<Finding>) {
    let n = f.node.as_str();
    let major = f.server_version_num / 10000;
    let latest = i32::try_from(super::migrate::latest_version()).unwrap_or(i32::MAX);
    if !SUPPORTED_MAJORS.contains(&major) {
        out.push(Finding::error(
            n,
            format!(
                "PostgreSQL {major} is not supported (server_version_num {})",
                f.server_version_num
            ),
            "upgrade or use a PostgreSQL 15, 16, 17 or 18 server",
        ));
    }
    if let Some(v) = f.schema_version.filter(|v| *v > latest) {
        out.push(Finding::error(
            n,
            format!("schema pgmesh is at migration V{v}, newer than this pgmesh knows (V{latest})"),
            "run setup with the newer pgmesh release that created it",
        ));
    }
    if f.wal_level != "logical" {
        out.push(Finding::error(
            n,
            format!(
                "wal_level is '{}'; logical decoding needs 'logical'",
                f.wal_level
            ),
            format!("ALTER SYSTEM SET wal_level = logical;\n{RESTART}"),
        ));
    }
    if !f.track_commit_timestamp {
        out.push(Finding::error(
            n,
            "track_commit_timestamp is off; last-writer-wins needs each row's commit time",
            format!("ALTER SYSTEM SET track_commit_timestamp = on;\n{RESTART}"),
        ));
    }
    let ours: BTreeSet<String> = peers.iter().map(|p| names::slot_name(p)).collect();
    let other_slots = f
        .slots
        .iter()
        .filter(|s| !(ours.contains(&s.name) && s.database.as_deref() == Some(f.database.as_str())))
        .count() as i64;
    let need_slots = other_slots + peers.len() as i64 + 1;
    if f.max_replication_slots < need_slots {
        out.push(Finding::error(
            n,
            format!(
                "max_replication_slots is {}; {other_slots} slot(s) exist for others, pgmesh needs {} plus 1 spare",
                f.max_replication_slots,
                peers.len()
            ),
            format!("ALTER SYSTEM SET max_replication_slots = {need_slots};\n{RESTART}"),
        ));
    }
    let need_senders = f.other_walsenders + peers.len() as i64 + 1;
    if f.max_wal_senders < need_senders {
        out.push(Finding::error(
            n,
            format!(
                "max_wal_senders is {}; {} in use by others, pgmesh needs {} plus 1 spare",
                f.max_wal_senders,
                f.other_walsenders,
                peers.len()
            ),
            format!("ALTER SYSTEM SET max_wal_senders = {need_senders};\n{RESTART}"),
        ));
    }
    if f.max_worker_processes < 8 {
        out.push(Finding::warning(
            n,
            format!(
                "max_worker_processes is {}, below PostgreSQL's default of 8 (shared with parallel query and extensions)",
                f.max_worker_processes
            ),
            format!("ALTER SYSTEM SET max_worker_processes = 8;\n{RESTART}"),
        ));
    }
    // Only wal2json needs the allow-list GUC (pgoutput is always allowed).
    if let (true, Some(allowed)) = (plugin.name() == "wal2json", &f.output_plugin_libraries) {
        if !allowed.split(',').any(|p| p.trim() == "wal2json") {
            out.push(Finding::error(
                n,
                format!("output_plugin_libraries is '{allowed}'; wal2json may not be used as an output plugin"),
                format!("ALTER SYSTEM SET output_plugin_libraries = '{allowed}, wal2json';\n{RESTART}"),
            ));
        }
    }
    let role = crate::sqlquote::ident(&f.role.name);
    if !f.role.superuser && !f.role.replication {
        out.push(Finding::error(
            n,
            format!(
                "role {} has neither REPLICATION nor superuser; it cannot create slots",
                f.role.name
            ),
            format!("ALTER ROLE {role} REPLICATION;  -- as a superuser"),
        ));
    }
    if !f.role.superuser && !f.role.create_on_database {
        out.push(Finding::error(
            n,
            format!(
                "role {} may not create schema pgmesh in database {}",
                f.role.name, f.database
            ),
            format!(
                "GRANT CREATE ON DATABASE {} TO {role};",
                crate::sqlquote::ident(&f.database)
            ),
        ));
    }
    for s in f.slots.iter().filter(|s| ours.contains(&s.name)) {
        if s.database.as_deref() != Some(f.database.as_str()) {
            out.push(Finding::error(
                n,
                format!(
                    "slot {} already exists for database {} (slot names are per server)",
                    s.name,
                    s.database.as_deref().unwrap_or("(physical)")
                ),
                format!(
                    "SELECT pg_drop_replication_slot('{}');  -- if it is left over",
                    s.name
                ),
            ));
        } else if s.plugin.as_deref() != Some(names::OUTPUT_PLUGIN) {
            out.push(Finding::error(
                n,
                format!(
                    "slot {} uses plugin {}, not pgoutput",
                    s.name,
                    s.plugin.as_deref().unwrap_or("?")
                ),
                format!(
                    "SELECT pg_drop_replication_slot('{}');  -- setup then recreates it",
                    s.name
                ),
            ));
        }
    }
    check_lost_slots(f, peers, out);
}

/// A pgmesh slot PostgreSQL invalidated (`wal_status = lost`): the peer reading it stops,
/// and what was written here meanwhile never reaches the peer through it. A warning, not
/// an error: `pgmesh setup` itself is the fix (it drops the slot and creates it again).
fn check_lost_slots(f: &NodeFacts, peers: &[&str], out: &mut Vec<Finding>) {
    let n = f.node.as_str();
    for peer in peers {
        let name = names::slot_name(peer);
        let lost = f.slots.iter().find(|s| {
            s.name == name && s.database.as_deref() == Some(f.database.as_str()) && s.lost()
        });
        if let Some(s) = lost {
            out.push(Finding::warning(
                n,
                format!(
                    "slot {name} was invalidated by PostgreSQL (wal_status lost: {}): changes written on node {n} since then never reach node {peer} through it (node {peer}'s sidecar stops that direction)",
                    super::catalog::lost_cause(s.invalidation_reason.as_deref())
                ),
                format!(
                    "pgmesh setup  -- drops the slot and creates it again\nthen restart node {peer}'s sidecar and run `pgmesh verify` and `pgmesh repair`"
                ),
            ));
        }
    }
}

/// Two node entries pointing at the same database (a copy-pasted dsn) would replicate a
/// database into itself.
pub fn check_distinct_databases(facts: &[NodeFacts], out: &mut Vec<Finding>) {
    for (i, x) in facts.iter().enumerate() {
        for y in &facts[i + 1..] {
            if x.system_identifier.is_some()
                && x.system_identifier == y.system_identifier
                && x.database == y.database
            {
                out.push(Finding::error(
                    &y.node,
                    format!(
                        "nodes {} and {} are the same database ({} on server {})",
                        x.node,
                        y.node,
                        x.database,
                        x.system_identifier.unwrap_or_default()
                    ),
                    format!("point the dsn of node {} at its own server", y.node),
                ));
            }
        }
    }
}

/// Keys and replica identity of the selected tables on one node.
pub fn check_tables_on_node(cfg: &Config, f: &NodeFacts, out: &mut Vec<Finding>) {
    let n = f.node.as_str();
    let repl = &cfg.replication;
    for t in f.selected_tables(repl) {
        let q = t.qualified();
        let full_ok = repl.allows_full_identity(&t.schema, &t.name);
        if t.primary_key.is_empty() && !full_ok {
            out.push(Finding::error(
                n,
                format!("table {q} has no primary key"),
                format!(
                    "ALTER TABLE {q} ADD PRIMARY KEY (<key columns>);\nor: ALTER TABLE {q} REPLICA IDENTITY FULL; and list \"{}.{}\" in [replication].full_identity",
                    t.schema, t.name
                ),
            ));
        } else if t.primary_key.is_empty() && t.replica_identity != 'f' {
            out.push(Finding::error(
                n,
                format!(
                    "table {q} is listed in full_identity but its REPLICA IDENTITY is not FULL"
                ),
                format!("ALTER TABLE {q} REPLICA IDENTITY FULL;"),
            ));
        } else if t.replica_identity == 'n' {
            out.push(Finding::error(
                n,
                format!("table {q} has REPLICA IDENTITY NOTHING; updates and deletes could not be replicated"),
                format!("ALTER TABLE {q} REPLICA IDENTITY DEFAULT;"),
            ));
        }
    }
}

/// Every selected table exists on every node with the same columns and key.
pub fn check_tables_across_nodes(cfg: &Config, facts: &[NodeFacts], out: &mut Vec<Finding>) {
    let repl = &cfg.replication;
    let per_node: Vec<BTreeMap<String, &TableFacts>> = facts
        .iter()
        .map(|f| {
            f.selected_tables(repl)
                .into_iter()
                .map(|t| (t.qualified(), t))
                .collect()
        })
        .collect();
    let all: BTreeSet<&String> = per_node.iter().flat_map(|m| m.keys()).collect();
    if all.is_empty() && !facts.is_empty() {
        let list: Vec<String> = repl.tables.iter().map(ToString::to_string).collect();
        out.push(Finding::error(
            &facts[0].node,
            format!(
                "[replication].tables ({}) selects no table",
                list.join(", ")
            ),
            "create the tables, or change the patterns in [replication].tables",
        ));
    }
    for p in repl.tables.iter().filter(|p| p.is_exact()) {
        for f in facts {
            if !f.tables.iter().any(|t| p.matches(&t.schema, &t.name)) {
                out.push(Finding::error(
                    &f.node,
                    format!("table {p} is listed in [replication].tables but does not exist"),
                    format!(
                        "create {p} on node {}, or remove it from [replication].tables",
                        f.node
                    ),
                ));
            }
        }
    }
    for q in all {
        let Some((ref_idx, reference)) = per_node
            .iter()
            .enumerate()
            .find_map(|(i, m)| m.get(q).map(|t| (i, *t)))
        else {
            continue;
        };
        let ref_node = &facts[ref_idx].node;
        for (f, m) in facts.iter().zip(&per_node) {
            let Some(t) = m.get(q) else {
                if !repl
                    .tables
                    .iter()
                    .any(|p| p.is_exact() && p.matches(&reference.schema, &reference.name))
                {
                    out.push(Finding::error(
                        &f.node,
                        format!("table {q} exists on node {ref_node} but not on node {}", f.node),
                        format!(
                            "create it on {} with the same columns (pg_dump --schema-only --table='{q}' from {ref_node}, restore into {}), or add \"{}.{}\" to [replication].exclude",
                            f.node, f.node, reference.schema, reference.name
                        ),
                    ));
                }
                continue;
            };
            if std::ptr::eq(*t, reference) {
                continue;
            }
            compare_columns(q, ref_node, reference, &f.node, t, out);
        }
    }
}

fn compare_columns(
    q: &str,
    ref_node: &str,
    r: &TableFacts,
    node: &str,
    t: &TableFacts,
    out: &mut Vec<Finding>,
) {
    let theirs: BTreeMap<&str, &str> = t
        .columns
        .iter()
        .map(|(c, ty)| (c.as_str(), ty.as_str()))
        .collect();
    let ours: BTreeMap<&str, &str> = r
        .columns
        .iter()
        .map(|(c, ty)| (c.as_str(), ty.as_str()))
        .collect();
    for (c, ty) in &ours {
        let col = crate::sqlquote::ident(c);
        match theirs.get(c) {
            None => out.push(Finding::error(
                node,
                format!("table {q}: column {col} ({ty}) exists on node {ref_node} but not on node {node}"),
                format!("ALTER TABLE {q} ADD COLUMN {col} {ty};  -- on node {node}"),
            )),
            Some(their) if their != ty => out.push(Finding::error(
                node,
                format!("table {q}: column {col} is {ty} on node {ref_node} but {their} on node {node}"),
                format!("ALTER TABLE {q} ALTER COLUMN {col} TYPE {ty};  -- on node {node} (or the reverse on {ref_node})"),
            )),
            Some(_) => {}
        }
    }
    for (c, ty) in theirs.iter().filter(|(c, _)| !ours.contains_key(*c)) {
        let col = crate::sqlquote::ident(c);
        out.push(Finding::error(
            node,
            format!(
                "table {q}: column {col} ({ty}) exists on node {node} but not on node {ref_node}"
            ),
            format!("ALTER TABLE {q} ADD COLUMN {col} {ty};  -- on node {ref_node}"),
        ));
    }
    if r.primary_key != t.primary_key && ours == theirs {
        out.push(Finding::error(
            node,
            format!(
                "table {q}: primary key is ({}) on node {ref_node} but ({}) on node {node}",
                r.primary_key.join(", "),
                t.primary_key.join(", ")
            ),
            format!("make the primary key of {q} the same on every node"),
        ));
    }
}

/// Sequences and identity columns of replicated tables that would hand out the same
/// values on two nodes (judged by [`crate::sequences::plan`]); `pgmesh sequences --apply`
/// changes them. One warning per node and sequence of every unsafe group.
pub fn check_sequences(cfg: &Config, facts: &[NodeFacts], out: &mut Vec<Finding>) {
    if facts.len() < 2 {
        return;
    }
    let nodes: Vec<(String, Vec<SequenceFacts>)> = cfg
        .nodes
        .keys()
        .map(|n| {
            let seqs = facts
                .iter()
                .find(|f| f.node == *n)
                .map(|f| f.sequences.clone())
                .unwrap_or_default();
            (n.clone(), seqs)
        })
        .collect();
    let plan = crate::sequences::plan(&cfg.replication, &nodes);
    let apply = format!("pgmesh sequences -c {} --apply", cfg.source);
    for g in plan.unsafe_groups() {
        let columns = g.columns.join(", ");
        for e in &g.entries {
            let what = match &e.status {
                Status::Unsafe(r) | Status::Refused(r) => {
                    format!("sequence {} of {columns}: {r}", e.sequence)
                }
                Status::Safe => format!(
                    "sequence {} of {columns} must change with the other nodes' sequences of these columns",
                    e.sequence
                ),
            };
            let fix = match &e.change {
                Some(c) => format!(
                    "{apply}
(on {}: {})",
                    e.node, c.sql
                ),
                None => {
                    "see `pgmesh sequences`; pgmesh changes only ascending sequences with room left"
                        .into()
                }
            };
            out.push(Finding::warning(&e.node, what, fix));
        }
    }
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
