//! Judging sequences (pure): which would hand out values another node hands out too, and
//! what to change.
//!
//! The scheme: with N nodes in name order (the config's order, the same order that breaks
//! last-writer-wins ties), node i steps by N (or a multiple of N) and hands out values
//! ≡ i (mod N), so no two nodes ever hand out the same value. A sequence is judged
//! together with the same sequence (by name) and the sequences of the same columns on the
//! other nodes. When one of them is unsafe, all of them restart at the first value of
//! their class above everything used anywhere (every node's last value and the largest
//! value in the columns), so no value already used is handed out again.

use std::collections::BTreeMap;

use serde::Serialize;

use super::facts::{SequenceColumn, SequenceFacts};
use crate::config::ReplicationConfig;

/// The judgement of every sequence that fills a replicated column.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub node_count: usize,
    pub groups: Vec<Group>,
    /// Sequences that fill only columns of tables not replicated (`name on node`).
    pub skipped: Vec<String>,
}

/// Sequences that must hand out disjoint values: the same sequence, or sequences of the
/// same column, on every node.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// `schema.table.column` of every replicated column they fill.
    pub columns: Vec<String>,
    pub entries: Vec<Entry>,
    pub warnings: Vec<String>,
}

/// One sequence on one node.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub node: String,
    /// Position in name order: this node hands out values ≡ index (mod node count).
    pub node_index: usize,
    pub sequence: String,
    pub increment: i64,
    pub last_value: i64,
    pub is_called: bool,
    pub next_value: i64,
    pub status: Status,
    /// What `--apply` sets (present when the group is unsafe and can be fixed).
    pub change: Option<Change>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Status {
    Safe,
    Unsafe(String),
    /// pgmesh will not change it; the reason says what to do by hand.
    Refused(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub increment: i64,
    pub restart: i64,
    pub sql: String,
}

/// Whole-group verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Safe,
    /// Unsafe, with changes that fix it.
    Fixable,
    /// Unsafe or refused, and pgmesh will not change it.
    Refused,
}

impl Group {
    #[must_use]
    pub fn verdict(&self) -> Verdict {
        if self
            .entries
            .iter()
            .any(|e| matches!(e.status, Status::Refused(_)))
        {
            Verdict::Refused
        } else if self.entries.iter().all(|e| e.status == Status::Safe) {
            Verdict::Safe
        } else {
            Verdict::Fixable
        }
    }
}

impl Plan {
    /// Groups that are not safe (fixable or refused).
    pub fn unsafe_groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|g| g.verdict() != Verdict::Safe)
    }
}

/// Judges the sequences of every node. `nodes` is in name order (index = position) and
/// lists every node of the config.
#[must_use]
pub fn plan(repl: &ReplicationConfig, nodes: &[(String, Vec<SequenceFacts>)]) -> Plan {
    let n = nodes.len();
    let mut plan = Plan {
        node_count: n,
        ..Plan::default()
    };
    // Entries: (node index, sequence, its replicated columns).
    let mut entries: Vec<(usize, &SequenceFacts, Vec<&SequenceColumn>)> = Vec::new();
    for (ni, (node, seqs)) in nodes.iter().enumerate() {
        for s in seqs {
            let cols: Vec<&SequenceColumn> = s
                .columns
                .iter()
                .filter(|c| repl.selects(&c.schema, &c.table))
                .collect();
            if cols.is_empty() {
                plan.skipped.push(format!("{} on {node}", s.name));
            } else {
                entries.push((ni, s, cols));
            }
        }
    }
    // Group: same sequence name, or a shared column, on any node (union-find).
    let mut parent: Vec<usize> = (0..entries.len()).collect();
    fn root(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let mut first: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (_, s, cols)) in entries.iter().enumerate() {
        let keys = std::iter::once(format!("s {}", s.name))
            .chain(cols.iter().map(|c| format!("c {}", c.display())));
        for k in keys {
            let j = *first.entry(k).or_insert(i);
            let (ri, rj) = (root(&mut parent, i), root(&mut parent, j));
            parent[ri] = rj;
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..entries.len() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    for members in groups.values() {
        let members: Vec<&(usize, &SequenceFacts, Vec<&SequenceColumn>)> =
            members.iter().map(|&i| &entries[i]).collect();
        plan.groups.push(judge(nodes, n, &members));
    }
    plan.groups.sort_by(|a, b| a.columns.cmp(&b.columns));
    plan
}

fn judge(
    nodes: &[(String, Vec<SequenceFacts>)],
    n: usize,
    members: &[&(usize, &SequenceFacts, Vec<&SequenceColumn>)],
) -> Group {
    let n_i = i64::try_from(n.max(1)).unwrap_or(i64::MAX);
    let mut columns: Vec<String> = members
        .iter()
        .flat_map(|(_, _, cols)| cols.iter().map(|c| c.display()))
        .collect();
    columns.sort();
    columns.dedup();
    let mut warnings = Vec::new();
    // Everything used anywhere, and the largest existing value of each residue class
    // (with the column and node that hold it).
    let mut floor = i64::MIN;
    let mut class_max: Vec<Option<(i64, String, &str)>> = vec![None; n];
    for (ni, s, cols) in members {
        let node = nodes[*ni].0.as_str();
        if s.increment > 0 {
            floor = floor.max(s.highest_used());
        }
        for c in cols {
            let Some(m) = &c.max else {
                if c.type_max.is_none() {
                    warnings.push(format!(
                        "{} on {node} is {}, not an integer type: its values are not checked",
                        c.display(),
                        c.type_name
                    ));
                }
                continue;
            };
            floor = floor.max(m.all.unwrap_or(i64::MIN));
            for (r, v) in m.by_residue.iter().enumerate().take(n) {
                if let Some(v) = v {
                    if class_max[r].as_ref().is_none_or(|(best, _, _)| v > best) {
                        class_max[r] = Some((*v, c.display(), node));
                    }
                }
            }
        }
    }
    let mut entries: Vec<Entry> = members
        .iter()
        .map(|(ni, s, _)| {
            let node = nodes[*ni].0.clone();
            let i = i64::try_from(*ni).unwrap_or(0);
            let next = s.next_value();
            let status = if s.increment <= 0 {
                Status::Refused(format!(
                    "descending sequence (INCREMENT BY {}): pgmesh changes ascending ones only; give each node its own range by hand (ALTER SEQUENCE {} MINVALUE … MAXVALUE …), or make it ascending",
                    s.increment, s.name
                ))
            } else if s.increment % n_i != 0 {
                Status::Unsafe(format!(
                    "steps by {}; with {n} nodes every node must step by a multiple of {n}",
                    s.increment
                ))
            } else if next.rem_euclid(n_i) != i {
                Status::Unsafe(format!(
                    "hands out {next} next, which is ≡ {} (mod {n}); {node} is node {i} in name order (from 0) and must hand out values ≡ {i}",
                    next.rem_euclid(n_i)
                ))
            } else if let Some((v, col, holder)) = class_max[*ni].as_ref().filter(|(v, _, _)| *v >= next) {
                Status::Unsafe(format!(
                    "{v} is already in {col} on {holder}, and the sequence would hand it out again (next {next})"
                ))
            } else {
                Status::Safe
            };
            Entry {
                node,
                node_index: *ni,
                sequence: s.name.clone(),
                increment: s.increment,
                last_value: s.last_value,
                is_called: s.is_called,
                next_value: next,
                status,
                change: None,
            }
        })
        .collect();
    entries.sort_by(|a, b| (a.node_index, &a.sequence).cmp(&(b.node_index, &b.sequence)));
    for (ni, s, cols) in members {
        let node = nodes[*ni].0.as_str();
        if s.cycle {
            warnings.push(format!(
                "{} on {node} is CYCLE: past its maximum it starts again at {} and hands out values that exist (ALTER SEQUENCE {} NO CYCLE;)",
                s.name, s.min_value, s.name
            ));
        }
        let (max, limit) = effective_max(s, cols);
        let step = if s.increment > 0 && s.increment % n_i == 0 {
            s.increment
        } else {
            n_i
        };
        let next = s.next_value().max(floor.saturating_add(1));
        if s.increment > 0 && next > max / 2 {
            warnings.push(format!(
                "{} on {node}: {next} of at most {max} ({limit}) is used; about {} values are left per node at INCREMENT BY {step}: change the column and the sequence to bigint (pgmesh ddl \"ALTER TABLE … ALTER COLUMN … TYPE bigint\", then ALTER SEQUENCE {} AS bigint on every node)",
                s.name,
                max.saturating_sub(next) / step,
                s.name
            ));
        }
    }
    let mut group = Group {
        columns,
        entries,
        warnings,
    };
    if group.verdict() == Verdict::Fixable {
        plan_changes(&mut group, members, n_i, floor);
    }
    group
}

/// The largest value a sequence may hand out: its MAXVALUE or its narrowest column's type.
fn effective_max(s: &SequenceFacts, cols: &[&SequenceColumn]) -> (i64, String) {
    let mut max = s.max_value;
    let mut limit = format!("MAXVALUE of {}", s.name);
    for c in cols {
        if let Some(t) = c.type_max.filter(|t| *t <= max) {
            max = t;
            limit = format!("{} is {}", c.display(), c.type_name);
        }
    }
    (max, limit)
}

/// Every sequence of an unsafe group restarts above everything used anywhere, in its
/// node's class. If one cannot (no room left), none is changed.
fn plan_changes(
    group: &mut Group,
    members: &[&(usize, &SequenceFacts, Vec<&SequenceColumn>)],
    n: i64,
    floor: i64,
) {
    let mut changes = Vec::new();
    for e in &group.entries {
        let Some((_, s, cols)) = members
            .iter()
            .find(|(ni, s, _)| *ni == e.node_index && s.name == e.sequence)
        else {
            continue;
        };
        let i = i64::try_from(e.node_index).unwrap_or(0);
        let step = if s.increment % n == 0 { s.increment } else { n };
        let (max, limit) = effective_max(s, cols);
        let restart = floor
            .max(s.min_value.saturating_sub(1))
            .checked_add(1)
            .and_then(|from| from.checked_add((i - from).rem_euclid(n)));
        match restart.filter(|r| *r <= max) {
            Some(restart) => changes.push(Some(Change {
                increment: step,
                restart,
                sql: format!(
                    "ALTER SEQUENCE {} INCREMENT BY {step} RESTART WITH {restart};",
                    s.name
                ),
            })),
            None => {
                changes.push(None);
                group.warnings.push(format!(
                    "{} on {}: no value ≡ {i} (mod {n}) is left above {floor} ({limit}, maximum {max}): change the column and the sequence to bigint first",
                    s.name, e.node
                ));
            }
        }
    }
    if changes.iter().all(Option::is_some) {
        for (e, c) in group.entries.iter_mut().zip(changes) {
            e.change = c;
        }
    } else {
        for e in &mut group.entries {
            if let Status::Unsafe(reason) = &e.status {
                e.status = Status::Refused(format!("{reason}; and no room is left to fix it"));
            }
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
