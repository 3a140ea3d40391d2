//! `pgmesh sequences` output: a table for people, JSON for scripts.

use super::apply::Applied;
use super::plan::{Plan, Status, Verdict};

fn state(s: &Status) -> &'static str {
    match s {
        Status::Safe => "safe",
        Status::Unsafe(_) => "unsafe",
        Status::Refused(_) => "refused",
    }
}

/// `{"ok", "node_count", "safe", "unsafe", "refused", "groups", "skipped", "applied"}`.
#[must_use]
pub fn to_json(plan: &Plan, applied: &[Applied]) -> serde_json::Value {
    let count = |v: Verdict| plan.groups.iter().filter(|g| g.verdict() == v).count();
    serde_json::json!({
        "ok": plan.unsafe_groups().next().is_none(),
        "node_count": plan.node_count,
        "safe": count(Verdict::Safe),
        "unsafe": count(Verdict::Fixable),
        "refused": count(Verdict::Refused),
        "groups": plan.groups,
        "skipped": plan.skipped,
        "applied": applied,
    })
}

/// The report as aligned text; `applied` lists what `--apply` just ran.
#[must_use]
pub fn to_table(plan: &Plan, applied: &[Applied]) -> String {
    let mut rows = vec![[
        "COLUMN".to_string(),
        "NODE".into(),
        "SEQUENCE".into(),
        "INCREMENT".into(),
        "LAST_VALUE".into(),
        "NEXT".into(),
        "STATE".into(),
    ]];
    let mut why = Vec::new();
    let mut fixes = Vec::new();
    let mut warnings = Vec::new();
    for g in &plan.groups {
        let column = match g.columns.len() {
            1 => g.columns[0].clone(),
            n => format!("{} (+{})", g.columns[0], n - 1),
        };
        for e in &g.entries {
            rows.push([
                column.clone(),
                e.node.clone(),
                e.sequence.clone(),
                e.increment.to_string(),
                if e.is_called {
                    e.last_value.to_string()
                } else {
                    "-".into()
                },
                e.next_value.to_string(),
                state(&e.status).into(),
            ]);
            if let Status::Unsafe(r) | Status::Refused(r) = &e.status {
                why.push(format!("{} on {}: {r}", e.sequence, e.node));
            }
            if let Some(c) = &e.change {
                fixes.push(format!("{}: {}", e.node, c.sql));
            }
        }
        warnings.extend(g.warnings.iter().cloned());
    }
    let mut out = String::new();
    if plan.groups.is_empty() {
        out.push_str("no sequence fills a column of a replicated table\n");
    } else {
        let widths: Vec<usize> = (0..7)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if (3..6).contains(&i) {
                        format!("{c:>w$}")
                    } else {
                        format!("{c:w$}")
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
    }
    let section = |out: &mut String, title: &str, lines: &[String]| {
        if !lines.is_empty() {
            out.push_str(&format!("\n{title}\n"));
            for l in lines {
                out.push_str(&format!("  {l}\n"));
            }
        }
    };
    if !applied.is_empty() {
        let done: Vec<String> = applied
            .iter()
            .map(|a| format!("{}: {}", a.node, a.sql))
            .collect();
        section(&mut out, "changed:", &done);
    }
    section(&mut out, "why:", &why);
    section(
        &mut out,
        "to change (`pgmesh sequences --apply` runs these, each node in one transaction, under the sequences' locks):",
        &fixes,
    );
    section(&mut out, "warnings:", &warnings);
    if !plan.skipped.is_empty() {
        out.push_str(&format!(
            "\nskipped {} sequence(s) of tables that are not replicated\n",
            plan.skipped.len()
        ));
    }
    let count = |v: Verdict| plan.groups.iter().filter(|g| g.verdict() == v).count();
    out.push_str(&format!(
        "\nsequences: {} safe, {} unsafe, {} refused ({} nodes; node i in name order hands out values ≡ i mod {})\n",
        count(Verdict::Safe),
        count(Verdict::Fixable),
        count(Verdict::Refused),
        plan.node_count,
        plan.node_count
    ));
    out
}
